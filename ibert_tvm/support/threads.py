"""How many threads TVM's pool starts with when the user has not said: the physical cores.

TVM sizes its thread pool when it first runs a parallel kernel: ``$TVM_NUM_THREADS``, else
``$OMP_NUM_THREADS``, else ``std::thread::hardware_concurrency()``, *halved on x86-64* on the
assumption that every core runs two hardware threads (``threading_backend.cc``,
``MaxConcurrency``). On an x86-64 machine without SMT, such as the 2-vCPU VM this project is
measured on (one thread per core), that is half the cores: BERT-Base at 1 x 128 took 31.0 ms a
call loaded with the defaults, against 15.6 ms with ``TVM_NUM_THREADS=2`` (x86-amx build,
2026-12-04). ONNX Runtime's default, the peer the bench compares with, is the physical cores.

So the loader (``deploy.runtime.CompiledModel``: ``ibert_tvm.load``, ``ibert-tvm run`` /
``serve`` / ``eval``) sets ``TVM_NUM_THREADS`` to the number of physical cores this process may
run on (its CPU affinity, each CPU's ``core_id`` and ``physical_package_id`` from Linux sysfs)
before TVM starts its pool, when all of these hold:

* neither ``$TVM_NUM_THREADS`` nor ``$OMP_NUM_THREADS`` is set (a user's choice is kept as is);
* the machine is x86-64 (elsewhere TVM does not halve; on big.LITTLE boards it picks the big
  cores, which the physical count would not);
* the topology can be read (else TVM's own choice stands).

It returns a note for ``run --print-ints`` and ``serve``'s ``/info``. When TVM's pool is
already running in the process (the caller ran a parallel kernel before loading), the variable
is set but has no effect: TVM reads it once.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

THREADS_ENV = ("TVM_NUM_THREADS", "OMP_NUM_THREADS")
SYSFS_CPU = Path("/sys/devices/system/cpu")


def physical_cores(cpus=None, sysfs: Path = SYSFS_CPU) -> int | None:
    """The number of distinct (package, core) pairs among ``cpus`` (default: this process's CPU
    affinity), or None when the affinity or a CPU's topology cannot be read."""
    try:
        cpus = os.sched_getaffinity(0) if cpus is None else cpus
    except (AttributeError, OSError):
        return None
    cores = set()
    for c in cpus:
        topo = Path(sysfs) / f"cpu{c}" / "topology"
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            return None
    return len(cores) or None


def default_pool_threads(environ=None, machine: str | None = None, cores=physical_cores) -> tuple[int | None, str]:
    """``(threads, why)``: the ``TVM_NUM_THREADS`` to set (None: leave it) and why, by the rules of
    the module docstring."""
    env = os.environ if environ is None else environ
    for name in THREADS_ENV:
        if env.get(name, "").strip():
            return None, f"{name}={env[name]}"
    machine = platform.machine() if machine is None else machine
    if machine not in ("x86_64", "AMD64"):
        return None, f"TVM's default ({machine})"
    n = cores()
    if n is None:
        return None, "TVM's default (no CPU topology)"
    return n, f"{n} physical cores"


def apply_default_pool_threads(environ=None) -> str:
    """Set ``TVM_NUM_THREADS`` in ``environ`` (default: this process's) when
    :func:`default_pool_threads` says so; return the note."""
    env = os.environ if environ is None else environ
    n, why = default_pool_threads(env)
    if n is not None:
        env["TVM_NUM_THREADS"] = str(n)
    return f"TVM threads: {why}"
