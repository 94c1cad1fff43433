"""Measuring candidates: the builder and runner a tune uses, and timing whole modules.

Local targets are built and run here (``LocalBuilder`` + ``LocalRunner``, each candidate in its
own process with a timeout). A target this machine cannot run (a cross target, a GPU) is
measured on devices registered with an RPC tracker, through :mod:`ibert_tvm.deploy.rpc`'s
``rpc_runner`` and ``cross_builder`` (the one RPC module, shared with ``deploy``).
"""

from __future__ import annotations

import os

from ..errors import IBertTVMError

SESSION_TIMEOUT = 120  # seconds an RPC measurement session may take
BUILD_TIMEOUT = 120  # seconds one candidate may take to build
NUMBER, REPEAT, MIN_REPEAT_MS = 3, 1, 50  # MetaSchedule evaluator: 3 runs per measurement, >= 50 ms


def build_without_intrin_import(mod, target, _params):
    """LocalBuilder's build minus its ``import tvm.s_tir.tensor_intrin`` (~40 s of CPU in every
    fresh builder process; the candidates are already tensorized, nothing needs it)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def builder_runner(spec, *, rpc_tracker, rpc_key, workers):
    """A ``LocalBuilder`` (cross-linking for cross targets) and a ``LocalRunner``, or an
    ``RPCRunner`` on a tracker's ``rpc_key`` devices (checked now: fails fast, not per trial)."""
    from tvm.s_tir import meta_schedule as ms

    from ..deploy import rpc

    if rpc_tracker:
        if not rpc_key:
            raise IBertTVMError("--rpc-tracker needs --rpc-key (the key the device's RPC server registered)")
        rpc.parse_address(rpc_tracker)  # HOST:PORT, no default port: a typo is named, not dialled
        runner = rpc.rpc_runner(rpc_tracker, rpc_key, SESSION_TIMEOUT, number=NUMBER, repeat=REPEAT,
                                min_repeat_ms=MIN_REPEAT_MS)
    elif spec.cross_compiler is not None or "gpu" in spec.tvm_target().keys:
        raise IBertTVMError(
            f"target {spec.name} cannot run on this machine: tune it on the device through an RPC "
            f"tracker (--rpc-tracker HOST:PORT --rpc-key KEY)"
        )
    else:
        evaluator = ms.runner.EvaluatorConfig(number=NUMBER, repeat=REPEAT, min_repeat_ms=MIN_REPEAT_MS,
                                              enable_cpu_cache_flush=False)
        runner = ms.runner.LocalRunner(timeout_sec=60, evaluator_config=evaluator)
    builder = rpc.cross_builder(spec.name, max_workers=workers, timeout_sec=BUILD_TIMEOUT,
                                f_build=build_without_intrin_import)
    return builder, runner


def measure(builder, runner, tgt, mods, infos) -> list[list[float | None]]:
    """Median seconds of each module at each argument shape (None: did not build or run),
    through the tuning builder and runner (own processes, timeouts; RPC when tuning remotely)."""
    import shutil

    from tvm.s_tir import meta_schedule as ms

    built = builder.build([ms.builder.BuilderInput(m, tgt) for m in mods])
    inputs, where = [], []
    for i, b in enumerate(built):
        if b.error_msg is None:
            for j, info in enumerate(infos):
                inputs.append(ms.runner.RunnerInput(b.artifact_path, "cuda" if tgt.kind.name == "cuda" else "cpu", info))
                where.append((i, j))
    times: list[list[float | None]] = [[None] * len(infos) for _ in mods]
    for (i, j), fut in zip(where, runner.run(inputs)):
        r = fut.result()
        if r.error_msg is None and r.run_secs:
            secs = sorted(float(x) for x in r.run_secs)
            times[i][j] = secs[len(secs) // 2]
    for b in built:
        if b.artifact_path:
            shutil.rmtree(os.path.dirname(b.artifact_path), ignore_errors=True)
    return times
