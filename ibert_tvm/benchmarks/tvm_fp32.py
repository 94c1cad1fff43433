"""The FP32 TVM baseline: the same Hugging Face model, float, compiled by the same TVM.

    torch.export (static [B, S])  ->  relax.frontend.torch.from_exported_program
        ->  LegalizeOps .. FuseTIR (``ibert_tvm.passes.pipeline.fuse``)
        ->  [MetaSchedule: tune_relax with ``trials`` trials, then MetaScheduleApplyDatabase]
        ->  TVM's default Relax pipeline  ->  relax.build  ->  one ``b{B}_s{S}.so`` per shape

One library per shape: MetaSchedule tunes static shapes only, and a static module is never
slower than a dynamic one, so the baseline gets every advantage. The float matmuls of the
PyTorch importer are exact enough here (float in, float out); it is the *integer* path that
must not go through it (see the field notes).

The graph is :func:`ibert_tvm.benchmarks.engines.pooled_module`: ids -> the pooled embedding
(or the classifier's logits), the same function every engine computes.

Directory (``build_fp32``), per shape: ``b{B}_s{S}.so``, ``b{B}_s{S}.npz`` (the float32 weights
as its ``main`` takes them, after ``main_transform_params``), ``tuning-b{B}_s{S}/`` (MetaSchedule
database when tuned); and ``meta.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from ..support.tokenize import INPUTS

INPUT_NAMES = INPUTS


def lib_name(batch: int, seq: int) -> str:
    return f"b{batch}_s{seq}.so"


def _export(module, batch: int, seq: int):
    import torch

    args = (
        torch.ones((batch, seq), dtype=torch.int64) * 1000,
        torch.ones((batch, seq), dtype=torch.int64),
        torch.zeros((batch, seq), dtype=torch.int64),
        torch.arange(seq, dtype=torch.int64).expand(batch, seq).contiguous(),
    )
    with torch.no_grad():
        return torch.export.export(module, args)


def to_relax(module, batch: int, seq: int):
    """(Relax IRModule with weights as trailing inputs, [numpy weights in call order])."""
    import warnings

    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = _export(module, batch, seq)
        mod = from_exported_program(ep, keep_params_as_input=True)
    mod, params = relax.frontend.detach_params(mod)
    return mod, [p.numpy() for p in params["main"]]


def allocate(weights: list[float], total: int) -> list[int]:
    """``total`` trials in proportion to ``weights`` (op count x occurrences); shares under 2 become 0.

    The integer tuner's rule (``ibert_tvm.tuning.allocate_trials``), so both models spend
    their budget the same way: on the workloads that do the work."""
    s = sum(weights) or 1.0
    raw = [total * w / s for w in weights]
    out = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - out[i], reverse=True)[: total - sum(out)]:
        out[i] += 1
    return [n if n >= 2 else 0 for n in out]


def _flops(task) -> float:
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(task.dispatched[0]))
    except Exception:  # noqa: BLE001 - no estimate for some expressions
        return 1.0


def tune(mod, target, work_dir: Path, trials: int, *, log=print) -> None:
    """MetaSchedule over the fused FP32 workloads of ``mod``: ``trials`` measured candidates in
    total, shared by op count, each workload searched on its own (evolutionary search, xgb cost
    model, 16 candidates per iteration: the integer tuner's settings)."""
    from tvm.s_tir import meta_schedule as ms

    from ..passes.pipeline import fuse

    with target:
        fused = fuse(mod)
    tasks = ms.relax_integration.extract_tasks(fused, target)
    budget = allocate([_flops(t) * max(1, int(t.weight)) for t in tasks], int(trials))
    chosen = [(t, n) for t, n in zip(tasks, budget) if n > 0]
    ctxs, _ = ms.relax_integration.extracted_tasks_to_tune_contexts(
        [t for t, _ in chosen], work_dir=str(work_dir), space="post-order-apply", strategy="evolutionary", seed=0)
    db = ms.database.JSONDatabase(work_dir=str(work_dir), allow_missing=True)
    builder, runner = _builder(target), _runner()
    t0 = time.time()
    for ctx, (task, n) in zip(ctxs, chosen):
        ms.tune.tune_tasks(tasks=[ctx], task_weights=[1.0], work_dir=str(work_dir), max_trials_global=n,
                           num_trials_per_iter=min(16, n), builder=builder, runner=runner, database=db,
                           cost_model="xgb", task_scheduler="round-robin")
    (work_dir / "allocation.json").write_text(json.dumps(
        {t.task_name: n for t, n in zip(tasks, budget)}, indent=1))
    log(f"  tuned {work_dir.name}: {trials} trials over {len(chosen)} of {len(tasks)} workloads "
        f"in {time.time() - t0:.0f} s")


def _builder(target):
    """MetaSchedule's local builder with the integer tuner's settings (same build function when
    ``ibert_tvm.tuning`` provides one: it skips a ~40 s import in every builder process)."""
    from tvm.s_tir import meta_schedule as ms

    kw = {}
    try:
        from ..tuning import build_without_intrin_import

        kw["f_build"] = build_without_intrin_import
    except ImportError:
        pass
    workers = max(1, int(target.attrs.get("num-cores", 1)))
    return ms.builder.LocalBuilder(max_workers=workers, timeout_sec=120, **kw)


def _runner():
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50, enable_cpu_cache_flush=False)
    return ms.runner.LocalRunner(timeout_sec=60, evaluator_config=evaluator)


def compile_module(mod, target, database_dir: Path | None):
    """fuse -> [database] -> default pipeline -> relax.build (the integer pipeline's phases, float)."""
    from tvm import relax

    from ..passes.pipeline import fuse

    with target:
        mod = fuse(mod)
        if database_dir is not None:
            from tvm.s_tir import meta_schedule as ms  # noqa: F401  (registers the pass)

            mod = relax.transform.MetaScheduleApplyDatabase(str(database_dir))(mod)
        mod = relax.get_pipeline("default")(mod)
    return relax.build(mod, target=target, relax_pipeline=None)


def transform_params(ex, raw: list[np.ndarray]) -> list[np.ndarray]:
    """Run the lifted ``main_transform_params`` (weight transposes...) once, at build time."""
    import tvm
    from tvm import relax

    dev = tvm.cpu()
    vm = relax.VirtualMachine(ex, dev)
    out = vm["main_transform_params"]([tvm.runtime.tensor(p, dev) for p in raw])
    return [t.numpy() for t in out]


def build_fp32(module, shapes, out_dir: Path, target, *, trials: int = 0, log=print) -> dict:
    """Compile ``module`` (a ``pooled_module``) for every ``(batch, seq)``; cached in ``out_dir``.

    The weights are model inputs; ``LiftTransformParams`` moves what depends on weights only (the
    importer's ``permute_dims`` of every linear weight, and for batch > 1 a ``broadcast_to`` of
    some weights over the batch) into ``main_transform_params``, which runs here once:
    ``b{B}_s{S}.npz`` holds the weights ``main`` takes, so no run transposes a weight (the integer
    model's packing is also done at compile time)."""
    from tvm import relax

    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path = out_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"shapes": {}}
    meta.update({"target": str(target), "trials": int(trials)})
    for batch, seq in shapes:
        lib = out_dir / lib_name(batch, seq)
        params_path = lib.with_suffix(".npz")
        if lib.is_file() and params_path.is_file():
            continue
        t0 = time.time()
        mod, raw = to_relax(module, batch, seq)
        mod = relax.transform.LiftTransformParams()(mod)
        db = None
        if trials > 0:
            db = out_dir / f"tuning-b{batch}_s{seq}"
            if not (db / "allocation.json").is_file():  # written when a tune completes
                tune(mod, target, db, trials, log=log)
        ex = compile_module(mod, target, db)
        params = transform_params(ex, raw)
        tmp = out_dir / f".{params_path.name}.tmp.npz"
        np.savez(tmp, **{f"p{i:04d}": p for i, p in enumerate(params)})
        tmp.rename(params_path)
        tmp = out_dir / f".{lib.name}.tmp.so"
        ex.export_library(str(tmp))
        tmp.rename(lib)
        meta["shapes"][f"{batch}x{seq}"] = {"lib": lib.name, "params": params_path.name,
                                            "seconds": round(time.time() - t0, 1), "database": db.name if db else None}
        log(f"  TVM FP32 {batch}x{seq}: {'tuned' if db else 'untuned'}, built in {time.time() - t0:.0f} s")
        meta_path.write_text(json.dumps(meta, indent=1))
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta
