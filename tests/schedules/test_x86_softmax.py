"""x86 integer softmax schedule (schedules/x86_softmax.py): one row at a time, ``(b, h)`` in
parallel, exp/out vectorized with a scalar tail.

* kernel: the ``IntSoftmax`` TE with symbolic batch and seq, through the x86 schedule pass (what
  ``compile --target x86`` applies), built once, equals ``IntSoftmax.numpy`` bit for bit for many
  (batch, seq) (1, 7, 8, 9, 77, 128: full vectors, tails, single elements) with random padding
  masks and an all-masked row; several mask dtypes, 16-bit outputs, a pre-shifted exp, other ranks,
  static shapes;
* the schedule really applied (``tirx.is_scheduled``, a parallel loop, vector loops), and a
  PrimFunc without the softmax blocks is returned unchanged;
* model: every softmax PrimFunc of a tiny BERT lowered for x86 is scheduled, and the compiled
  model equals ``run_golden`` bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import random_batch
from ibert_tvm.op.int_softmax import IntSoftmax

HEADS = 12
SHAPES = [(1, 1), (2, 7), (1, 8), (1, 9), (3, 77), (2, 128), (1, 32)]


def _target():
    import tvm

    return tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2})


def _kernel(plan: IntSoftmax, mask_dtype: str = "int32", lead: int = 2):
    """``plan.te`` over ``[batch, (12,) seq, seq]`` (``lead`` leading dims before the row),
    batch and seq symbolic, through the x86 schedule pass."""
    import tvm
    from tvm import te, tirx

    from ibert_tvm.schedules import schedule_pass

    B, S = tirx.Var("batch", "int64"), tirx.Var("seq", "int64")
    shape = {1: (B, S), 2: (B, S, S), 3: (B, tirx.IntImm("int64", HEADS), S, S)}[lead]
    x = te.placeholder(shape, "int32", name="x")
    mask = te.placeholder((B, S), mask_dtype, name="attention_mask")
    func = te.create_prim_func([x, mask, plan.te(x, mask)]).with_attr("global_symbol", "main")
    tgt = _target()
    mod = schedule_pass("x86", tgt)(tvm.IRModule({"main": func}))
    return func, mod, tgt


def _inputs(rng, shape, mask_dtype, spread=40000):
    B, S = shape[0], shape[-1]
    x = rng.integers(-spread, spread + 1, size=shape)
    x = np.where(rng.random(shape) < 0.05, rng.choice([-(2**31), 2**31 - 1], size=shape), x).astype(np.int32)
    mask = rng.random((B, S)) < 0.7
    mask[:, 0] = True
    mask[0] = True  # one full row
    if B > 1:
        mask[1] = False  # an all-masked row: all zeros
    return x, mask.astype(mask_dtype)


def _run(lib, x, mask, plan):
    import tvm

    out = tvm.runtime.tensor(np.zeros(x.shape, plan.out_dtype))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(mask), out)
    return out.numpy()


@pytest.mark.parametrize(
    "scale,mask_dtype,out_bits,max_len",
    [(7e-5, "int32", 8, 512), (3e-3, "int8", 8, 512), (2e-5, "bool", 8, 512), (1e-4, "int64", 16, 512),
     (5e-8, "uint8", 8, 4096)],
)
def test_scheduled_softmax_equals_numpy(scale, mask_dtype, out_bits, max_len):
    import tvm

    from ibert_tvm.passes.verify_integer_only import verify_integer_only
    from ibert_tvm.schedules import is_scheduled

    plan = IntSoftmax(scale, max_len=max_len, out_bits=out_bits)
    if scale < 1e-6:
        assert plan.pre_shift > 0  # the pre-shifted exp is covered too
    _, mod, tgt = _kernel(plan, mask_dtype, lead=3)
    assert is_scheduled(mod["main"]), "the x86 schedule pass did not schedule the softmax"
    verify_integer_only(mod)
    lib = tvm.compile(mod, target=tgt)
    rng = np.random.default_rng(int(scale * 1e9) + out_bits)
    spread = 40000 if scale > 1e-6 else 2**30
    for B, S in SHAPES:
        x, mask = _inputs(rng, (B, HEADS, S, S), mask_dtype, spread)
        np.testing.assert_array_equal(_run(lib, x, mask, plan), plan.numpy(x, mask), err_msg=f"B={B} S={S}")


@pytest.mark.parametrize("lead", [1, 2])
def test_other_ranks(lead):
    import tvm

    plan = IntSoftmax(7e-5)
    _, mod, tgt = _kernel(plan, lead=lead)
    assert "T.parallel" in mod["main"].script()
    lib = tvm.compile(mod, target=tgt)
    rng = np.random.default_rng(lead)
    for B, S in [(1, 1), (3, 7), (2, 77)]:
        x, mask = _inputs(rng, (B, S) if lead == 1 else (B, S, S), "int32")
        np.testing.assert_array_equal(_run(lib, x, mask, plan), plan.numpy(x, mask), err_msg=f"B={B} S={S}")


@pytest.mark.parametrize("S", [1, 5, 8, 9, 77])
def test_static_shapes(S):
    """Static rows too (shorter than a vector: left to LLVM; longer: vector loop + tail)."""
    import tvm
    from tvm import te

    from ibert_tvm.schedules.x86_softmax import RowSoftmaxRule

    plan = IntSoftmax(7e-5)
    x = te.placeholder((2, 3, S, S), "int32", name="x")
    mask = te.placeholder((2, S), "int32", name="attention_mask")
    func = te.create_prim_func([x, mask, plan.te(x, mask)]).with_attr("global_symbol", "main")
    sch = RowSoftmaxRule().apply(func, _target(), False)
    assert sch is not None
    scheduled = sch.mod["main"]
    lib = tvm.compile(tvm.IRModule({"main": scheduled}), target=_target())
    xv, mv = _inputs(np.random.default_rng(S), (2, 3, S, S), "int32")
    np.testing.assert_array_equal(_run(lib, xv, mv, plan), plan.numpy(xv, mv))


def test_schedule_applied_and_unscheduled_is_the_same():
    """Parallel rows, vector loops, every block under the parallel loop; the generic build of
    the same PrimFunc gives the same bytes."""
    import tvm

    plan = IntSoftmax(7e-5)
    func, mod, tgt = _kernel(plan, lead=3)
    script = mod["main"].script()
    assert script.count("T.parallel(") == 1 and script.count("T.vectorized(") == 2, script
    lib = tvm.compile(mod, target=tgt)
    assert "zmm" in lib.mod.inspect_source("asm")  # 8 int64 lanes: AVX-512 registers
    generic = tvm.compile(tvm.IRModule({"main": func}), target=tgt)
    rng = np.random.default_rng(3)
    x, mask = _inputs(rng, (2, HEADS, 33, 33), "int32")
    np.testing.assert_array_equal(_run(lib, x, mask, plan), _run(generic, x, mask, plan))


def test_other_funcs_are_left_alone():
    from tvm import te, tirx

    from ibert_tvm.schedules.x86_softmax import RowSoftmaxRule

    S = tirx.Var("seq", "int64")
    x = te.placeholder((2, S), "int32", name="x")
    y = te.compute((2, S), lambda i, j: x[i, j] + 1, name="softmax_out")  # a block name, not a softmax
    func = te.create_prim_func([x, y])
    assert RowSoftmaxRule().apply(func, _target(), False) is None


# -- the whole model ------------------------------------------------------------------------
def test_tiny_model_softmax_scheduled_and_bit_exact(quantized_factory, x86_scheduled, x86_compiled):
    """The tiny BERT lowered for x86 (conftest ``x86_scheduled``) and its x86 build (conftest
    ``x86_compiled``, shared with the LayerNorm and VNNI tests)."""
    import tvm

    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.plan import ModelPlan
    from ibert_tvm.schedules import is_scheduled

    qm, _ = quantized_factory("BertModel")
    softmax = [(gv.name_hint, f) for gv, f in x86_scheduled.functions.items()
               if isinstance(f, tvm.tirx.PrimFunc) and "softmax_exp" in f.script()]
    assert softmax, "no softmax PrimFunc in the model"
    assert all(is_scheduled(f) and "T.parallel" in f.script() for _, f in softmax), [n for n, _ in softmax]

    model, plan, d = CompiledModel(x86_compiled), ModelPlan(qm), qm.dims
    rng = np.random.default_rng(11)
    for batch, seq in ((1, 1), (2, 7), (3, 33), (2, 77)):
        inputs = random_batch(rng, batch, seq, family=d["family"], pad_id=d["pad_id"], type_vocab=d["type_vocab"])
        np.testing.assert_array_equal(model.run_ids(inputs), run_golden(plan, **inputs), err_msg=f"{batch}x{seq}")
