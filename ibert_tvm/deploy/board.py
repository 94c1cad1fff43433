"""An emulated aarch64 "board" on an x86-64 host: an arm64 sysroot run under ``qemu-aarch64``.

The board is what a user's ARM device would hold: Debian's arm64 Python 3.11 plus the aarch64
wheels of the TVM *runtime* (``apache-tvm`` without its 240 MB ``libtvm_compiler.so``),
``apache-tvm-ffi``, ``numpy``, ``ml_dtypes``, ``typing_extensions``, ``tokenizers`` and, for TVM's
RPC server, ``cloudpickle`` and ``psutil``. No PyTorch, no Relax compiler: ``from tvm import
relax`` fails there, so whatever runs on it proves the deploy path needs neither.

Layout (``~/.cache/ibert-tvm/arm-board``, or ``$IBERT_TVM_ARM_BOARD``)::

    debs/      arm64 .debs from ``apt-get download`` (never installed: ``dpkg -x`` only)
    wheels/    aarch64 wheels from ``pip download --platform manylinux..aarch64``
    sysroot/   the unpacked root file system; wheels in ``usr/lib/python3/dist-packages``
    bin/       ``python-<cpu>``: x86 shell wrappers that exec qemu on the board's Python
    board.json what was installed (a board whose record differs from ours is rebuilt)

Host requirements (Debian): ``qemu-user`` (``qemu-aarch64``) to run, ``dpkg`` + ``apt-get``
with the arm64 architecture enabled (``dpkg --add-architecture arm64 && apt-get update``;
:func:`prepare_board` does this when run as root) and ``pip`` to build. About 130 MB is
downloaded once. The host's own Python environment is never touched: aarch64 packages live only
in the sysroot, and board commands run with a clean environment (no host ``PYTHONPATH``).

The wrappers matter for TVM's RPC server, which re-executes ``sys.executable`` for its workers:
qemu is started with ``-0 <wrapper>`` so the board's Python sees the wrapper (an x86 script that
starts qemu again) as its executable, with no binfmt registration needed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import IBertTVMError

BOARD_FORMAT = "ibert-tvm-arm-board/1"
QEMU = "qemu-aarch64"
QEMU_PACKAGE = "qemu-user"
DEFAULT_CPU = "max"  # has dotprod; "cortex-a76" / "neoverse-n1" too; "cortex-a53"/"a72" do not
PYTHON = "usr/bin/python3.11"
SITE = "usr/lib/python3/dist-packages"  # on Debian's sys.path

# Debian bookworm arm64: python3.11 and the shared libraries it and the wheels load (~11 MB).
DEBS = (
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libgcc-s1",
    "libstdc++6", "libbz2-1.0", "libcrypt1", "libffi8", "liblzma5", "libncursesw6", "libreadline8",
    "libsqlite3-0", "libtinfo6", "libuuid1", "libexpat1", "zlib1g", "libssl3",
)
# Board wheels, pinned to the host's versions (the runtime matches the compiler that built
# the .so); the fallback pins are used when a package is absent on the host.
WHEELS = {
    "apache-tvm": "0.27.0.post1", "apache-tvm-ffi": "0.1.14.post1", "numpy": "2.4.6",
    "ml_dtypes": "0.6.0", "typing_extensions": "4.16.0", "tokenizers": "0.23.3",
    "cloudpickle": "2.1.0", "psutil": "7.2.2",
}
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
# Left out of the sysroot: the compiler library and C++ headers (a board runs, never compiles).
_SKIP_PREFIXES = ("tvm/lib/libtvm_compiler", "tvm/3rdparty/", "tvm/include/", "tvm/src/", "tvm_ffi/include/")


def default_dir() -> Path:
    env = os.environ.get("IBERT_TVM_ARM_BOARD")
    return Path(env) if env else Path.home() / ".cache" / "ibert-tvm" / "arm-board"


def require_qemu() -> str:
    """Path of ``qemu-aarch64``, or an error naming the Debian package."""
    exe = shutil.which(QEMU)
    if exe is None:
        raise IBertTVMError(f"{QEMU} is needed to emulate the aarch64 board: apt-get install {QEMU_PACKAGE}")
    return exe


def _wheel_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name, pin in WHEELS.items():
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = pin
    return out


def _record() -> dict:
    return {"format": BOARD_FORMAT, "debs": list(DEBS), "wheels": _wheel_versions(), "skip": list(_SKIP_PREFIXES)}


@dataclass(frozen=True)
class Board:
    """A prepared board directory (see the module docstring)."""

    root: Path

    @property
    def sysroot(self) -> Path:
        return self.root / "sysroot"

    @property
    def python(self) -> Path:
        return self.sysroot / PYTHON

    def wrapper(self, cpu: str = DEFAULT_CPU) -> Path:
        """An x86 executable that runs the board's Python under ``qemu-aarch64 -cpu cpu``."""
        qemu = require_qemu()
        w = self.root / "bin" / f"python-{cpu}"
        text = (
            "#!/bin/sh\n# the emulated board's Python (ibert_tvm.deploy.board)\nulimit -c 0 2>/dev/null\n"
            f'exec "{qemu}" -cpu {cpu} -L "{self.sysroot}" -0 "$0" "{self.python}" "$@"\n'
        )
        if not w.is_file() or w.read_text() != text:
            w.parent.mkdir(parents=True, exist_ok=True)
            tmp = w.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.chmod(0o755)
            tmp.replace(w)
        return w

    def env(self, pythonpath: Sequence[os.PathLike | str] = (), extra: dict | None = None) -> dict[str, str]:
        """A clean environment for board commands: nothing of the host's Python leaks in."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "TVM_", "LD_", "QEMU_"))}
        env["PYTHONNOUSERSITE"] = "1"
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # pure-python sources may be shared with the host
        env["TOKENIZERS_PARALLELISM"] = "false"
        if pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
        env.update(extra or {})
        return env

    def command(self, args: Sequence[str], cpu: str = DEFAULT_CPU) -> list[str]:
        """``python ARGS`` on the board (through the wrapper for ``cpu``)."""
        return [str(self.wrapper(cpu)), *map(str, args)]

    def run(
        self,
        args: Sequence[str],
        *,
        cpu: str = DEFAULT_CPU,
        pythonpath: Sequence[os.PathLike | str] = (),
        timeout: float = 600,
        cwd=None,
    ) -> subprocess.CompletedProcess:
        """Run ``python ARGS`` on the board; stdout/stderr captured as text.

        A guest killed by a signal (e.g. SIGILL) shows as ``returncode == -signal`` (qemu
        re-raises the guest's fatal signal on itself). Times out with an ``IBertTVMError``.
        """
        cmd = self.command(args, cpu)
        try:
            return subprocess.run(
                cmd, env=self.env(pythonpath), capture_output=True, text=True, timeout=timeout, cwd=cwd,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired as e:
            raise IBertTVMError(f"board command timed out after {timeout:g} s: {' '.join(cmd)}") from e

    def popen(self, args: Sequence[str], *, cpu: str = DEFAULT_CPU, pythonpath=(), lifetime: float | None = None,
              **kw) -> subprocess.Popen:
        """Start ``python ARGS`` on the board in its own process group.

        ``lifetime`` bounds it: coreutils ``timeout`` sends SIGTERM after that many seconds and
        SIGKILL 5 s later. Stop it early with :func:`stop`.
        """
        cmd = self.command(args, cpu)
        if lifetime is not None:
            cmd = ["timeout", "--kill-after=5", f"{lifetime:g}", *cmd]
        return subprocess.Popen(cmd, env=self.env(pythonpath), start_new_session=True, **kw)

    def check(self, timeout: float = 180) -> str:
        """Import TVM's runtime on the board; return its version (or raise)."""
        res = self.run(["-c", "import tvm, numpy, tokenizers; print(tvm.__version__)"], timeout=timeout)
        if res.returncode != 0:
            raise IBertTVMError(f"the board at {self.root} is broken ({res.returncode}): {res.stderr.strip()[-500:]}")
        return res.stdout.strip()


def stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Terminate a process started with ``start_new_session`` (its whole group), then kill it."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(grace)
    except ProcessLookupError:
        pass


def board_ready(root: os.PathLike | str | None = None) -> Board | None:
    """The board at ``root`` if it is fully prepared for this host's package versions."""
    board = Board(Path(root) if root else default_dir())
    try:
        rec = json.loads((board.root / "board.json").read_text())
    except (OSError, ValueError):
        return None
    return board if rec == _record() and board.python.is_file() else None


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise IBertTVMError(f"{what} failed ({' '.join(cmd[:4])} ...): {(res.stderr or res.stdout).strip()[-800:]}")
    return res


def _ensure_arm64_apt(log) -> None:
    foreign = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True).stdout.split()
    if "arm64" in foreign:
        return
    if os.geteuid() != 0:
        raise IBertTVMError(
            "the board's arm64 .debs need the arm64 apt architecture: run as root "
            "`dpkg --add-architecture arm64 && apt-get update`"
        )
    log("enabling the arm64 apt architecture (dpkg --add-architecture arm64; apt-get update)")
    _run(["dpkg", "--add-architecture", "arm64"], "dpkg --add-architecture arm64")
    _run(["apt-get", "update", "-q"], "apt-get update")


def _download_debs(dest: Path, log) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    have = {p.name.split("_")[0]: p for p in dest.glob("*_arm64.deb")}
    missing = [d for d in DEBS if d not in have]
    if missing:
        _ensure_arm64_apt(log)
        log(f"apt-get download {len(missing)} arm64 .debs")
        res = subprocess.run(["apt-get", "download", *(f"{d}:arm64" for d in missing)], cwd=dest,
                             capture_output=True, text=True)
        if res.returncode != 0 and "arm64" in res.stderr and os.geteuid() == 0:  # stale lists: update once
            _run(["apt-get", "update", "-q"], "apt-get update")
            res = subprocess.run(["apt-get", "download", *(f"{d}:arm64" for d in missing)], cwd=dest,
                                 capture_output=True, text=True)
        if res.returncode != 0:
            raise IBertTVMError(f"apt-get download of the board's arm64 packages failed: {res.stderr.strip()[-800:]}")
        have = {p.name.split("_")[0]: p for p in dest.glob("*_arm64.deb")}
    return [have[d] for d in DEBS]


def _download_wheels(dest: Path, versions: dict[str, str], log) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)

    def find(name: str, ver: str) -> Path | None:
        stem = name.replace("-", "_").lower()
        for p in dest.glob("*.whl"):
            dist, wver, *_, plat = p.name[: -len(".whl")].split("-")
            if dist.lower() == stem and wver == ver and (plat.endswith("aarch64") or plat == "any"):
                return p
        return None

    missing = [f"{n}=={v}" for n, v in versions.items() if find(n, v) is None]
    if missing:
        log(f"pip download {len(missing)} aarch64 wheels (~120 MB for apache-tvm)")
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(dest),
               "--python-version", "3.11", "--implementation", "cp"]
        for plat in PLATFORMS:
            cmd += ["--platform", plat]
        _run(cmd + missing, "pip download of the board's aarch64 wheels")
    out = []
    for n, v in versions.items():
        p = find(n, v)
        if p is None:
            raise IBertTVMError(f"no aarch64 wheel of {n}=={v} was downloaded into {dest}")
        out.append(p)
    return out


def _unpack_wheel(whl: Path, site: Path) -> None:
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            if info.is_dir() or info.filename.startswith(_SKIP_PREFIXES):
                continue
            target = site / info.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                target.chmod(mode)


def prepare_board(root: os.PathLike | str | None = None, *, log=print) -> Board:
    """Build (or reuse) the emulated board; idempotent. Returns the :class:`Board`.

    Raises ``IBertTVMError`` naming the Debian package when a host tool is missing.
    """
    board = board_ready(root)
    if board is not None:
        return board
    require_qemu()
    for tool, pkg in (("dpkg", "dpkg"), ("apt-get", "apt")):
        if shutil.which(tool) is None:
            raise IBertTVMError(f"building the aarch64 board needs {tool} (Debian package {pkg})")
    board = Board(Path(root) if root else default_dir())
    board.root.mkdir(parents=True, exist_ok=True)
    debs = _download_debs(board.root / "debs", log)
    versions = _wheel_versions()
    wheels = _download_wheels(board.root / "wheels", versions, log)
    # Unpack into a fresh sysroot beside the old one, then swap: never a half-built board.
    tmp = board.root / "sysroot.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    log(f"unpacking {len(debs)} .debs and {len(wheels)} wheels into {board.sysroot}")
    for deb in debs:
        _run(["dpkg", "-x", str(deb), str(tmp)], f"dpkg -x {deb.name}")
    site = tmp / SITE
    site.mkdir(parents=True, exist_ok=True)
    for whl in wheels:
        _unpack_wheel(whl, site)
    (board.root / "board.json").unlink(missing_ok=True)
    shutil.rmtree(board.sysroot, ignore_errors=True)
    tmp.rename(board.sysroot)
    log(f"checking the board: import tvm under {QEMU}")
    version = board.check()
    (board.root / "board.json").write_text(json.dumps(_record(), indent=1))
    log(f"aarch64 board ready at {board.root} (TVM runtime {version})")
    return board


# -- the ibert_tvm sources a board needs --------------------------------------------------------
def runner_modules() -> list[str]:
    """The ``ibert_tvm`` modules ``python -m ibert_tvm.deploy.run`` imports (found, not listed:
    a fresh host interpreter imports the runner and reports them; ``deploy.api``, for
    ``ibert_tvm.load`` on the board, named)."""
    code = (
        "import sys; import ibert_tvm.deploy.run, ibert_tvm.deploy.runtime, ibert_tvm.deploy.api, "
        "ibert_tvm.deploy.export; "
        "print('\\n'.join(m for m in sys.modules if m == 'ibert_tvm' or m.startswith('ibert_tvm.')))"
    )
    root = str(Path(__file__).resolve().parents[2])  # this copy of ibert_tvm, not another install
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    res = _run([sys.executable, "-c", code], "listing the runner's modules", env=env)
    return sorted(res.stdout.split())


def stage_package(dest: os.PathLike | str) -> Path:
    """Copy the pure-python ``ibert_tvm`` files the board runner needs into ``dest``; returns
    the directory to put on the board's ``PYTHONPATH``."""
    src_root = Path(__file__).resolve().parents[2]
    dest = Path(dest)
    for mod in runner_modules():
        rel = Path(*mod.split("."))
        src = src_root / rel / "__init__.py" if (src_root / rel).is_dir() else src_root / rel.with_suffix(".py")
        out = dest / src.relative_to(src_root)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out)
    return dest


def main(argv=None) -> int:
    """``python -m ibert_tvm.deploy.board [DIR]``: prepare the board (CI's board-prep step)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m ibert_tvm.deploy.board", description=main.__doc__)
    ap.add_argument("dir", nargs="?", help=f"board directory (default {default_dir()})")
    a = ap.parse_args(argv)
    try:
        board = prepare_board(a.dir)
        print(f"board: {board.root}; python: {board.wrapper()}")
    except IBertTVMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
