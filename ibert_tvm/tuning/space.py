"""The search: MetaSchedule's design space, search strategy and tune context for one workload.

x86 gets TVM's CPU space plus a ``MultiLevelTilingWithIntrin`` rule for our VNNI intrinsic
(TVM's x86 default names the stock one, which does not build with LLVM 22) and a postprocessor
that rejects samples TVM cannot build; other targets get TVM's stock space.
"""

from __future__ import annotations


def design_space(spec, *, vnni: bool):
    """The design space: TVM's stock one for the target; on x86 TVM's CPU default plus, when
    ``vnni``, a ``MultiLevelTilingWithIntrin`` rule for our VNNI intrinsic (TVM's x86 default
    names the stock intrinsic, which does not build with LLVM 22)."""
    if spec.name != "x86":
        return "post-order-apply"
    from tvm.s_tir import meta_schedule as ms

    from ..schedules.intrinsics import register_vnni_intrin

    rules = list(ms.ScheduleRule.create("llvm"))
    postprocs = list(ms.Postproc.create("llvm"))
    if vnni:
        at = next(i for i, r in enumerate(rules) if type(r).__name__ == "MultiLevelTiling")
        rules.insert(
            at,
            ms.schedule_rule.MultiLevelTilingWithIntrin(
                register_vnni_intrin(),
                structure="SSRSRS",
                tile_binds=None,
                max_innermost_factor=64,
                vector_load_lens=None,
                reuse_read=None,
                reuse_write=ms.schedule_rule.ReuseType(req="may", levels=[1, 2], scope="global"),
            ),
        )
        at = next(i for i, p in enumerate(postprocs) if type(p).__name__ == "RewriteReductionBlock")
        postprocs.insert(at, no_vectorized_tensorize())
        postprocs.insert(at + 2, ms.postproc.RewriteTensorize(vectorize_init_loop=True))
    return ms.space_generator.PostOrderApply(
        sch_rules=rules, postprocs=postprocs, mutator_probs=ms.Mutator.create("llvm")
    )


def no_vectorized_tensorize():
    """A postprocessor that rejects a sample whose tensorized tile sits inside a vectorized loop.

    ``RewriteParallelVectorizeUnroll`` may vectorize the innermost tile loops *around* the block
    ``RewriteTensorize`` turns into the VNNI intrinsic; TVM then fails to build it ("VectorizeLoop
    before LiftStorageAlloc"). About half of the random samples did, each a wasted trial (a
    2-trial tune could end with no valid record at all). Rejected here, the search draws another
    sample instead of spending a measurement on it."""
    from tvm import tirx
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.postproc import PyPostproc

    @derived_object
    class NoVectorizedTensorize(PyPostproc):
        def _initialize_with_tune_context(self, context) -> None:
            pass

        def apply(self, sch) -> bool:
            for gv, func in sch.mod.functions_items():
                if not hasattr(func, "body"):
                    continue
                stack = [sch.get_sblock("root", func_name=gv.name_hint)]
                while stack:
                    for b in sch.get_child_blocks(stack.pop()):
                        if "meta_schedule.auto_tensorize" in sch.get(b).annotations and any(
                            sch.get(lp).kind == tirx.ForKind.VECTORIZED for lp in sch.get_loops(b)
                        ):
                            return False
                        stack.append(b)
            return True

        def clone(self):
            return NoVectorizedTensorize()

    return NoVectorizedTensorize()


def symbolic_reduction(dyn_mod) -> bool:
    """Does a block reduce over a symbolic extent (``P V`` sums over the sequence)? Then a
    tensorized tile of it cannot be replayed on the dynamic workload (the split would need a
    predicate inside the intrinsic), so it is tuned without the tensor-intrinsic rule."""
    from tvm import s_tir, tirx

    sch = s_tir.Schedule(dyn_mod)
    for b in sch.get_child_blocks(sch.get_sblock("root")):
        for iv in sch.get(b).iter_vars:
            if int(iv.iter_type) == 2 and not isinstance(iv.dom.extent, tirx.IntImm):  # 2: reduction
                return True
    return False


def search_strategy(trials: int):
    """Evolutionary search with a population scaled to the budget (TVM's 512 costs ~20 s of CPU
    per round; a 4-trial tune does not need it)."""
    from tvm.s_tir import meta_schedule as ms

    population = max(32, min(512, 8 * trials))
    return ms.search_strategy.EvolutionarySearch(
        population_size=population, init_min_unmeasured=min(50, population // 2)
    )


def tune_context(mod, tgt, space, name, logger, rand_state, threads, trials):
    """A ``TuneContext``. With our own design space (x86), built without the constructor's
    ``import tvm.s_tir.tensor_intrin`` (every stock intrinsic parsed: ~40 s of CPU), which only
    the stock spaces need; the construction is otherwise ``TuneContext.__init__``'s (TVM 0.27)."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule import _ffi_api
    from tvm.s_tir.meta_schedule.logging import get_logging_func

    if isinstance(space, str):
        return ms.TuneContext(mod=mod, target=tgt, space_generator=space, search_strategy=search_strategy(trials),
                              task_name=name, logger=logger, rand_state=rand_state, num_threads=threads)
    ctx = ms.TuneContext.__new__(ms.TuneContext)
    ctx.__init_handle_by_constructor__(
        _ffi_api.TuneContext, mod, tgt, space, search_strategy(trials), name, threads,
        rand_state, get_logging_func(logger),
    )
    _ffi_api.TuneContextInitialize(ctx)
    return ctx
