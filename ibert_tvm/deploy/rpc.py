"""Run a compiled ``out/`` on a remote board through TVM's own RPC (``tvm.rpc``).

A board runs TVM's stock server, registered with a tracker under a device key::

    python -m tvm.exec.rpc_tracker --host 127.0.0.1 --port 9190             # on the host
    python -m tvm.exec.rpc_server --tracker HOST:9190 --key rk3588          # on each board

TVM's tracker and server have **no authentication**: anyone who reaches the port can upload
and run code on the board. Keep them on loopback (with boards reached through SSH port
forwarding or a VPN), and bind them to a network address only on a network you control.

and the host runs the model there (:func:`run_remote`): it uploads ``model.so``, loads it on the
board, and drives ``tvm.runtime.vm.VirtualMachine(rlib, remote.cpu())`` with the integer
inputs; params and outputs cross the wire as integer tensors. ``server=HOST:PORT`` skips the
tracker and connects to one server directly.

Every network step has a deadline: an unreachable tracker, a key no server is registered
under, a server that does not answer, a session that stalls, all raise
:class:`~ibert_tvm.errors.IBertTVMError` with a clear message after ``timeout`` seconds instead of
hanging (TVM's client retries refused connections for 60 s and waits forever for a free
server). A stalled call is abandoned on a daemon thread.

Tuning on real boards (``ibert-tvm tune --rpc-tracker``, ``tuning.measure``):
:func:`rpc_runner` gives MetaSchedule an ``RPCRunner`` measuring on the tracker's boards, and
:func:`cross_builder` a ``LocalBuilder`` that links candidates with the target's cross compiler
(a board has no compiler to link TVM's default ``.tar`` artifacts).

For tests and demos, :func:`start_tracker` / :func:`start_board_server` start a loopback tracker
and an emulated-board server (``ibert_tvm.deploy.board``), bound to 127.0.0.1, each with a
bounded lifetime.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from ..errors import IBertTVMError

DEFAULT_TIMEOUT = 60.0
DEFAULT_TRACKER_PORT = 9190
_TRACKER_MAGIC = 0x2F271  # tvm.rpc.base.RPC_TRACKER_MAGIC
_TRACKER_HINT = ("start one with `python -m tvm.exec.rpc_tracker --host 127.0.0.1 --port 9190` (no authentication: "
                 "keep it on loopback or a network you control)")
T = TypeVar("T")


def parse_address(address: str, default_port: int | None = None) -> tuple[str, int]:
    """``"HOST:PORT"`` (or ``"HOST"`` with a default port) -> ``(host, port)``."""
    host, sep, port = str(address).rpartition(":")
    if not sep:
        host, port = str(address), None
    if port is None:
        if default_port is None:
            raise IBertTVMError(f"address {address!r} must be HOST:PORT")
        return host, default_port
    try:
        p = int(port)
    except ValueError:
        raise IBertTVMError(f"address {address!r}: port {port!r} is not a number") from None
    if not host or not 0 < p < 65536:
        raise IBertTVMError(f"address {address!r} must be HOST:PORT with a port in 1..65535")
    return host.strip("[]"), p


def with_deadline(fn: Callable[[], T], timeout: float, what: str) -> T:
    """``fn()`` on a daemon thread; ``IBertTVMError`` if it has not returned after ``timeout`` s.

    Exceptions from ``fn`` are re-raised (TVM errors wrapped into ``IBertTVMError``).
    """
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=target, name=f"ibert-rpc: {what}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise IBertTVMError(f"{what}: no answer after {timeout:g} s (timed out)")
    if "error" in box:
        e = box["error"]
        if isinstance(e, IBertTVMError):
            raise e
        raise IBertTVMError(f"{what} failed: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}") from e
    return box["value"]


def check_tracker(tracker: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[str, int]:
    """Open a socket to the tracker and check its handshake, within ``timeout`` seconds."""
    host, port = parse_address(tracker, DEFAULT_TRACKER_PORT)
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(struct.pack("<i", _TRACKER_MAGIC))
            reply = s.recv(4)
    except socket.timeout:
        raise IBertTVMError(f"RPC tracker {host}:{port} is unreachable: no answer after {timeout:g} s (timed out)") from None
    except OSError as e:
        raise IBertTVMError(f"RPC tracker {host}:{port} is unreachable ({e.strerror or e}); {_TRACKER_HINT}") from None
    if len(reply) != 4 or struct.unpack("<i", reply)[0] != _TRACKER_MAGIC:
        raise IBertTVMError(f"{host}:{port} answered, but it is not a TVM RPC tracker")
    return host, port


def tracker_summary(tracker: str, timeout: float = DEFAULT_TIMEOUT) -> dict:
    """The tracker's summary: ``{"queue_info": {key: {"free", "pending"}}, "server_info": [...]}``."""
    host, port = check_tracker(tracker, timeout)

    def fetch():
        from tvm import rpc

        sess = rpc.connect_tracker(host, port)
        try:
            return sess.summary()
        finally:
            sess.close()

    return with_deadline(fetch, timeout, f"RPC tracker {host}:{port} summary")


def server_keys(summary: dict) -> list[str]:
    """Device keys with at least one registered server (``"server:KEY"`` entries)."""
    keys = set()
    for item in summary.get("server_info", []):
        k = str(item.get("key", ""))
        keys.add(k.split(":", 1)[1] if k.startswith("server:") else k)
    return sorted(keys)


def wait_for_key(tracker: str, key: str, timeout: float = DEFAULT_TIMEOUT, poll: float = 0.5) -> None:
    """Block until a server with ``key`` is registered at ``tracker`` (``IBertTVMError`` after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        keys = server_keys(tracker_summary(tracker, max(left, 1.0)))
        if key in keys:
            return
        if time.monotonic() + poll > deadline:
            raise IBertTVMError(
                f"no RPC server registered with key {key!r} at tracker {tracker} after {timeout:g} s "
                f"(registered keys: {', '.join(keys) or 'none'})"
            )
        time.sleep(poll)


def request_session(tracker: str, key: str, *, timeout: float = DEFAULT_TIMEOUT, session_timeout: float = 0):
    """An ``RPCSession`` on a free board with ``key``, via the tracker; never waits past ``timeout``.

    ``session_timeout`` (seconds, 0 = none) lets the server end the session on its own.
    """
    if not key:
        raise IBertTVMError("an RPC device key is needed with a tracker (--rpc-key)")
    host, port = check_tracker(tracker, timeout)
    keys = server_keys(tracker_summary(tracker, timeout))
    if key not in keys:
        raise IBertTVMError(
            f"no RPC server is registered with key {key!r} at tracker {host}:{port} "
            f"(registered keys: {', '.join(keys) or 'none'}); on the board run "
            f"`python -m tvm.exec.rpc_server --tracker {host}:{port} --key {key}`"
        )

    def request():
        from tvm import rpc

        sess = rpc.connect_tracker(host, port)
        sess._sock.settimeout(timeout)  # a request waits for a free server: bound it
        return sess.request(key, priority=1, session_timeout=session_timeout, max_retry=1)

    return with_deadline(request, timeout, f"requesting a {key!r} board from tracker {host}:{port}")


def connect_server(server: str, *, key: str = "", timeout: float = DEFAULT_TIMEOUT, session_timeout: float = 0):
    """An ``RPCSession`` straight to one RPC server ``HOST:PORT`` (no tracker)."""
    host, port = parse_address(server)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise IBertTVMError(f"RPC server {host}:{port} is unreachable ({e.strerror or e})") from None

    def connect():
        from tvm import rpc

        return rpc.connect(host, port, key=key, session_timeout=session_timeout)

    return with_deadline(connect, timeout, f"connecting to RPC server {host}:{port}")


# -- running a compiled out/ remotely -----------------------------------------------------------
class RemoteModel:
    """A compiled ``out/`` loaded on a remote board: ``run_ids`` / ``run_text`` like
    :class:`~ibert_tvm.deploy.runtime.CompiledModel`, with every remote call under a deadline.
    A context manager: leaving it (or :meth:`close`) ends the session, which frees the board's
    server for the next request (a server serves one session at a time)."""

    def __init__(self, out_dir, session, *, timeout: float = DEFAULT_TIMEOUT):
        """``session``: an ``RPCSession``, or a function returning one (called once the artifact
        has been read and checked, so a broken ``out/`` never occupies a board)."""
        from .runtime import LIB, apply_serial_table, read_compiled

        self.timeout = timeout
        self.dir, self.manifest, self.params, self.tokenizer = read_compiled(out_dir)
        # the host's choice (its environment): set IBERT_TVM_SERIAL_THRESHOLDS for a board whose pool sleeps
        self.serial_thresholds = apply_serial_table(self.manifest, self.params)
        lib = self.dir / LIB
        self.session = session() if callable(session) and not hasattr(session, "upload") else session
        del session  # only self holds it: close() (or an error here) really ends the session
        try:
            self._load(lib)
        except BaseException:
            self.close()
            raise

    def _load(self, lib: Path) -> None:
        m, timeout = self.manifest, self.timeout
        remote_name = f"ibert-{m.get('lib_sha256', 'model')[:16]}.so"
        with_deadline(lambda: self.session.upload(str(lib), remote_name), timeout, f"uploading {lib.name}")
        try:
            self.rlib = with_deadline(lambda: self.session.load_module(remote_name), timeout,
                                      "loading the model on the board")
        except IBertTVMError as e:
            from .run import elf_machine

            raise IBertTVMError(
                f"the board cannot load {lib} (built for {elf_machine(lib) or 'an unknown architecture'}, "
                f"target {m['target']!r}): {e}"
            ) from None

        def make_vm():
            from tvm.runtime.vm import VirtualMachine

            self.dev = self.session.cpu()
            self.vm = VirtualMachine(self.rlib, self.dev)
            self._forward = self.vm["forward"]

        with_deadline(make_vm, timeout, "creating the VM on the board")
        self._tvm_params = with_deadline(lambda: [self._tensor(p) for p in self.params], timeout,
                                         "copying the parameters to the board")

    def close(self) -> None:
        """End the RPC session (the board's server is free again for the next request)."""
        import gc

        for name in ("_tvm_params", "_forward", "vm", "rlib", "dev", "session"):
            if hasattr(self, name):
                setattr(self, name, None)
        gc.collect()

    def __enter__(self) -> "RemoteModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _tensor(self, a: np.ndarray):
        import tvm

        return tvm.runtime.tensor(a, self.dev)

    @property
    def output_scale(self) -> float:
        return float(self.manifest["output"]["scale"])

    def run_ids(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        from .runtime import CompiledModel

        if self.session is None:
            raise IBertTVMError("the RPC session is closed")
        x = CompiledModel.check_inputs(self, inputs)  # the same validation as a local run

        def call():
            args = [self._tensor(x[n]) for n in self.manifest["inputs"]]
            return self._forward(*args, *self._tvm_params).numpy()

        return with_deadline(call, self.timeout, "running the model on the board")

    def run_text(self, texts, pairs=None, **batching) -> np.ndarray:
        """Like :meth:`CompiledModel.run_text <ibert_tvm.deploy.runtime.CompiledModel.run_text>`."""
        from .batching import run_batched

        return run_batched(self.run_ids, self.tokenizer, texts, pairs, **batching)


def open_remote(out_dir, *, tracker: str | None = None, key: str | None = None, server: str | None = None,
                timeout: float = DEFAULT_TIMEOUT, session_timeout: float = 0) -> RemoteModel:
    """Connect (``tracker`` + ``key``, or ``server``) and load ``out_dir`` on the board."""
    if (tracker is None) == (server is None):
        raise IBertTVMError("give either an RPC tracker (with a key) or one RPC server address")
    if tracker is not None:
        parse_address(tracker, DEFAULT_TRACKER_PORT)

        def connect():
            return request_session(tracker, key or "", timeout=timeout, session_timeout=session_timeout)
    else:
        parse_address(server)

        def connect():
            return connect_server(server, key=key or "", timeout=timeout, session_timeout=session_timeout)
    return RemoteModel(out_dir, connect, timeout=timeout)


def run_remote(out_dir, inputs: dict[str, np.ndarray] | None = None, *, texts=None, **kw) -> np.ndarray:
    """Run ``out_dir`` once on a remote board (integer ``inputs`` or ``texts``); returns int32."""
    if inputs is None and texts is None:
        raise IBertTVMError("give inputs or texts to run")
    with open_remote(out_dir, **kw) as model:
        return model.run_ids(inputs) if inputs is not None else model.run_text(texts)


# -- MetaSchedule on real boards ----------------------------------------------------------------
def rpc_runner(tracker: str, key: str, timeout: float = DEFAULT_TIMEOUT, *, number: int = 3, repeat: int = 1,
               min_repeat_ms: int = 0, check: bool = True):
    """A MetaSchedule ``RPCRunner`` measuring on the tracker's ``key`` boards.

    ``timeout`` bounds each measurement session (``session_timeout_sec``). With ``check`` the
    tracker must answer and have a ``key`` server now, so a tuning run fails fast and clearly
    instead of timing out candidate by candidate. Arguments are filled from the host
    (:func:`alloc_arguments_from_host`): a runtime-only board lacks TVM's
    ``tvm.contrib.random.random_fill_for_measure``.
    """
    from tvm.s_tir import meta_schedule as ms

    host, port = parse_address(tracker, DEFAULT_TRACKER_PORT)
    if check:
        found = server_keys(tracker_summary(tracker, min(timeout, 30)))
        if key not in found:
            raise IBertTVMError(f"no RPC server is registered with key {key!r} at tracker {host}:{port} "
                                f"(registered keys: {', '.join(found) or 'none'})")
    return ms.runner.RPCRunner(
        f_alloc_argument=alloc_arguments_from_host,
        rpc_config=ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                       session_priority=1, session_timeout_sec=int(max(timeout, 1))),
        evaluator_config=ms.runner.EvaluatorConfig(number=number, repeat=repeat, min_repeat_ms=min_repeat_ms,
                                                   enable_cpu_cache_flush=False),
        max_workers=1,
    )


def alloc_arguments_from_host(session, device, args_info, alloc_repeat):
    """MetaSchedule ``f_alloc_argument`` for runtime-only boards: tensors filled on the host.

    Integer tensors get values in [1, 3] (valid indices, non-zero divisors, small shifts: safe for
    every integer kernel of the model; timing does not depend on the values), floats uniform
    [0, 1). Runs in the runner's worker processes.
    """
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common

    del session  # nothing is called on the board: only copies
    rng = np.random.default_rng(0)

    def fill(t) -> None:
        dtype = np.dtype(str(t.dtype))
        if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
            a = rng.integers(1, 4, t.shape).astype(dtype)
        else:
            a = rng.random(t.shape).astype(dtype)
        t.copyfrom(a)

    return alloc_argument_common(fill, device, args_info, alloc_repeat)


def export_cross_aarch64(rt_mod) -> str:
    """MetaSchedule ``f_export``: link a candidate into an aarch64 ``.so`` (runs in builder workers)."""
    from tvm.support import cc

    from ..targets import get_target

    spec = get_target("aarch64")
    path = os.path.join(tempfile.mkdtemp(prefix="ibert-ms-"), "candidate.so")
    rt_mod.export_library(path, fcompile=cc.cross_compiler(spec.cross_compiler, options=list(spec.link_options)))
    return path


def cross_builder(target_name: str = "aarch64", *, max_workers: int | None = None, timeout_sec: float = 120,
                  f_build=None):
    """A MetaSchedule ``LocalBuilder`` producing ``.so`` files a board can load without a compiler
    (a plain one for a target built on this machine). ``f_build``: the builder's build function
    (default TVM's)."""
    import shutil

    from tvm.s_tir import meta_schedule as ms

    from ..targets import get_target

    spec = get_target(target_name)
    if spec.cross_compiler is None:
        return ms.builder.LocalBuilder(f_build=f_build, max_workers=max_workers, timeout_sec=timeout_sec)
    if target_name != "aarch64":
        raise IBertTVMError(f"no cross-linking MetaSchedule builder for target {target_name!r}")
    if shutil.which(spec.cross_compiler) is None:
        raise IBertTVMError(f"target {spec.name} needs the cross compiler {spec.cross_compiler}: "
                            f"apt-get install {spec.debian_package}")
    return ms.builder.LocalBuilder(f_build=f_build, f_export=export_cross_aarch64, max_workers=max_workers,
                                   timeout_sec=timeout_sec)


# -- a loopback tracker and an emulated-board server (tests, demos) -----------------------------
def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _tail(log, n: int = 800) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-n:].strip()


def start_tracker(port: int | None = None, *, lifetime: float = 300) -> tuple[subprocess.Popen, str]:
    """A TVM RPC tracker on 127.0.0.1 (host Python), killed after ``lifetime`` seconds at the
    latest. Returns ``(process, "127.0.0.1:PORT")`` once it answers."""
    port = port or free_port()
    cmd = ["timeout", "--kill-after=5", f"{lifetime:g}", sys.executable, "-m", "tvm.exec.rpc_tracker",
           "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 1), "--silent"]
    log = tempfile.TemporaryFile()  # not a pipe: a chatty process must never block on it
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=log)
    proc.log = log
    addr = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise IBertTVMError(f"the RPC tracker exited ({proc.returncode}): {_tail(log)}")
        try:
            check_tracker(addr, 2)
            return proc, addr
        except IBertTVMError:
            if time.monotonic() > deadline:
                from .board import stop

                stop(proc)
                raise IBertTVMError(f"the RPC tracker on {addr} did not start within 60 s") from None
            time.sleep(0.2)


def start_board_server(board, tracker: str, key: str, *, cpu: str = "max", port: int | None = None,
                       lifetime: float = 300, ready_timeout: float = 120) -> subprocess.Popen:
    """TVM's stock RPC server running *on the emulated board* (qemu), bound to 127.0.0.1 and
    registered at ``tracker`` under ``key``; stopped after ``lifetime`` seconds at the latest.
    Returns once the tracker lists it."""
    port = port or free_port()
    args = ["-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 1),
            "--tracker", tracker, "--key", key, "--silent"]
    log = tempfile.TemporaryFile()
    proc = board.popen(args, cpu=cpu, lifetime=lifetime, stdout=subprocess.DEVNULL, stderr=log)
    proc.log = log
    try:
        wait_for_key(tracker, key, ready_timeout)
    except IBertTVMError:
        from .board import stop

        stop(proc)
        raise IBertTVMError(
            f"the board's RPC server did not register with {tracker} within {ready_timeout:g} s: {_tail(log)}"
        ) from None
    return proc
