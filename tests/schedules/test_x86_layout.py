"""x86 element-wise / layout kernels (schedules/x86_layout.py): the head split's slice and
transpose in one vectorized pass.

* kernel: the fused q/k/v output ``[batch, seq, 3 heads, d]`` sliced to one part's heads and
  transposed to ``[batch, heads, seq, d]`` (q, k) or ``[batch, heads, d, seq]`` (v), batch and seq
  symbolic, through the x86 schedule pass: the slice is inlined (no workspace), the static ``d``
  loop is vectorized (q, k) or seq in 16-lane vectors outside ``d`` (v), there is no parallel
  loop, and the built kernel equals numpy's slice + transpose for several shapes, sequences
  with and without a partial last vector among them;
* an element-wise kernel with a symbolic innermost loop read contiguously keeps its loop order
  (16-lane vectors innermost) and is exact;
* a PrimFunc with a reduction is left to the other rules (the rule returns None);
* model: a tiny BERT on x86 (its transposes scheduled by this rule) equals golden elsewhere
  (tests/passes/test_lower_to_integer.py::test_x86_vnni_strategy_lowers_bit_identically).
"""

from __future__ import annotations

import numpy as np
import pytest

HEADS, D = 4, 16


def _target():
    import tvm

    return tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2})


def _kernel(part: int, axes):
    import tvm
    from tvm import te, tirx, topi

    from ibert_tvm.schedules import schedule_pass

    B, S = tirx.Var("batch", "int64"), tirx.Var("seq", "int64")
    x = te.placeholder((B, S, tirx.IntImm("int64", 3 * HEADS), tirx.IntImm("int64", D)), "int8", name="x")
    sl = te.compute((B, S, HEADS, D), lambda b, s, h, d: x[b, s, h + part * HEADS, d], name="T_strided_slice")
    out = topi.transpose(sl, axes)
    func = te.create_prim_func([x, out]).with_attr("global_symbol", "main")
    mod = schedule_pass("x86", _target())(tvm.IRModule({"main": func}))
    return func, mod


def _walk(func):
    import tvm_ffi
    from tvm import tirx

    loops = []
    tvm_ffi.structural_walk(func.body, (tirx.For, loops.append))
    return loops


@pytest.mark.parametrize("part,axes", [(0, (0, 2, 1, 3)), (1, (0, 2, 1, 3)), (2, (0, 2, 3, 1))])
def test_head_split_is_one_vectorized_pass_and_exact(part, axes):
    import tvm
    from tvm import tirx

    from ibert_tvm.schedules import is_scheduled

    func, mod = _kernel(part, axes)
    sched = mod["main"]
    assert is_scheduled(sched)
    blocks = []
    import tvm_ffi
    from tvm import s_tir

    tvm_ffi.structural_walk(sched.body, (s_tir.SBlock, lambda b: blocks.append(b.name_hint)))
    assert len([b for b in blocks if b != "root"]) == 1, blocks  # the slice is inlined: one pass, no workspace
    loops = _walk(sched)
    kinds = [lp.kind for lp in loops]
    assert tirx.ForKind.PARALLEL not in kinds
    if axes[-1] == 3:  # d innermost (q, k): one vector per row of a head
        assert [int(lp.extent) for lp in loops if lp.kind == tirx.ForKind.VECTORIZED] == [D]
    else:  # seq innermost (v): symbolic, 16-lane vectors, their outer loop above d (a transpose)
        from ibert_tvm.schedules.x86_layout import SYMBOLIC_LANES

        assert [int(lp.extent) for lp in loops if lp.kind == tirx.ForKind.VECTORIZED] == [SYMBOLIC_LANES]
        nest = [lp.extent for lp in reversed(loops)]  # _walk is post-order: outermost first now
        assert [isinstance(e, tirx.IntImm) for e in nest[-3:]] == [False, True, True], nest
        assert int(nest[-2]) == D  # seq's outer part (symbolic), then d, then the 16 lanes
        assert "pragma_loop_partition_hint" in sched.script()
    lib = tvm.compile(mod, target=_target())
    rng = np.random.default_rng(part)
    for b, s in [(1, 1), (2, 7), (3, 33), (1, 16), (2, 32), (1, 130)]:  # tails of every length
        x = rng.integers(-128, 128, (b, s, 3 * HEADS, D), dtype=np.int64).astype(np.int8)
        want = np.ascontiguousarray(x[:, :, part * HEADS:(part + 1) * HEADS, :].transpose(axes))
        out = tvm.runtime.tensor(np.zeros(want.shape, np.int8))
        lib["main"](tvm.runtime.tensor(x), out)
        np.testing.assert_array_equal(out.numpy(), want)


def test_reduction_is_not_matched():
    from tvm import te, tirx

    from ibert_tvm.schedules.x86_layout import InjectiveRule

    B = tirx.Var("batch", "int64")
    x = te.placeholder((B, tirx.IntImm("int64", 8)), "int32", name="x")
    k = te.reduce_axis((0, 8), name="k")
    y = te.compute((B,), lambda i: te.sum(x[i, k], axis=k), name="rowsum")
    func = te.create_prim_func([x, y])
    assert InjectiveRule().apply(func, _target(), False) is None


def test_symbolic_contiguous_innermost_keeps_its_order():
    """``y[b, h, s] = x[b, h, s] + 1`` (s symbolic, read contiguously): vectorized in 16 lanes,
    not moved above ``h``; exact for lengths with and without a tail."""
    import tvm
    from tvm import te, tirx

    from ibert_tvm.schedules import schedule_pass
    from ibert_tvm.schedules.x86_layout import SYMBOLIC_LANES

    B, S = tirx.Var("batch", "int64"), tirx.Var("seq", "int64")
    x = te.placeholder((B, tirx.IntImm("int64", HEADS), S), "int32", name="x")
    y = te.compute(x.shape, lambda b, h, s: x[b, h, s] + 1, name="y")
    func = te.create_prim_func([x, y]).with_attr("global_symbol", "main")
    mod = schedule_pass("x86", _target())(tvm.IRModule({"main": func}))
    loops = _walk(mod["main"])
    assert [int(lp.extent) for lp in loops if lp.kind == tirx.ForKind.VECTORIZED] == [SYMBOLIC_LANES]
    names = [lp.loop_var.name for lp in reversed(loops)]  # outermost first
    assert names.index("h") < names.index("s_0"), names
    lib = tvm.compile(mod, target=_target())
    rng = np.random.default_rng(5)
    for b, s in [(1, 1), (2, 17), (1, 48)]:
        xs = rng.integers(-1000, 1000, (b, HEADS, s)).astype(np.int32)
        out = tvm.runtime.tensor(np.zeros(xs.shape, np.int32))
        lib["main"](tvm.runtime.tensor(xs), out)
        np.testing.assert_array_equal(out.numpy(), xs + 1)
