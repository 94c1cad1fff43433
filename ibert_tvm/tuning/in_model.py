"""The in-model check: the tuned records are kept only if the whole model is faster with them.

The per-group guard (:mod:`.guard`) times each kernel alone. That is not what the model sees:
kernels share caches and the thread pool, and a schedule that wins alone lost in the model
(MiniLM re-tuned against the epilogue-fused x86 rule: 5 groups kept by the guard, model
0.92-0.96x as fast as without them). So after the groups, ``tune`` builds the whole model twice
through compile's own path (``frontend.lower.integer_module`` + ``passes.pipeline.build``): with
the records it chose and with none (the default schedules), checks that both give the same
integers, and times both in this process, interleaved (A B, B A, ...), at ``GUARD_SHAPES``.
:func:`in_model_choice` decides on the medians; if the model is slower, up to
``MAX_DROPS`` greedy steps drop the kept group with the smallest per-kernel margin and measure
again. The verdict goes to the metadata (``in_model``); compile applies no record of a database
whose verdict is not "kept".
"""

from __future__ import annotations

import math
import time

from .guard import GUARD_SHAPES

MAX_SLOWER = 0.03  # no shape may be more than 3% slower with the records
ROUNDS, RUNS = 5, 2  # interleaved rounds, timed runs per model, shape and round
MAX_DROPS = 2  # greedy steps after a failed check (each costs a model build and a measurement)


def in_model_choice(default_ms: list, tuned_ms: list, max_slower: float = MAX_SLOWER) -> dict:
    """The verdict on one measurement: per shape the speedup ``default / tuned``; kept only if every
    shape was measured, the geometric mean of the speedups is > 1 and no shape is more than
    ``max_slower`` slower (speedup < 1 / (1 + max_slower))."""
    if not default_ms or len(default_ms) != len(tuned_ms) or any(
            t is None or d is None or t <= 0 or d <= 0 for d, t in zip(default_ms, tuned_ms)):
        return {"speedup": [], "geomean": None, "kept": False}
    speedup = [d / t for d, t in zip(default_ms, tuned_ms)]
    geomean = math.exp(sum(math.log(r) for r in speedup) / len(speedup))
    kept = geomean > 1.0 and all(r >= 1.0 / (1.0 + max_slower) for r in speedup)
    return {"speedup": [round(r, 4) for r in speedup], "geomean": round(geomean, 4), "kept": kept}


def drop_order(groups: dict) -> list[str]:
    """Keys of the groups with applied records, the smallest per-kernel margin first: the geometric
    mean of ``default / picked`` from the guard's numbers (no numbers: margin 1, dropped first)."""

    def margin(entry) -> float:
        g = entry.get("guard") or {}
        d, cands, pick = g.get("default_us"), g.get("candidates_us"), g.get("candidate")
        if not d or not cands:
            return 1.0
        if isinstance(pick, int) and 0 <= pick < len(cands):
            cands = [cands[pick]]
        gains = []
        for c in cands:  # without the index (older metadata): the best candidate, as the guard chose
            r = [a / b for a, b in zip(d, c) if a and b]
            gains.append(math.exp(sum(math.log(x) for x in r) / len(r)) if r else 1.0)
        return max(gains)

    kept = [k for k, e in groups.items() if isinstance(e, dict) and e.get("applied")]
    return sorted(kept, key=lambda k: (margin(groups[k]), k))


def _inputs(qm, shape, rng):
    import numpy as np

    from ..support.tokenize import position_ids

    d = qm.dims
    b, s = shape[0], min(shape[1], int(d["max_seq"]))
    ids = rng.integers(min(1000, int(d["vocab"]) - 1), int(d["vocab"]), (b, s)).astype(np.int32)
    mask = np.ones((b, s), np.int32)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros((b, s), np.int32),
            "position_ids": position_ids(ids, mask, d["family"], int(d["pad_id"])).astype(np.int32)}


class _Built:
    """A model built by compile's pipeline, runnable here (Relax VM on the CPU)."""

    def __init__(self, ex, inputs, params):
        import tvm
        from tvm import relax

        self.vm = relax.VirtualMachine(ex, tvm.cpu())
        self.inputs, self.params = inputs, params

    def __call__(self, enc):
        import tvm

        args = [tvm.runtime.tensor(enc[n]) for n in self.inputs]
        return self.vm["forward"](*args, *self.params).numpy()


def build_model(qm, spec, tgt, mod, names, arrays, database):
    """The model built as compile builds it (``database``: a MetaSchedule database or None)."""
    import numpy as np
    import tvm

    from ..frontend.lower import model_inputs
    from ..passes.pipeline import build

    from ..deploy.runtime import serial_table
    from ..schedules import serial_when_small as sws

    extra: dict = {}
    ex, _, _ = build(mod, tgt, target_name=spec.name, database_dir=database, extra_params=extra)
    if sws.TABLE_PARAM in extra:  # the serial/parallel thresholds: the table a load here would feed
        extra[sws.TABLE_PARAM] = np.asarray(sws.table(serial_table()[0]), np.int64)
    params = [tvm.runtime.tensor(np.asarray(a)) for a in [*(arrays[n] for n in names), *extra.values()]]
    return _Built(ex, model_inputs(mod["forward"]), params)


def time_interleaved(models: list, encs: list, rounds: int = ROUNDS, runs: int = RUNS) -> list[list[float]]:
    """Median milliseconds of each model at each input, the models alternated within each round."""
    import numpy as np

    out = [[0.0] * len(encs) for _ in models]
    for j, enc in enumerate(encs):
        for m in models:  # warm-up
            m(enc)
        times: list[list[float]] = [[] for _ in models]
        for r in range(rounds):
            for i in [(r + k) % len(models) for k in range(len(models))]:
                for _ in range(runs):
                    t = time.perf_counter()
                    models[i](enc)
                    times[i].append((time.perf_counter() - t) * 1e3)
        for i in range(len(models)):
            out[i][j] = round(float(np.median(times[i])), 4)
    return out


def check(qm, spec, tgt, make_db, groups: dict, *, shapes=GUARD_SHAPES, max_drops: int = MAX_DROPS,
          lowered=None, log=print) -> tuple[dict, set[str]]:
    """Time the model with and without the records; the verdict and the groups to drop.

    ``make_db(keys)``: a MetaSchedule database of the records of the groups ``keys``; ``groups``:
    the metadata's group entries (for :func:`drop_order`). Returns ``(in_model entry, dropped
    group keys)``: the keys are dropped only when the check passed without them. ``lowered``:
    ``workloads.lowered_model``'s result (else computed).
    """
    import numpy as np

    from ..errors import IBertTVMError
    from .workloads import lowered_model

    t0 = time.time()
    mod, names, arrays = lowered or lowered_model(qm, spec)
    rng = np.random.default_rng(0)
    encs = [_inputs(qm, s, rng) for s in shapes]
    default = build_model(qm, spec, tgt, mod, names, arrays, None)
    order = drop_order(groups)
    dropped: list[str] = []
    steps = []
    while True:
        keep = [k for k in order if k not in dropped]
        tuned = build_model(qm, spec, tgt, mod, names, arrays, make_db(set(keep)))
        for enc in encs:
            if not np.array_equal(default(enc), tuned(enc)):
                raise IBertTVMError("the tuned model's outputs differ from the default-scheduled model's: "
                                    "a tuned schedule is wrong; nothing is applied (please report it)")
        d_ms, t_ms = time_interleaved([default, tuned], encs)
        verdict = in_model_choice(d_ms, t_ms)
        steps.append({"groups": len(keep), "dropped": list(dropped), "default_ms": d_ms, "tuned_ms": t_ms,
                      **verdict})
        log("in-model check" + (f" without {len(dropped)} group(s)" if dropped else "") + ": " + ", ".join(
            f"{'x'.join(map(str, s))} default {d:.3f} ms, tuned {t:.3f} ms" for s, d, t in zip(shapes, d_ms, t_ms))
            + f" -> speedup geomean {verdict['geomean']}x: " + ("kept" if verdict["kept"] else "slower"))
        if verdict["kept"] or len(dropped) >= max_drops or len(keep) <= 1:
            break
        dropped.append(keep[0])
    last = steps[-1]
    entry = {"shapes": [list(s) for s in shapes], "default_ms": last["default_ms"], "tuned_ms": last["tuned_ms"],
             "speedup": last["speedup"], "geomean": last["geomean"], "kept": last["kept"],
             "max_slower": MAX_SLOWER, "rounds": ROUNDS, "runs": RUNS, "dropped": dropped if last["kept"] else [],
             "steps": steps, "seconds": round(time.time() - t0, 1)}
    return entry, set(dropped) if last["kept"] else set()
