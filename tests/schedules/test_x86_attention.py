"""x86 attention products on ``vpdpbusd`` (schedules/x86_attention.py): the scheduled ``Q K^T``
and ``P V`` kernels, built once with symbolic batch and sequence, equal ``batch_matmul_np`` for
many sequence lengths (padding to 4/16 rows), int8 extremes and full-range uint8 P; the schedule
really applied (``tirx.is_scheduled``, ``vpdpbusd`` in the assembly) and the code is integer-only.
The whole tiny model on x86 (== golden) is covered by test_x86_vnni.py, whose build now runs it.
"""

from __future__ import annotations

import numpy as np
import pytest

from ibert_tvm.op.int_matmul import batch_matmul_np, batch_matmul_te

HEADS = 12
SEQS = (1, 7, 32, 77, 128)


def _kernel(kind: str, d: int, p_dtype: str = "uint8", epilogue=None):
    """The PrimFunc as the model fuses it: symbolic batch/seq, ``batch_matmul_te``, through the
    x86 schedule pass (the one ``compile --target x86`` applies)."""
    import tvm
    from tvm import te, tirx

    from ibert_tvm.schedules import schedule_pass

    B, S = tirx.Var("batch", "int64"), tirx.Var("seq", "int64")
    h, dd = tirx.IntImm("int64", HEADS), tirx.IntImm("int64", d)
    if kind == "qk":
        a = te.placeholder((B, h, S, dd), "int8", name="q")
        b = te.placeholder((B, h, S, dd), "int8", name="k")
        out = batch_matmul_te(a, b)
    else:
        a = te.placeholder((B, h, S, S), p_dtype, name="p")
        b = te.placeholder((B, h, dd, S), "int8", name="vt")
        out = batch_matmul_te(a, b, max_k=512)
    if epilogue is not None:
        out = epilogue(out)
    func = te.create_prim_func([a, b, out]).with_attr("global_symbol", "main")
    tgt = tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2})
    mod = schedule_pass("x86", tgt)(tvm.IRModule({"main": func}))
    return mod, tgt


def _operands(kind, rng, B, S, d, p_dtype="uint8"):
    def s8(shape):
        x = rng.integers(-128, 128, size=shape)
        u = rng.random(shape)
        return np.where(u < 0.15, -128, np.where(u < 0.25, 127, x)).astype(np.int8)

    if kind == "qk":
        return s8((B, HEADS, S, d)), s8((B, HEADS, S, d))
    hi = 255 if p_dtype == "uint8" else 256
    p = rng.integers(0, hi + 1, size=(B, HEADS, S, S))
    p = np.where(rng.random(p.shape) < 0.2, hi, p).astype(p_dtype)
    return p, s8((B, HEADS, d, S))


@pytest.mark.parametrize("kind,d", [("qk", 32), ("pv", 32), ("qk", 64), ("pv", 64), ("qk", 8), ("pv", 8), ("qk", 6)])
def test_scheduled_attention_kernel_equals_numpy(kind, d):
    import tvm

    from ibert_tvm.passes.verify_integer_only import verify_integer_only
    from ibert_tvm.schedules import is_scheduled

    mod, tgt = _kernel(kind, d)
    assert is_scheduled(mod["main"]), "the x86 schedule pass did not schedule the attention product"
    if kind == "qk":  # the bare product: (Q + 128) K^T with the K row sums as the accumulators' init
        assert "k_rowsum" in mod["main"].script()
    lib = tvm.compile(mod, target=tgt)
    assert "vpdpbusd" in lib.mod.inspect_source("asm")
    verify_integer_only(mod)
    rng = np.random.default_rng(d + len(kind))
    for B, S in [(1, s) for s in SEQS] + [(8, 32), (3, 77)]:
        a, b = _operands(kind, rng, B, S, d)
        out = tvm.runtime.tensor(np.zeros((B, HEADS, S, b.shape[2]), np.int32))
        lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), out)
        np.testing.assert_array_equal(out.numpy(), batch_matmul_np(a, b), err_msg=f"{kind} B={B} S={S}")


def test_worst_case_sums_do_not_wrap():
    """All -128 (Q K^T: the largest compensated sum), P = 255 x V = -128 at S = 128."""
    import tvm

    for kind in ("qk", "pv"):
        mod, tgt = _kernel(kind, 32)
        lib = tvm.compile(mod, target=tgt)
        B, S = 1, 128
        if kind == "qk":
            a = np.full((B, HEADS, S, 32), -128, np.int8)
            b = np.full((B, HEADS, S, 32), -128, np.int8)
        else:
            a = np.full((B, HEADS, S, S), 255, np.uint8)
            b = np.full((B, HEADS, 32, S), -128, np.int8)
        out = tvm.runtime.tensor(np.zeros((B, HEADS, S, b.shape[2]), np.int32))
        lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), out)
        np.testing.assert_array_equal(out.numpy(), batch_matmul_np(a, b))


def test_other_dtypes_keep_the_generic_schedule():
    """16-bit softmax outputs (uint16 P) are not ``vpdpbusd`` operands: the block is left as is."""
    import tvm
    from tvm import te, tirx

    from ibert_tvm.schedules.x86_attention import BLOCK, VnniAttentionRule

    S = tirx.Var("seq", "int64")
    h, d = tirx.IntImm("int64", HEADS), tirx.IntImm("int64", 32)
    p = te.placeholder((1, h, S, S), "uint16", name="p")
    vt = te.placeholder((1, h, d, S), "int8", name="vt")
    k = te.reduce_axis((0, S), name="k")
    out = te.compute((1, h, S, d), lambda b, n, i, j: te.sum(p[b, n, i, k].astype("int32") * vt[b, n, j, k].astype("int32"), axis=k), name=BLOCK)
    func = te.create_prim_func([p, vt, out])
    assert VnniAttentionRule().apply(func, tvm.target.Target({"kind": "llvm"}), False) is None


MULT, SHIFT = 71933249, 38  # a requantize as the model fuses it into P V (int64 multiply-shift, clip)


def _requantize_te(acc):
    from tvm import te, tirx

    def f(*idx):
        x = acc(*idx).astype("int64") * tirx.IntImm("int64", MULT) + tirx.IntImm("int64", 1 << (SHIFT - 1))
        return tirx.max(tirx.min(x >> tirx.IntImm("int64", SHIFT), tirx.IntImm("int64", 127)), tirx.IntImm("int64", -128)).astype("int8")

    return te.compute(acc.shape, f, name="requantize")


def _requantize_np(acc):
    return np.clip((acc.astype(np.int64) * MULT + (1 << (SHIFT - 1))) >> SHIFT, -128, 127).astype(np.int8)


@pytest.mark.parametrize("d", [32, 64])
def test_pv_with_fused_requantize_equals_numpy(d):
    """``P V`` + the requantize epilogue (computed per register tile, from the accumulators)."""
    import tvm

    from ibert_tvm.schedules import is_scheduled

    mod, tgt = _kernel("pv", d, epilogue=_requantize_te)
    assert is_scheduled(mod["main"])
    lib = tvm.compile(mod, target=tgt)
    rng = np.random.default_rng(d)
    for B, S in [(1, 1), (2, 7), (1, 16), (3, 77), (2, 128), (1, 130)]:
        p, vt = _operands("pv", rng, B, S, d)
        out = tvm.runtime.tensor(np.zeros((B, HEADS, S, d), np.int8))
        lib["main"](tvm.runtime.tensor(p), tvm.runtime.tensor(vt), out)
        np.testing.assert_array_equal(out.numpy(), _requantize_np(batch_matmul_np(p, vt)), err_msg=f"B={B} S={S}")


def test_qk_with_an_epilogue_keeps_the_s8s8_intrinsic():
    """``Q K^T`` fused with an element-wise epilogue is not the bare product: it keeps the s8 x s8
    intrinsic (``q ^ 0x80`` and the compensation in the instruction sequence); still exact."""
    import tvm

    from ibert_tvm.schedules import is_scheduled

    mod, tgt = _kernel("qk", 32, epilogue=_requantize_te)
    assert is_scheduled(mod["main"]) and "k_rowsum" not in mod["main"].script()
    lib = tvm.compile(mod, target=tgt)
    rng = np.random.default_rng(5)
    for B, S in [(1, 1), (2, 7), (3, 77), (1, 128)]:
        q, k = _operands("qk", rng, B, S, 32)
        out = tvm.runtime.tensor(np.zeros((B, HEADS, S, S), np.int8))
        lib["main"](tvm.runtime.tensor(q), tvm.runtime.tensor(k), out)
        np.testing.assert_array_equal(out.numpy(), _requantize_np(batch_matmul_np(q, k)), err_msg=f"B={B} S={S}")
