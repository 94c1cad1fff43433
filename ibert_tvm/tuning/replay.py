"""Trace replay: the static twin's records made to run on the dynamic workload.

A record is tuned on the static twin (``batch, seq = TUNE_SHAPE``); ``compile`` sees the dynamic
workload. :func:`dynamic_trace` rewrites a trace so that it replays there (a tile decision on a
symbolic loop degrades to "untiled", ``sample_perfect_tile``'s rule); :func:`replays` also
builds it. With ``TUNE_SHAPE = (1, 32)`` the x86 VNNI linears' row-tile loop has extent 1, so
the tuned schedule is what runs per 32-row tile.
"""

from __future__ import annotations


def count_trials(db, static_mod) -> int:
    import tvm_ffi

    if not db.has_workload(static_mod):
        return 0
    h = tvm_ffi.structural_hash(static_mod)
    return sum(1 for r in db.get_all_tuning_records() if tvm_ffi.structural_hash(r.workload.mod) == h)


def best_records(db, static_mod, k=32):
    if not db.has_workload(static_mod):
        return []
    return list(db.get_top_k(db.commit_workload(static_mod), k))


def dynamic_trace(trace, dyn_mod, *, max_rounds: int = 16):
    """``trace`` (tuned on the static twin) made replayable on the dynamic workload, or None.

    Two instructions do not carry over to a loop whose extent is symbolic:

    * ``sample_perfect_tile``: its replay yields constants, not random variables, and the replay
      aborts. The sample is dropped and the split that used its factors gets ``[None, 1, .., 1]``:
      the loop stays whole at the outer tile level (the sampler's own rule for symbolic extents),
      the other loops keep their tuned tiles;
    * ``vectorize``: LLVM cannot vectorize a symbolic extent on x86; it is dropped (serial loop).
    """
    from tvm import s_tir, tirx
    from tvm.s_tir.schedule import Instruction, Trace

    insts = list(trace.insts)
    decisions = list(trace.decisions.items())

    def symbolic(sch, rv) -> bool:
        return not isinstance(sch.get(rv).extent, tirx.IntImm)

    for _ in range(max_rounds):
        t = Trace(insts, {k: v for k, v in decisions if any(k.same_as(i) for i in insts)})
        sch = s_tir.Schedule(dyn_mod)
        samples, vectorizes = [], []

        def provider(inst, inputs, _attrs, decision, sch=sch, samples=samples, vectorizes=vectorizes):
            if inst.kind.name == "SamplePerfectTile" and symbolic(sch, inputs[0]):
                samples.append(inst)
            elif inst.kind.name == "Vectorize" and symbolic(sch, inputs[0]):
                vectorizes.append(inst)
            return decision

        try:
            t.apply_to_schedule(sch, remove_postproc=False, decision_provider=provider)
            replayed = True
        except Exception:  # noqa: BLE001 - fixed below if a symbolic sample caused it
            replayed = False
        if replayed and not vectorizes:
            return t
        if vectorizes:
            insts = [x for x in insts if not any(x.same_as(v) for v in vectorizes)]
            continue
        if not samples:
            return None
        bad = samples[0]
        at = next(i for i, x in enumerate(insts) if x.same_as(bad))
        consts = [None] + [tirx.IntImm("int64", 1)] * (len(bad.outputs) - 1)

        def subst(v, outs=list(bad.outputs), consts=consts):
            for o, c in zip(outs, consts):
                if v is not None and not isinstance(v, (int, float, str)) and v.same_as(o):
                    return c
            return v

        rebuilt = []
        for i, x in enumerate(insts):
            if i == at:
                continue
            if i > at:
                y = Instruction(x.kind, [subst(v) for v in x.inputs], list(x.attrs), list(x.outputs))
                decisions = [(y if k.same_as(x) else k, v) for k, v in decisions]
                x = y
            rebuilt.append(x)
        insts = rebuilt
    return None


def replays(trace, dyn_mod, tgt):
    """The dynamic version of ``trace`` if it replays on ``dyn_mod`` and builds, else None."""
    import tvm
    from tvm import s_tir

    from ..passes.pipeline import register_tir_pipeline

    t = dynamic_trace(trace, dyn_mod)
    if t is None:
        return None
    try:
        sch = s_tir.Schedule(dyn_mod)
        t.apply_to_schedule(sch, remove_postproc=False)
        tvm.compile(sch.mod, target=tgt, tir_pipeline=register_tir_pipeline())  # as compile builds it
    except Exception:  # noqa: BLE001 - try the next record
        return None
    return t
