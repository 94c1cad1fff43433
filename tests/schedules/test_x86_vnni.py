"""x86 VNNI linears: packing + compensation are exact, the kernel runs on ``vpdpbusd`` and the
whole model stays bit-identical to the golden executor.

* numpy: ``(x + 128) . Wp + b'`` (the kernel's arithmetic on the packed tensors) equals
  ``linear_np`` on random shapes, N/K not multiples of 16/4 (padding), int8 extremes, the
  largest K the int32 proof accepts; the layout is the documented permutation.
* TVM: the TE body, scheduled by the x86 schedule pass (tensorized), built once with symbolic
  rows, equals ``linear_np`` for several row counts (1, 31, 32, 33, ...), with ``vpdpbusd`` in
  its assembly.
* model: a tiny BERT compiled for ``x86`` equals ``run_golden`` bit for bit, and its ``model.so``
  disassembles to ``vpdpbusd``.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from conftest import random_batch
from ibert_tvm.op.int_matmul import linear_np
from ibert_tvm.schedules import x86_vnni as xv

INT32_MAX = 2**31 - 1


def _rand(rng, shape, lo=-128, hi=128):
    return rng.integers(lo, hi, size=shape).astype(np.int8)


def _extremes(rng, arr):
    p = rng.random(arr.shape)
    return np.where(p < 0.2, -128, np.where(p < 0.4, 127, arr)).astype(np.int8)


# -- packing and compensation (numpy) -------------------------------------------------------
@pytest.mark.parametrize("n,k", [(16, 4), (32, 64), (40, 30), (1, 1), (17, 5), (384, 384), (3, 1536)])
def test_packed_arithmetic_equals_linear_np(n, k):
    rng = np.random.default_rng(n * 1000 + k)
    for _ in range(3):
        w = _extremes(rng, _rand(rng, (n, k)))
        b = rng.integers(-(2**30), 2**30 + 1, n).astype(np.int32)
        x = _extremes(rng, _rand(rng, (2, 3, k)))
        p = xv.VnniLinear().pack(w, b)
        assert p["weight"].shape == xv.VnniLinear().param_shapes(n, k)["weight"][0]
        np.testing.assert_array_equal(xv.vnni_linear_np(x, p["weight"], p["bias"]), linear_np(x, w, b))


def test_layout_is_the_documented_permutation_with_zero_padding():
    rng = np.random.default_rng(0)
    w = _rand(rng, (20, 7))  # N=20 -> 32, K=7 -> 8
    wp = xv.pack_weight(w)
    assert wp.shape == (2, 2, 16, 4) and wp.dtype == np.int8
    for no in range(2):
        for ko in range(2):
            for ni in range(16):
                for ki in range(4):
                    n, k = 16 * no + ni, 4 * ko + ki
                    assert wp[no, ko, ni, ki] == (w[n, k] if n < 20 and k < 7 else 0)


def test_compensation_is_exact_big_int():
    rng = np.random.default_rng(1)
    w = _extremes(rng, _rand(rng, (24, 50)))
    b = rng.integers(-(2**30), 2**30 + 1, 24).astype(np.int32)
    got = xv.compensate_bias(w, b)
    want = [int(b[n]) - 128 * sum(int(v) for v in w[n]) for n in range(24)]
    assert got.dtype == np.int32 and got.tolist() == want


def test_largest_k_with_worst_signs_does_not_wrap():
    """K = 65535, x = -128, W = -128, b = 2^30: the largest sum the int32 proof admits."""
    k = 65535
    x = np.full((1, k), -128, np.int8)
    w = np.full((16, k), -128, np.int8)
    b = np.full(16, 2**30, np.int32)
    p = xv.VnniLinear().pack(w, b)
    want = k * 128 * 128 + 2**30
    assert want <= INT32_MAX
    np.testing.assert_array_equal(xv.vnni_linear_np(x, p["weight"], p["bias"]), np.full((1, 16), want))
    np.testing.assert_array_equal(linear_np(x, w, b), np.full((1, 16), want))
    with pytest.raises(ValueError, match="2\\^31-1"):
        xv.check_vnni_accumulator(k + 1)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="int8"):
        xv.pack_weight(np.zeros((4, 4), np.int16))
    with pytest.raises(ValueError, match="bias"):
        xv.compensate_bias(np.zeros((4, 4), np.int8), np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="2\\^30"):
        xv.compensate_bias(np.zeros((1, 4), np.int8), np.array([2**30 + 1], np.int32))


# -- the TVM kernel -------------------------------------------------------------------------
def _build_kernel(k, n, lead_rank):
    import tvm
    from tvm import te, tirx

    lead = [tirx.Var(f"d{i}", "int64") for i in range(lead_rank)]
    shapes = xv.VnniLinear().param_shapes(n, k)
    x = te.placeholder((*lead, tirx.IntImm("int64", k)), "int8", name="x")
    w = te.placeholder([tirx.IntImm("int64", d) for d in shapes["weight"][0]], "int8", name="w")
    b = te.placeholder((tirx.IntImm("int64", n),), "int32", name="b")
    out = xv.VnniLinear().te(x, weight=w, bias=b)
    func = te.create_prim_func([x, w, b, out])
    tgt = tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2})
    sch = xv.VnniLinearRule().apply(func, tgt, False)
    assert sch is not None, "the VNNI linear rule found no VNNI block"
    scheduled = sch.mod["main"]
    lib = tvm.compile(tvm.IRModule({"main": scheduled.with_attr("global_symbol", "main")}), target=tgt)
    return lib


@pytest.mark.parametrize("k,n,lead_rank", [(64, 48, 2), (30, 40, 1)])
def test_tensorized_kernel_equals_linear_np(k, n, lead_rank):
    import tvm

    lib = _build_kernel(k, n, lead_rank)
    assert "vpdpbusd" in lib.mod.inspect_source("asm")
    rng = np.random.default_rng(k + n)
    rows = [(1, 1), (1, 31), (1, 32), (3, 11), (2, 33), (4, 64)] if lead_rank == 2 else [(1,), (32,), (33,), (70,)]
    for lead in rows:
        w = _extremes(rng, _rand(rng, (n, k)))
        b = rng.integers(-(2**30), 2**30 + 1, n).astype(np.int32)
        x = _extremes(rng, _rand(rng, (*lead, k)))
        p = xv.VnniLinear().pack(w, b)
        out = tvm.runtime.tensor(np.zeros((*lead, n), np.int32))
        lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(p["weight"]), tvm.runtime.tensor(p["bias"]), out)
        np.testing.assert_array_equal(out.numpy(), linear_np(x, w, b), err_msg=f"rows {lead}")


# -- epilogue-fused kernels: the epilogue runs inside the GEMM tile ---------------------------
def _build_fused(kind, k, n, seed, rule=None, target=None):
    """The model's FFN-in (linear -> 16-bit requantization -> i-GELU + int8 requantization) or
    attention-out / FFN-out (linear -> residual add) as one PrimFunc with symbolic batch x seq,
    scheduled by the x86 rule; returns ``(lib, scheduled func, run(batch, seq) -> (got, want))``."""
    import tvm
    from tvm import te, tirx

    from ibert_tvm.op.int_gelu import IntGELU
    from ibert_tvm.op.requantize import Requantize
    from ibert_tvm.op.residual_add import ResidualAdd

    rng = np.random.default_rng(seed)
    i64 = lambda v: tirx.IntImm("int64", v)  # noqa: E731
    lead = [tirx.Var("batch", "int64"), tirx.Var("seq", "int64")]
    strat = xv.VnniLinear()
    x = te.placeholder((*lead, i64(k)), "int8", name="x")
    w = te.placeholder([i64(d) for d in strat.param_shapes(n, k)["weight"][0]], "int8", name="w")
    b = te.placeholder((i64(n),), "int32", name="b")
    vec = lambda name: te.placeholder((i64(n),), "int32", name=name)  # noqa: E731
    acc = strat.te(x, w, b)
    w_np = _extremes(rng, _rand(rng, (n, k)))
    b_np = rng.integers(-(2**24), 2**24, n).astype(np.int32)
    packed = strat.pack(w_np, b_np)
    ratio = rng.uniform(0.5, 2.0, n) / (128 * np.sqrt(k) * 16)
    if kind == "gelu":
        rq = Requantize(ratio * 2**8, in_bits=32, out_bits=16)
        gelu = IntGELU(2.0**-10, in_bits=16, out_scale_q=rng.uniform(0.02, 0.05, n))
        ts = [vec("m"), vec("s"), vec("gm"), vec("gs")]
        out = gelu.te_q(rq.te(acc, ts[0], ts[1]), ts[2], ts[3])
        consts = [rq.m, rq.s, gelu.params()["m"], gelu.params()["s"]]
        ref = lambda xs, r: gelu.numpy_q(rq.numpy(linear_np(xs, w_np, b_np)))  # noqa: E731
    else:
        ra = ResidualAdd(ratio * 2**10, rng.uniform(0.5, 2.0, n) * 2**6, out_bits=24)
        ts = [te.placeholder((*lead, i64(n)), "int8", name="r"), vec("m"), vec("s"), vec("mb"), vec("sb")]
        out = ra.te(acc, *ts)
        p = ra.params()
        consts = [p["m"], p["s"], p["mb"], p["sb"]]
        ref = lambda xs, r: ra.numpy(linear_np(xs, w_np, b_np), r)  # noqa: E731
    func = te.create_prim_func([x, w, b, *ts, out])
    tgt = target or tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2})
    with tgt:
        sch = (rule or xv.VnniLinearRule()).apply(func, tgt, False)
    assert sch is not None, "the rule did not apply"
    scheduled = sch.mod["main"]
    lib = tvm.compile(tvm.IRModule({"main": scheduled.with_attr("global_symbol", "main")}), target=tgt)

    def run(batch, seq):
        xs = _extremes(rng, _rand(rng, (batch, seq, k)))
        r = _extremes(rng, _rand(rng, (batch, seq, n)))
        args = [xs, packed["weight"], packed["bias"], *([r] if kind == "residual" else []), *consts]
        want = ref(xs, r)
        got = tvm.runtime.tensor(np.zeros(want.shape, want.dtype))
        lib["main"](*[tvm.runtime.tensor(a) for a in args], got)
        return got.numpy(), want

    return lib, scheduled, run


# the last case's weight (768 x 1408 bytes) is over CHANNELS_FIRST_BYTES: channel tiles outermost
@pytest.mark.parametrize("kind,k,n", [("gelu", 64, 192), ("residual", 96, 64), ("gelu", 40, 48), ("residual", 768, 1408)])
def test_epilogue_fused_kernel_runs_in_the_tile_and_equals_numpy(kind, k, n):
    """FFN-in (i-GELU) and attention-out (residual add) kernels: the epilogue is inlined into one
    block computed per GEMM tile (no [M, N] int32 intermediate left), and the integers equal the
    ops' own numpy references (linear_np -> Requantize / IntGELU / ResidualAdd) bit for bit, for
    row counts below, at and across the 32-row tile."""
    from tvm import s_tir

    lib, scheduled, run = _build_fused(kind, k, n, seed=k * n)
    sch = s_tir.Schedule(scheduled)
    with pytest.raises(Exception):  # noqa: B017 - the + bias block was inlined into the epilogue
        sch.get_sblock(xv.OUT_BLOCK)
    assert "linear_bias_intermediate" not in scheduled.script()  # no [M, N] int32 pass left
    assert "vpdpbusd" in lib.mod.inspect_source("asm")
    # the parallel loop fuses (row tiles, channel tiles), or (channel tiles, row tiles) for a
    # weight over CHANNELS_FIRST_BYTES (the epilogue's loops: ax0 rows, ax1 channels)
    order = re.findall(r"for (\w+) in T\.parallel", scheduled.script())[-1]
    assert order == ("ax1_0_ax0_0_fused" if n * k > xv.CHANNELS_FIRST_BYTES else "ax0_0_ax1_0_fused"), order
    for batch, seq in [(1, 1), (1, 31), (1, 32), (2, 7), (3, 33), (4, 64)]:
        got, want = run(batch, seq)
        np.testing.assert_array_equal(got, want, err_msg=f"{kind} {batch}x{seq}")


# -- the whole model ------------------------------------------------------------------------
def test_x86_linears_fuse_with_their_epilogues(x86_fused):
    """The row regrouping would make the linear 'opaque'; its declared pattern keeps fusion
    (conftest ``x86_fused``: the tiny BERT's x86 integer module through ``pipeline.fuse``)."""
    import tvm

    names = [gv.name_hint for gv, f in x86_fused.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert not [n for n in names if n.startswith("linear")], names
    assert any(n.startswith("fused_linear") and "requantize" in n for n in names)


def disassemble(so) -> str:
    if shutil.which("objdump") is None:
        pytest.fail("objdump is needed (apt-get install binutils)")
    return subprocess.run(["objdump", "-d", str(so)], capture_output=True, text=True, check=True).stdout


def check_bit_exact(qm, out, shapes=((1, 1), (2, 7), (3, 33), (8, 64))):
    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.plan import ModelPlan

    model, plan, d = CompiledModel(out), ModelPlan(qm), qm.dims
    rng = np.random.default_rng(7)
    for batch, seq in shapes:
        inputs = random_batch(rng, batch, seq, family=d["family"], pad_id=d["pad_id"], type_vocab=d["type_vocab"])
        np.testing.assert_array_equal(model.run_ids(inputs), run_golden(plan, **inputs), err_msg=f"{batch}x{seq}")


def test_tiny_model_on_x86_is_bit_exact_and_uses_vpdpbusd(quantized_factory, x86_compiled):
    """The x86 build of the tiny BERT (conftest ``x86_compiled``, shared with the softmax and
    LayerNorm tests)."""
    import json

    qm, _ = quantized_factory("BertModel")
    manifest = json.loads((x86_compiled / "manifest.json").read_text())
    assert manifest["target"] == "x86" and manifest["linear_strategy"] == "x86-vnni"
    check_bit_exact(qm, x86_compiled)
    assert "vpdpbusd" in disassemble(x86_compiled / "model.so")
