"""The guard: a tuned schedule is kept only if it beats the default one on the dynamic workload.

A schedule that is fast on the static twin can be slow on the dynamic workload (a cache or a
compute-at placed under a loop that became symbolic). So the guard measures the dynamic
workload, with the tune's builder and runner, at ``GUARD_SHAPES`` (batch x seq 1x32 and 8x128):
the default schedule (what compile does without a database: the target's schedule rules)
against the best few derived ones; a tuned schedule is kept only if it wins
(:func:`guard_choice`); the numbers go to the metadata.
"""

from __future__ import annotations

from .measure import measure
from .replay import dynamic_trace
from .workloads import fused_views

GUARD_SHAPES = ((1, 32), (8, 128))  # (batch, seq) at which a derived dynamic schedule must win
GUARD_CANDIDATES = 4  # best static records tried on the dynamic workload


def arg_infos(qm, spec, tgt, shapes, lowered=None) -> list[dict]:
    """Per shape: workload name -> MetaSchedule ``ArgInfo`` list of its static twin at that shape."""
    from tvm import tirx
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    out = []
    for shape in shapes:
        _, static, _ = fused_views(qm, spec, tgt, shape, lowered)
        out.append({gv.name_hint: ArgInfo.from_prim_func(f) for gv, f in static.functions.items()
                    if isinstance(f, tirx.PrimFunc)})
    return out


def default_schedule(spec, tgt, dyn_mod):
    """The workload as compile schedules it without a database (the target's schedule pass)."""
    from ..schedules import schedule_pass

    sched = schedule_pass(spec.name, tgt)
    return dyn_mod if sched is None else sched(dyn_mod)


def guard_choice(default: list, candidates: list[list]) -> int | None:
    """The candidate to keep: measured at every shape, no shape more than 10% slower than the
    default and the geometric-mean speedup over it > 1; the fastest such. None: keep the default."""
    import math

    best, best_gain = None, 1.0
    for i, c in enumerate(candidates):
        if any(t is None for t in c):
            continue
        if any(d is not None and t > 1.1 * d for t, d in zip(c, default)):
            continue
        ratios = [d / t for t, d in zip(c, default) if d is not None]
        gain = math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else 2.0
        if gain > best_gain:
            best, best_gain = i, gain
    return best


def pick(g, best, spec, tgt, builder, runner, infos):
    """Index into ``best`` of the record the group's workloads get, and the guard's measurements."""
    from tvm import s_tir

    name = g.name
    dyn = g.members[name][0]
    cands = []
    for i, rec in enumerate(best):
        t = dynamic_trace(rec.trace, dyn)
        if t is not None:
            cands.append((i, t))
        if len(cands) == GUARD_CANDIDATES:
            break
    if not cands:
        return None, None
    if infos is None or any(name not in per_shape for per_shape in infos):
        return cands[0][0], None
    mods = [default_schedule(spec, tgt, dyn)]
    for _, t in cands:
        sch = s_tir.Schedule(dyn)
        t.apply_to_schedule(sch, remove_postproc=False)
        mods.append(sch.mod)
    times = measure(builder, runner, tgt, mods, [per_shape[name] for per_shape in infos])
    choice = guard_choice(times[0], times[1:])
    us = lambda ts: [None if t is None else round(t * 1e6, 1) for t in ts]  # noqa: E731
    checked = {
        "shapes": [list(s) for s in GUARD_SHAPES], "default_us": us(times[0]),
        "candidates_us": [us(t) for t in times[1:]], "kept": "default" if choice is None else "tuned",
        **({} if choice is None else {"candidate": choice}),
    }
    return (None if choice is None else cands[choice][0]), checked
