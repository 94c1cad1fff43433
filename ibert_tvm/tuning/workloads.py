"""The model's fused workloads, in two views, grouped by IR structure; the trial budget.

Batch and sequence length are symbolic in the model, and MetaSchedule can only measure static
shapes, so a tune works on two views of the same fused module (``passes.pipeline.fuse``):

* the *static* view (``batch, seq = TUNE_SHAPE``): what MetaSchedule searches and measures;
* the *dynamic* view: what ``compile`` sees (the records are derived for it, :mod:`.replay`).

Workloads that differ only in constants (the per-layer requantization/GELU/LayerNorm constants
are baked into the kernels) form one *group*: one member is tuned, every member gets the trace.
The group key (:func:`group_key`) is the structural hash of the static PrimFunc with every
integer literal set to 0 (``tvm_ffi.structural_map``; names do not enter a structural hash),
together with the exact parameter types (shapes, dtypes): the IR itself, not its printed text.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

TUNE_SHAPE = (1, 32)  # (batch, seq) of the static view; 32 == x86_vnni.TILE_M
SHAPE_VARS = ("batch", "seq")  # the symbolic dims of the lowered model (frontend.lower.integer_module)


@dataclass
class Group:
    """Fused workloads equal up to constants; ``members`` maps name -> (dynamic, static) IRModule."""

    key: str
    members: dict = field(default_factory=dict)
    flops: float = 0.0  # of one member at the tuning shape
    calls: int = 0  # call sites of all members in the model's forward function

    @property
    def name(self) -> str:
        return next(iter(self.members))

    @property
    def rep_static(self):
        return self.members[self.name][1]


def normalize(func):
    """MetaSchedule's workload form of a PrimFunc (an IRModule with ``main``)."""
    import tvm

    return tvm.get_global_func("tvm.s_tir.meta_schedule.normalize_mod")(func)


def group_key(mod) -> str:
    """Workload identity up to names and constants (see the module doc): 16 hex digits."""
    import tvm_ffi
    from tvm import tirx

    func = mod["main"]
    signature = tvm_ffi.structural_hash([p.ty for p in func.params], map_free_vars=True)
    masked = tvm_ffi.structural_map(func, [(tirx.IntImm, lambda imm: tirx.IntImm(imm.ty, 0))])
    body = tvm_ffi.structural_hash(masked, map_free_vars=True)
    return f"{signature & 0xFFFFFFFF:08x}{body & 0xFFFFFFFF:08x}"


def symbolic_signature(func) -> bool:
    """Does a parameter of ``func`` still use a symbolic model dim (not specialised)?"""
    import tvm_ffi
    from tvm import tirx

    names: set[str] = set()

    def visit(node, visitor):
        if isinstance(node, tirx.Var):
            names.add(str(node.name))
        visitor.default_visit(node)

    for p in func.params:
        names.add(str(p.name))
        tvm_ffi.structural_visit(p.ty, visit)
    return bool(names & set(SHAPE_VARS))


def call_counts(mod) -> Counter:
    """Call sites per PrimFunc (``R.call_tir``) in the module's Relax functions."""
    import tvm_ffi
    from tvm import ir, relax, tirx

    call_tir = ir.Op.get("relax.call_tir")
    counts: Counter = Counter()

    def visit(node, visitor):
        if isinstance(node, relax.Call) and node.op.same_as(call_tir) and isinstance(node.args[0], ir.GlobalVar):
            counts[node.args[0].name_hint] += 1
        visitor.default_visit(node)

    for func in mod.functions.values():
        if not isinstance(func, tirx.PrimFunc):
            tvm_ffi.structural_visit(func, visit)
    return counts


def lowered_model(qm, spec):
    """``frontend.lower.integer_module``'s ``(IRModule, param names, arrays)`` for ``spec``: what
    compile builds (a tune computes it once: the import costs seconds)."""
    from ..frontend.lower import integer_module
    from ..schedules import linear_strategy

    return integer_module(qm, linear_strategy(spec.name))


def fused_views(qm, spec, tgt, shape, lowered=None):
    """(dynamic fused IRModule, static fused IRModule, strategy name) of the model for ``spec``
    (``lowered``: :func:`lowered_model`'s result, else computed)."""
    from tvm import relax

    from ..passes.pipeline import fuse
    from ..schedules import linear_strategy, schedule_pass

    strategy = linear_strategy(spec.name)
    mod = (lowered or lowered_model(qm, spec))[0]  # what compile builds
    schedule_pass(spec.name, tgt)  # registers the target's tensor intrinsics, if any
    with tgt:
        dyn = fuse(mod)
        bind = relax.transform.BindSymbolicVars(dict(zip(SHAPE_VARS, shape)))
        static = relax.transform.SpecializePrimFuncBasedOnCallSite()(bind(dyn))
    return dyn, static, strategy.name


def model_groups(qm, spec, tgt, shape=TUNE_SHAPE, lowered=None) -> tuple[list[Group], str]:
    """The model's distinct fused workloads, grouped (see the module docstring)."""
    import tvm_ffi
    from tvm import tirx

    dyn, static, strategy = fused_views(qm, spec, tgt, shape, lowered)
    static_funcs = {gv.name_hint: f for gv, f in static.functions.items() if isinstance(f, tirx.PrimFunc)}
    calls = call_counts(dyn)
    groups: dict[str, Group] = {}
    seen: dict[int, Group] = {}  # structural hash of a dynamic workload -> its group
    for gv, func in sorted(dyn.functions.items(), key=lambda kv: kv[0].name_hint):
        if not isinstance(func, tirx.PrimFunc) or gv.name_hint not in static_funcs:
            continue
        d, s = normalize(func), normalize(static_funcs[gv.name_hint])
        if symbolic_signature(s["main"]):
            continue  # not specialised (called with several shapes): compile schedules it
        h = tvm_ffi.structural_hash(d)
        if h in seen:
            seen[h].calls += calls[gv.name_hint]
            continue
        key = group_key(s)
        g = seen[h] = groups.setdefault(key, Group(key))
        g.members[gv.name_hint] = (d, s)
        g.calls += calls[gv.name_hint]
        if not g.flops:
            g.flops = op_count(s)
    return list(groups.values()), strategy


def op_count(mod) -> float:
    """TVM's op estimate, or (it has no rule for ``Let``) 4 ops per block iteration."""
    from tvm import s_tir
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(mod))
    except Exception:  # noqa: BLE001 - tvm.error.InternalError on unsupported expressions
        sch = s_tir.Schedule(mod)
        total = 0
        for b in sch.get_child_blocks(sch.get_sblock("root")):
            n = 1
            for iv in sch.get(b).iter_vars:
                n *= int(iv.dom.extent)
            total += n
        return 4.0 * total


def allocate_trials(groups: list[Group], total: int) -> dict[str, int]:
    """Share ``total`` trials: a quarter evenly over the groups that compute (op count > 0; pure
    copies get none), the rest in proportion to ``ops x calls``; shares under 2 become 0.

    Deterministic in (groups, total), so a resumed tune computes the same budget per group.
    """
    computing = [g for g in groups if g.flops > 0]
    out = {g.key: 0 for g in groups}
    if not computing or total <= 0:
        return out
    weights = {g.key: g.flops * max(g.calls, 1) for g in computing}
    s = sum(weights.values())
    even = total // 4 / len(computing)
    raw = {k: even + (total - total // 4) * w / s for k, w in weights.items()}
    out.update({k: int(v) for k, v in raw.items()})
    for k in sorted(raw, key=lambda k: (raw[k] - out[k], k), reverse=True)[: total - sum(out.values())]:
        out[k] += 1
    return {k: (v if v >= 2 else 0) for k, v in out.items()}
