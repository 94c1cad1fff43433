"""The lowering pipeline, in phases, with the integer-only proof built in.

    phase 0  export     the integer nn model -> Relax IRModule (integer params as inputs)
    phase 1  lower      LegalizeOps, AnnotateTIROpPattern, FuseOps, FuseTIR; then a MetaSchedule
                        database when one is given, and the target's schedule pass
                        (ibert_tvm.schedules) for the PrimFuncs the database did not schedule;
                        on the CPU targets it is measured for, serial_when_small (a kernel with
                        parallel loops runs them serially when its work is small;
                        ibert_tvm.schedules.serial_when_small);
                        then TVM's default Relax pipeline (memory planning, VM lowering)
    phase 2  verify     VerifyIntegerOnly on the lowered Relax + every TIR PrimFunc
    phase 3  build      relax.build with the TIR pipeline TIR_PIPELINE: TVM's default one
                        (s_tir), then OneLaunch (consecutive parallel loops of a CPU kernel
                        become one thread-pool launch; ibert_tvm.schedules.one_launch); no
                        further Relax passes
    phase 4  verify     the generated code: LLVM IR of every kernel / CUDA source

Any float at phase 2 or 4 raises ``FloatFoundError``: nothing is written. A debug dump of
``mod.script()`` after each phase goes to ``dump_dir`` when given.

No pass here "drops float casts": the integer frontend emits none, and the verifier proves
that the lowering introduced none either. If a future lowering does, it fails loudly here.
"""

from __future__ import annotations

from pathlib import Path

from ..op.annotations import OP_PATTERN_ANNOTATION
from .verify import verify_integer_only
from .verify_integer_only import VerifyIntegerOnly


#: the TIR pipeline phase 3 builds with (``tvm.tirx.get_tir_pipeline`` name, registered by
#: :func:`register_tir_pipeline`)
TIR_PIPELINE = "ibert_tvm"


def register_tir_pipeline() -> str:
    """Register :data:`TIR_PIPELINE` with TVM (idempotent) and return its name: TVM's default
    TIR pipeline (``s_tir``, with its host and device finalization), then
    :func:`~ibert_tvm.schedules.one_launch.OneLaunch`."""
    from tvm.tirx import compilation_pipeline

    if TIR_PIPELINE not in compilation_pipeline.PIPELINE_MAP:
        compilation_pipeline.register_tir_pipeline(TIR_PIPELINE, _tir_pipeline)
    return TIR_PIPELINE


def _tir_pipeline():
    import tvm
    from tvm.s_tir.pipeline import default_s_tir_pipeline

    from ..schedules.one_launch import OneLaunch

    base, finalize_host, finalize_device = default_s_tir_pipeline()

    @tvm.transform.module_pass(opt_level=0, name="IbertTIRPipeline")
    def _pipeline(mod, _ctx):
        return OneLaunch()(base(mod))

    return _pipeline, finalize_host, finalize_device


def _dump(dump_dir, name, mod):
    if dump_dir is not None:
        p = Path(dump_dir)
        p.mkdir(parents=True, exist_ok=True)
        (p / f"{name}.py").write_text(mod.script())


def _declared_op_patterns():
    """PrimFuncs with a block annotated ``OP_PATTERN_ANNOTATION`` get that ``op_pattern``.

    AnnotateTIROpPattern calls a block opaque when a load index uses a symbolic shape variable
    (e.g. a kernel that regroups ``batch x seq`` rows into static tiles), which stops FuseOps
    from fusing its element-wise consumers; a kernel that knows better declares its pattern.
    """
    import tvm
    import tvm_ffi
    from tvm import tirx

    @tvm.transform.module_pass(opt_level=0, name="DeclaredOpPatterns")
    def _pass(mod, _ctx):
        for gv, func in list(mod.functions.items()):
            if not isinstance(func, tirx.PrimFunc):
                continue
            found = []

            def visit(node, visitor, found=found):
                if isinstance(node, tvm.s_tir.SBlock) and OP_PATTERN_ANNOTATION in node.annotations:
                    v = node.annotations[OP_PATTERN_ANNOTATION]
                    found.append(int(getattr(v, "value", v)))
                if isinstance(node, tvm_ffi.Object) and not isinstance(node, tirx.Expr):
                    visitor.default_visit(node)  # statements only: annotations sit on blocks

            tvm_ffi.structural_visit(func.body, visit)
            if found:
                mod[gv] = func.with_attr("op_pattern", max(found))
        return mod

    return _pass


def fuse(mod):
    """LegalizeOps .. FuseTIR: the fused TIR workloads (what tuning and schedules see)."""
    import tvm
    from tvm import relax

    return tvm.transform.Sequential(
        [
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            _declared_op_patterns(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
        ]
    )(mod)


def lower(mod, target, *, target_name: str | None = None, database_dir=None, dump_dir=None,
          serial_when_small=True):
    """Phase 1 + 2: the lowered, verified Relax IRModule.

    ``database_dir``: a MetaSchedule database to apply first: a directory (applied whole), or a
    ``meta_schedule.database.Database`` object (compile passes the records
    ``schedules.tuning_db.select_records`` kept, in memory).

    ``serial_when_small``: True applies :func:`~ibert_tvm.schedules.serial_when_small.serial_when_small`
    on its ``TARGETS`` (x86) with the thresholds read at call time from a table (``forward``
    takes it as one more parameter after the weights, named ``serial_when_small.TABLE_PARAM``,
    when any kernel was split; :func:`table_params`); an int (for every op class) or a
    ``{op class: int}`` applies it with those thresholds as compile-time constants (work units:
    block iterations; no table parameter); False leaves every parallel kernel parallel."""
    from tvm import relax

    from ..schedules import schedule_pass
    from ..schedules import serial_when_small as sws

    _dump(dump_dir, "0_export", mod)
    with target:
        mod = fuse(mod)
        fused = mod  # the unscheduled kernels: serial_when_small's work estimates come from them
        sched = schedule_pass(target_name, target) if target_name else None
        if database_dir is not None:
            # the database first: its workloads are the fused, unscheduled PrimFuncs; what it
            # schedules is marked "tirx.is_scheduled", which the target's schedule (dlight's
            # ApplyDefaultSchedule over the target's rules) skips on every target
            from tvm.s_tir import meta_schedule as ms  # (also registers the pass)

            if isinstance(database_dir, ms.database.Database):
                with database_dir:  # the pass applies the database in context when given no work_dir
                    mod = relax.transform.MetaScheduleApplyDatabase()(mod)
            else:
                mod = relax.transform.MetaScheduleApplyDatabase(str(database_dir))(mod)
        if sched is not None:
            mod = sched(mod)
        if serial_when_small is not False and target_name in sws.TARGETS and "gpu" not in target.keys:
            mod = sws.serial_when_small(fused, None if serial_when_small is True else serial_when_small)(mod)
        _dump(dump_dir, "1_scheduled", mod)
        mod = relax.get_default_pipeline(target)(mod) if "gpu" in target.keys else relax.get_pipeline("default")(mod)
    _dump(dump_dir, "2_lowered", mod)
    check = VerifyIntegerOnly()
    mod = check(mod)
    return mod, check.report


def table_params(lowered) -> dict:
    """``{name: numpy array}`` of the parameters the pipeline appended to the entry function
    (``forward``; ``main`` before ``integer_module`` renames it: any public Relax function) after
    the weights: ``serial_when_small.TABLE_PARAM`` (its "spin" table, TVM's default wait policy:
    what params.npz holds) when a kernel reads the serial/parallel thresholds at call time, else
    nothing."""
    import numpy as np
    from tvm import relax

    from ..schedules import serial_when_small as sws

    for _, f in lowered.functions_items():
        if isinstance(f, relax.Function) and f.attrs is not None and "global_symbol" in f.attrs \
                and f.params and f.params[-1].name == sws.TABLE_PARAM:
            return {sws.TABLE_PARAM: np.asarray(sws.table("spin"), np.int64)}
    return {}


def build(mod, target, *, target_name: str | None = None, database_dir=None, dump_dir=None,
          serial_when_small=True, extra_params: dict | None = None):
    """Phases 1-4. Returns ``(executable, module_report, code_report)``. ``extra_params``: a dict
    to fill with :func:`table_params` (the run-time parameters ``forward`` takes after the
    weights that the caller did not give the pipeline)."""
    from tvm import relax

    lowered, report = lower(mod, target, target_name=target_name, database_dir=database_dir, dump_dir=dump_dir,
                            serial_when_small=serial_when_small)
    if extra_params is not None:
        extra_params.update(table_params(lowered))
    ex = relax.build(lowered, target=target, relax_pipeline=None, tir_pipeline=register_tir_pipeline())
    code_report = verify_integer_only(ex, what="executable")
    return ex, report, code_report
