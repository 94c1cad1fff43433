"""x86 i-LayerNorm schedule (schedules/x86_layernorm.py): rows in parallel, the two reductions as
vector partial sums, the output vectorized over the channels.

* kernel: the ``IntLayerNorm`` TE with symbolic batch and seq, through the x86 schedule pass (what
  ``compile --target x86`` applies), built once, equals ``IntLayerNorm.numpy`` bit for bit for
  many (batch, seq) (1, 7, 33, 77, 128 rows per batch), inputs at the edges of the 24-bit domain,
  constant rows (variance 0) and a row of one large outlier; hidden sizes that are and are not a
  multiple of the vector width;
* the schedule really applied (``tirx.is_scheduled``, one parallel loop, vector loops, AVX-512
  registers in the code), the code is integer-only, and the generic build of the same PrimFunc
  gives the same bytes; a PrimFunc without the LayerNorm blocks is left alone;
* model: every LayerNorm PrimFunc of a tiny BERT lowered for x86 is scheduled by this rule, and the
  compiled model equals ``run_golden`` bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import random_batch
from ibert_tvm.op.int_layernorm import IntLayerNorm

SHAPES = [(1, 1), (2, 7), (1, 33), (3, 77), (2, 128)]


def _target():
    import tvm

    return tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2})


def _plan(hidden: int, seed: int = 0) -> IntLayerNorm:
    rng = np.random.default_rng(seed)
    return IntLayerNorm(rng.normal(1.0, 0.2, hidden), rng.normal(0.0, 0.3, hidden), out_scale=0.04)


def _kernel(plan: IntLayerNorm, lead: int = 2):
    """``plan.te`` over ``[batch, seq, H]`` (``lead`` = 2) or ``[rows, H]`` (1), symbolic, through
    the x86 schedule pass."""
    import tvm
    from tvm import te, tirx

    from ibert_tvm.schedules import schedule_pass

    H = tirx.IntImm("int64", plan.hidden)
    B, S = tirx.Var("batch", "int64"), tirx.Var("seq", "int64")
    x = te.placeholder((B, S, H) if lead == 2 else (B, H), "int32", name="x")
    g = te.placeholder((H,), "int32", name="g")
    beta = te.placeholder((H,), "int64", name="beta_q")
    func = te.create_prim_func([x, g, beta, plan.te(x, g, beta)]).with_attr("global_symbol", "main")
    tgt = _target()
    mod = schedule_pass("x86", tgt)(tvm.IRModule({"main": func}))
    return func, mod, tgt


def _inputs(rng, shape, in_bits: int = 24):
    lo, hi = -(1 << (in_bits - 1)), (1 << (in_bits - 1)) - 1
    x = rng.integers(-(1 << 18), 1 << 18, size=shape)
    u = rng.random(shape)
    x = np.where(u < 0.03, lo, np.where(u < 0.06, hi, x))  # the domain's edges
    flat = x.reshape(-1, shape[-1])
    if flat.shape[0] > 1:
        flat[0] = 12345  # a constant row: variance 0, the output is beta
    if flat.shape[0] > 2:
        flat[1] = 0
        flat[1, shape[-1] // 2] = hi  # one outlier
    return flat.reshape(shape).astype(np.int32)


def _run(lib, x, plan):
    import tvm

    out = tvm.runtime.tensor(np.zeros(x.shape, np.int8))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(plan.g), tvm.runtime.tensor(plan.beta_q), out)
    return out.numpy()


@pytest.mark.parametrize("hidden", [768, 384, 40, 7])
def test_scheduled_layernorm_equals_numpy(hidden):
    import tvm

    from ibert_tvm.passes.verify_integer_only import verify_integer_only
    from ibert_tvm.schedules import is_scheduled

    plan = _plan(hidden, hidden)
    _, mod, tgt = _kernel(plan)
    assert is_scheduled(mod["main"]), "the x86 schedule pass did not schedule the LayerNorm"
    assert "T.parallel(" in mod["main"].script()
    verify_integer_only(mod)
    lib = tvm.compile(mod, target=tgt)
    rng = np.random.default_rng(hidden)
    for B, S in SHAPES:
        x = _inputs(rng, (B, S, hidden))
        np.testing.assert_array_equal(_run(lib, x, plan), plan.numpy(x), err_msg=f"B={B} S={S}")


def test_rows_of_rank_one():
    import tvm

    plan = _plan(64, 1)
    _, mod, tgt = _kernel(plan, lead=1)
    assert "T.parallel(" in mod["main"].script()
    lib = tvm.compile(mod, target=tgt)
    rng = np.random.default_rng(1)
    for rows in (1, 5, 130):
        x = _inputs(rng, (rows, 64))
        np.testing.assert_array_equal(_run(lib, x, plan), plan.numpy(x), err_msg=f"rows={rows}")


def test_schedule_applied_and_unscheduled_is_the_same():
    """One parallel loop (the rows) with every block under it; the two partial-sum loops and the
    output loop vectorized; zmm registers in the code; the generic build gives the same bytes."""
    import tvm

    from ibert_tvm.schedules.x86_layernorm import BLOCKS

    plan = _plan(768, 2)
    func, mod, tgt = _kernel(plan)
    script = mod["main"].script()
    assert script.count("T.parallel(") == 1 and script.count("T.vectorized(") == 3, script
    body = script.split("T.parallel(", 1)[1]
    assert all(f'T.sblock("{name}")' in body for name in BLOCKS), "a LayerNorm stage left outside the row loop"
    lib = tvm.compile(mod, target=tgt)
    asm = lib.mod.inspect_source("asm")
    assert "zmm" in asm and "vpmullq" in asm  # int64 lanes on AVX-512
    # y * y (the variance) and n * g are 32 x 32 -> 64-bit products (sign_extend_32 in the TE):
    # vpmuldq; only y * factor and the requantization stay vpmullq (26 vpmullq, 4 vpmuldq before)
    assert asm.count("vpmuldq") > asm.count("vpmullq"), (asm.count("vpmuldq"), asm.count("vpmullq"))
    generic = tvm.compile(tvm.IRModule({"main": func}), target=tgt)
    x = _inputs(np.random.default_rng(3), (2, 45, 768))
    np.testing.assert_array_equal(_run(lib, x, plan), _run(generic, x, plan))


def test_other_funcs_are_left_alone():
    from tvm import te, tirx

    from ibert_tvm.schedules.x86_layernorm import RowLayerNormRule

    S = tirx.Var("seq", "int64")
    x = te.placeholder((2, S), "int32", name="x")
    y = te.compute((2, S), lambda i, j: x[i, j] + 1, name="int_layernorm")  # the name only
    assert RowLayerNormRule().apply(te.create_prim_func([x, y]), _target(), False) is None


# -- the whole model ------------------------------------------------------------------------
def test_tiny_model_layernorm_scheduled_and_bit_exact(quantized_factory, x86_scheduled, x86_compiled):
    """The tiny BERT lowered for x86 (conftest ``x86_scheduled``) and its x86 build (conftest
    ``x86_compiled``, shared with the softmax and VNNI tests)."""
    import tvm

    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.plan import ModelPlan
    from ibert_tvm.schedules import is_scheduled

    qm, _ = quantized_factory("BertModel")
    norms = [(gv.name_hint, f) for gv, f in x86_scheduled.functions.items()
             if isinstance(f, tvm.tirx.PrimFunc) and 'T.sblock("ln_var' in f.script()]
    assert norms, "no LayerNorm PrimFunc in the model"
    bad = [n for n, f in norms if not (is_scheduled(f) and "T.parallel" in f.script() and "T.vectorized" in f.script())]
    assert not bad, bad

    model, plan, d = CompiledModel(x86_compiled), ModelPlan(qm), qm.dims
    rng = np.random.default_rng(12)
    for batch, seq in ((1, 1), (2, 7), (3, 33), (2, 77)):
        inputs = random_batch(rng, batch, seq, family=d["family"], pad_id=d["pad_id"], type_vocab=d["type_vocab"])
        np.testing.assert_array_equal(model.run_ids(inputs), run_golden(plan, **inputs), err_msg=f"{batch}x{seq}")
