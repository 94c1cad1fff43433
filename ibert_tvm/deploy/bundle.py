"""``ibert-tvm bundle out/ -o board.tar.gz``: one file with everything a board needs.

    board/
      model/            the compiled out/ (manifest.json and every file it records, hashes checked)
      ibert_tvm/        the runtime-only modules: deploy.run, .runtime, .api (ibert_tvm.load),
                        .server (the HTTP server), and what they import; no compiler package
      requirements.txt  exact pins of the runtime packages (TVM runtime, numpy, tokenizers, and
                        starlette + uvicorn for serving), the versions this host compiled with
      README.txt        copy -> install -> run / encode / serve
      bundle.json       format, model id, target, CPU architecture, sha256 of every file

On the board: ``pip install -r requirements.txt``, then from the bundle's directory
``python -m ibert_tvm.deploy.run model "text"``, ``ibert_tvm.load("model")`` or
``python -m ibert_tvm.deploy.server model``. ``tests/deploy/test_bundle.py`` runs all three on the
emulated aarch64 board from an unpacked bundle alone, with no access to the source tree.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .. import __version__
from ..errors import IBertTVMError
from ..support.elf import elf_machine
from ..support.hashing import sha256_file

FORMAT = "ibert-tvm-bundle/1"
SUFFIX = ".tar.gz"
# What a board imports; the bundle carries these modules and whatever ibert_tvm modules they import.
ENTRY_MODULES = ("ibert_tvm.deploy.run", "ibert_tvm.deploy.runtime", "ibert_tvm.deploy.api", "ibert_tvm.deploy.server")
# The packages a board installs (pip names), pinned to this host's versions.
RUNTIME_PACKAGES = ("apache-tvm", "apache-tvm-ffi", "numpy", "ml_dtypes", "typing_extensions", "tokenizers")
SERVE_PACKAGES = ("starlette", "uvicorn", "anyio", "h11", "click", "idna")
COMPILER_PACKAGES = ("model", "passes", "quantization", "schedules", "frontend", "benchmarks", "cli")


def bundle_modules() -> list[str]:
    """The ``ibert_tvm`` modules the board imports (found by importing them in a fresh host
    interpreter, not listed by hand). Refuses if any belongs to a compiler package."""
    code = ("import sys, importlib\n"
            f"for m in {list(ENTRY_MODULES)!r}: importlib.import_module(m)\n"
            "print('\\n'.join(m for m in sys.modules if m == 'ibert_tvm' or m.startswith('ibert_tvm.')))")
    root = str(Path(__file__).resolve().parents[2])  # this copy of ibert_tvm, not another install
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise IBertTVMError(f"listing the board's modules failed: {res.stderr.strip()[-800:]}")
    mods = sorted(res.stdout.split())
    heavy = [m for m in mods if m.split(".")[1:2] and m.split(".")[1] in COMPILER_PACKAGES]
    if heavy:
        raise IBertTVMError(f"the runtime modules import compiler packages: {', '.join(heavy)}")
    return mods


def requirements() -> str:
    """``requirements.txt``: every runtime package at this host's version."""
    from importlib.metadata import PackageNotFoundError, version

    lines = ["# The runtime of an ibert-tvm bundle: the versions the model was compiled with.",
             "# apache-tvm's wheel also holds the compiler library; ibert_tvm.load never loads it."]
    for group, names in (("run", RUNTIME_PACKAGES), ("serve (python -m ibert_tvm.deploy.server)", SERVE_PACKAGES)):
        lines.append(f"# {group}")
        for n in names:
            try:
                lines.append(f"{n}=={version(n)}")
            except PackageNotFoundError:
                raise IBertTVMError(f"{n} is not installed here, so its version cannot be pinned: "
                                    f"pip install 'ibert-tvm[serve]'") from None
    return "\n".join(lines) + "\n"


def _readme(top: str, info: dict) -> str:
    return f"""ibert-tvm bundle: {info['model_id']} ({info['head']}), compiled for {info['target']} ({info['arch']}).
Integer-only: the verifier found {info['float_ops']} float operations in it.

1. Copy it to the board and unpack it:
     scp {top}{SUFFIX} user@board: && ssh user@board tar xzf {top}{SUFFIX}
2. Install the runtime (Python >= 3.10) on the board:
     cd {top} && python3 -m venv venv && venv/bin/pip install -r requirements.txt
3. Use it, from this directory (or with it on PYTHONPATH):
     venv/bin/python -m ibert_tvm.deploy.run model "A plane is taking off." "An air plane is taking off."
     venv/bin/python -c 'import ibert_tvm; m = ibert_tvm.load("model"); print(m.encode(["A plane."]).shape)'
     venv/bin/python -m ibert_tvm.deploy.server model --port 8080
   The server listens on 127.0.0.1 only. To reach it from other machines, give --host with the
   board's address AND --api-key KEY: without a key there is no authentication at all.
   curl -s 127.0.0.1:8080/embed -H 'Content-Type: application/json' -d '{{"inputs": ["A plane."]}}'

Every file's sha256 is in bundle.json; model/manifest.json's hashes are checked on every load.
"""


def _check_dest(dest: Path) -> str:
    """The top folder's name; refuse an output that is not ``*.tar.gz`` or would replace a file
    that is not an ibert-tvm bundle."""
    if not dest.name.endswith(SUFFIX) or len(dest.name) == len(SUFFIX):
        raise IBertTVMError(f"-o {dest} must be a file name ending in {SUFFIX}")
    if dest.is_dir():
        raise IBertTVMError(f"-o {dest} is a directory")
    if not dest.parent.is_dir():
        raise IBertTVMError(f"-o {dest}: directory {dest.parent} does not exist")
    top = dest.name[: -len(SUFFIX)]
    if dest.exists():
        try:
            with tarfile.open(dest, "r:gz") as t:
                rec = json.load(t.extractfile(f"{top}/bundle.json"))
            ok = rec.get("format") == FORMAT
        except Exception:  # noqa: BLE001 - not a tarball, no bundle.json, bad JSON: all "not ours"
            ok = False
        if not ok:
            raise IBertTVMError(f"-o {dest} exists and is not an ibert-tvm bundle: not replacing it")
    return top


def make_bundle(out_dir, dest) -> dict:
    """Write the bundle of compiled ``out_dir`` to ``dest`` (``*.tar.gz``, written to a temporary
    sibling and renamed into place). Returns its ``bundle.json`` record."""
    from .runtime import LIB, MANIFEST, read_compiled

    d, m, _, _ = read_compiled(out_dir)  # every hash and field checked, as a load would
    dest = Path(dest)
    top = _check_dest(dest)
    root = Path(__file__).resolve().parents[2]
    files: dict[str, bytes | Path] = {f"model/{MANIFEST}": d / MANIFEST}
    files.update({f"model/{name}": d / name for name in sorted(m["files"])})
    for mod in bundle_modules():
        rel = Path(*mod.split("."))
        src = root / rel / "__init__.py" if (root / rel).is_dir() else root / rel.with_suffix(".py")
        files[str(src.relative_to(root))] = src
    files["requirements.txt"] = requirements().encode()
    verify = m.get("verify") or {}
    float_ops = sum(r.get("float_ops", 0) for r in verify.values() if isinstance(r, dict)) if verify else "?"
    model_info = m.get("model") if isinstance(m.get("model"), dict) else {}
    info = {"format": FORMAT, "ibert_tvm": __version__, "model_id": model_info.get("identity") or d.resolve().name,
            "head": m["head"], "target": m["target"], "arch": elf_machine(d / LIB) or "?",
            "float_ops": float_ops}
    files["README.txt"] = _readme(top, info).encode()
    info["files"] = {k: sha256_file(v) if isinstance(v, Path) else _sha(v) for k, v in sorted(files.items())}
    files["bundle.json"] = (json.dumps(info, indent=1) + "\n").encode()

    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.tmp-", dir=dest.parent)
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:gz") as t:
            for name, src in sorted(files.items()):
                data = src.read_bytes() if isinstance(src, Path) else src
                ti = tarfile.TarInfo(f"{top}/{name}")
                ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
                t.addfile(ti, io.BytesIO(data))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return info


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
