"""The schedules as dlight rules: each target's schedule is ``ApplyDefaultSchedule`` over its rules.

* a PrimFunc marked ``tirx.is_scheduled`` (as a tuning database marks what it schedules) is left
  alone by every target's rule set, aarch64 included, while the same PrimFunc unmarked is
  scheduled (so the check is not vacuous);
* a rule returns None where it does not apply (another op, or a target without the instruction);
* the caller's module is not modified;
* no import cycle between the modules of ``ibert_tvm/schedules``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SCHEDULES = Path(__file__).resolve().parents[2] / "ibert_tvm" / "schedules"


def _linear_func(target: str):
    """A linear as ``target``'s strategy writes it (symbolic batch/seq), unscheduled."""
    from tvm import te, tirx

    from ibert_tvm.schedules import linear_strategy

    i64 = lambda v: tirx.IntImm("int64", v)  # Relax emits int64 shapes
    st = linear_strategy(target)
    n, k = 32, 64
    shapes = st.param_shapes(n, k)
    b, s = tirx.Var("batch", "int64"), tirx.Var("seq", "int64")
    x = te.placeholder((b, s, i64(k)), "int8", name="x")
    w = te.placeholder([i64(d) for d in shapes["weight"][0]], "int8", name="w")
    bias = te.placeholder((i64(n),), "int32", name="bias")
    return te.create_prim_func([x, w, bias, st.te(x, w, bias)], index_dtype_override="int64")


@pytest.mark.parametrize("target", ["x86", "aarch64", "cuda-t4"])
def test_a_scheduled_function_is_left_alone_by_every_target(target):
    import tvm

    from ibert_tvm.schedules import SCHEDULED, is_scheduled, schedule_pass
    from ibert_tvm.targets import get_target

    tgt = get_target(target).tvm_target()
    sched = schedule_pass(target, tgt)
    assert sched is not None, f"{target} has no schedule rules"
    func = _linear_func(target)

    fresh = sched(tvm.IRModule({"main": func}))["main"]  # control: the rule set takes it
    assert is_scheduled(fresh) and fresh.without_attr(SCHEDULED).script() != func.script()

    marked = func.with_attr(SCHEDULED, True)
    kept = sched(tvm.IRModule({"main": marked}))["main"]
    assert kept.same_as(marked), f"{target}: a function marked {SCHEDULED} was scheduled again"


def test_the_callers_module_is_not_modified():
    import tvm

    from ibert_tvm.schedules import is_scheduled, schedule_pass
    from ibert_tvm.targets import get_target

    tgt = get_target("x86").tvm_target()
    func = _linear_func("x86")
    mod = tvm.IRModule({"main": func})
    out = schedule_pass("x86", tgt)(mod)
    assert is_scheduled(out["main"]) and mod["main"].same_as(func)


def test_rules_return_none_where_they_do_not_apply():
    import tvm
    from tvm import te, tirx

    from ibert_tvm.schedules import schedule_rules
    from ibert_tvm.schedules.arm_sdot import SdotLinearRule
    from ibert_tvm.targets import get_target

    x = te.placeholder((tirx.Var("n", "int64"), tirx.IntImm("int64", 8)), "int32", name="x")
    shift = te.create_prim_func([x, te.compute(x.shape, lambda *i: x(*i) >> 1, name="shift")])
    from ibert_tvm.schedules.x86_layout import InjectiveRule

    for target in ("x86", "aarch64"):
        tgt = get_target(target).tvm_target()
        for rule in schedule_rules(target, tgt):
            if isinstance(rule, InjectiveRule):  # x86's last rule is for exactly this: element-wise kernels
                assert rule.apply(shift, tgt, False) is not None
                continue
            assert rule.apply(shift, tgt, False) is None, (target, type(rule).__name__)
    # sdot needs +dotprod: on a NEON-only target the rule declines even a packed linear
    neon = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    assert SdotLinearRule().apply(_linear_func("aarch64"), neon, False) is None


def _imports(path: Path) -> set[str]:
    """Sibling modules of ``ibert_tvm.schedules`` that ``path`` imports (``from .x import``,
    ``from . import x``), at any level of the file."""
    pkg = path.parent.relative_to(SCHEDULES).parts
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(pkg[: len(pkg) - (node.level - 1)]) if node.level > 1 else list(pkg)
            if node.level - 1 > len(pkg):
                continue  # above schedules/
            if node.module:
                out.add(".".join([*base, *node.module.split(".")]))
            else:
                out.update(".".join([*base, a.name]) for a in node.names)
    return out


def test_no_import_cycle_inside_schedules():
    modules = {}
    for p in SCHEDULES.rglob("*.py"):
        parts = list(p.relative_to(SCHEDULES).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = p
    graph = {m: {i for i in _imports(p) if i in modules and i != m and i != ""} for m, p in modules.items()}
    # a package's __init__ ("" or "tune") is imported by every submodule: edges *into* it from
    # its own submodules are how Python loads them, not a cycle of ours, unless it imports back
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m, stack):
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle.extend(stack[stack.index(n):] + [n])
                return True
            if n not in state and visit(n, [*stack, n]):
                return True
        state[m] = 2
        return False

    for m in sorted(graph):
        if m not in state and visit(m, [m]):
            break
    assert not cycle, " -> ".join(cycle)
