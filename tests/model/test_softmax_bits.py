"""Wider i-Softmax outputs (scheme ``softmax_bits`` / ``layer_softmax_bits``, issue 15's fidelity tail).

* scheme: the default stays 8 (and an 8-bit scheme's dict is what it was before the fields
  existed); bad widths and per-layer lists of the wrong length are refused with a message naming
  the field; the width is part of the scheme name (= the artifact identity) and survives
  save/load.
* op: a softmax row sums to at most ``row_sum_bound = 2^b + max_len // 2`` (checked on random
  and adversarial rows); ``P V`` with a uint16 ``P`` is proven with it (the per-element bound
  would refuse ``max_seq = 512``), and refused where even the row sum bound exceeds int32.
* compiled (tiny BERT, 2 layers): a per-layer mix (8, 16) (and, slow, 16-bit softmax in every layer),
  built for ``llvm`` and ``x86`` (a uint16 ``P`` runs as two uint8 byte products,
  ``op.wide_pv``: on x86 every ``P V`` is on ``vpdpbusd``), equal the golden executor bit for bit
  on padded random batches, with zero float ops; ``aarch64`` and ``cuda-t4`` compile it (cuda:
  both layers' ``P V`` on dp4a).
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from conftest import random_batch

SHAPES = ((1, 1), (2, 7), (3, 33), (8, 64))


@pytest.fixture(scope="module")
def smq(scheme_factory):
    """(softmax bits, or per-layer tuple) -> QuantizedModel of the tiny 2-layer BERT."""
    from ibert_tvm.quantization.config import QuantConfig

    def get(bits, arch: str = "BertModel"):
        cfg = (QuantConfig().with_softmax(layer_bits=bits) if isinstance(bits, tuple)
               else QuantConfig().with_softmax(bits=bits))
        return scheme_factory(cfg, arch)

    return get


# -- scheme ---------------------------------------------------------------------------------
def test_default_is_8_bit_and_its_dict_is_unchanged():
    from ibert_tvm.quantization.config import QUANTIZATION, QuantConfig

    c = QuantConfig()
    assert c.softmax_bits == 8 and c.layer_softmax_bits == ()
    assert [c.softmax_bits_for_layer(i, 6) for i in range(6)] == [8] * 6
    for cfg in QUANTIZATION.values():
        d = cfg.to_dict()
        assert "softmax_bits" not in d and "layer_softmax_bits" not in d
        assert QuantConfig.from_dict(d) == cfg
    assert c.with_softmax(8) is c and c.with_softmax().name == "ibert-w8a8+gelu4"


@pytest.mark.parametrize("kw, msg", [
    (dict(softmax_bits=7), "softmax_bits must be an integer in [8, 16]"),
    (dict(softmax_bits=17), "softmax_bits must be an integer in [8, 16]"),
    (dict(softmax_bits=True), "softmax_bits must be an integer in [8, 16]"),
    (dict(softmax_bits=16.0), "softmax_bits must be an integer in [8, 16]"),
    (dict(layer_softmax_bits=(8, 32)), "layer_softmax_bits[1] must be an integer in [8, 16], got 32"),
    (dict(layer_softmax_bits=("16",)), "layer_softmax_bits[0] must be an integer in [8, 16], got '16'"),
])
def test_bad_widths_are_refused(kw, msg):
    from ibert_tvm.quantization.config import QuantConfig

    with pytest.raises(ValueError, match=re.escape(msg)):
        QuantConfig(**kw)


def test_names_and_per_layer_lookup():
    from ibert_tvm.quantization.config import QuantConfig

    c = QuantConfig()
    assert c.with_softmax(16).name == "ibert-w8a8+sm16-gelu4"  # the default GELU's tag after the softmax's
    assert c.with_gelu("ibert").with_softmax(16).name == "ibert-w8a8+sm16"
    mix = c.with_softmax(layer_bits=(8, 8, 8, 8, 8, 16))
    assert mix.name == "ibert-w8a8+sm8_8_8_8_8_16-gelu4"
    assert [mix.softmax_bits_for_layer(i, 6) for i in range(6)] == [8] * 5 + [16]
    with pytest.raises(ValueError, match="layer_softmax_bits has 6 entries, the model has 2"):
        mix.softmax_bits_for_layer(0, 2)
    # weights and softmax tags compose, in either order
    both = c.with_weights(bits=4, groups=128).with_softmax(16)
    assert both.name == "ibert-w8a8+w4g128-sm16-gelu4" == c.with_softmax(16).with_weights(bits=4, groups=128).name
    assert QuantConfig.from_dict(both.to_dict()) == both


def test_artifact_round_trip_keeps_the_width(smq, tmp_path):
    from ibert_tvm.quantization.artifact import QuantizedModel

    for bits in (16, (8, 16)):
        qm = smq(bits)
        qm.save(tmp_path / str(bits))
        back = QuantizedModel.load(tmp_path / str(bits))
        assert back.config == qm.config and back.identity == qm.identity
        assert ("sm16" if bits == 16 else "sm8_16") in back.identity
        assert back.config.softmax_bits_for_layer(1, 2) == 16


def test_calibration_refuses_per_layer_widths_of_the_wrong_length(tiny_factory):
    from ibert_tvm.errors import IBertTVMError
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.quantization.calibrate import check_weight_config
    from ibert_tvm.quantization.config import QuantConfig

    ckpt = load_checkpoint(tiny_factory())
    with pytest.raises(IBertTVMError, match="layer_softmax_bits has 3 entries, the model has 2"):
        check_weight_config(ckpt, QuantConfig().with_softmax(layer_bits=(8, 8, 16)))
    check_weight_config(ckpt, QuantConfig().with_softmax(layer_bits=(8, 16)))


# -- op: the row sum bound and P V's accumulator ----------------------------------------------
@pytest.mark.parametrize("bits", [8, 12, 15, 16])
def test_rows_sum_to_at_most_the_bound(bits):
    from ibert_tvm.op.int_softmax import IntSoftmax

    rng = np.random.default_rng(bits)
    sm = IntSoftmax(0.02, max_len=128, out_bits=bits)
    assert sm.row_sum_bound == (1 << bits) + 64
    worst = 0
    for L in (1, 2, 3, 17, 128):
        # random rows, all-equal rows (every entry rounds up at a tie or just under) and rows of
        # two levels, the shapes that round most entries up
        x = rng.integers(-3000, 3000, size=(64, L)).astype(np.int32)
        x[0] = 0
        x[1, : L // 2] = -40
        mask = np.ones((64, L), dtype=np.int32)
        y = sm.numpy(x.reshape(64, 1, L), mask)
        assert y.dtype == (np.uint8 if bits == 8 else np.uint16)
        s = y.astype(np.int64).sum(axis=-1)
        assert s.max() <= sm.row_sum_bound
        worst = max(worst, int(s.max()))
    assert worst > (1 << bits)  # the rounding excess the bound allows for does occur


def test_pv_accumulator_is_proven_with_the_row_sum():
    from ibert_tvm.op.int_matmul import batch_matmul_np, check_accumulator
    from ibert_tvm.op.int_softmax import IntSoftmax

    sm = IntSoftmax(0.02, max_len=512, out_bits=16)
    assert sm.row_sum_bound == 65536 + 256
    with pytest.raises(ValueError, match="can reach 4294901760"):  # 512 * 65535 * 128: per element
        check_accumulator(512, "uint16", "int8")
    check_accumulator(512, "uint16", "int8", row_sum=sm.row_sum_bound)  # 128 * 65792 < 2^31
    # a sequence so long that even the row sum bound passes int32 (2^25 keys: 128 * (2^16 + 2^24))
    long = IntSoftmax(0.02, max_len=1 << 26, out_bits=16)
    with pytest.raises(ValueError, match=r"rows summing to <= 33619968 .* > 2\^31-1"):
        check_accumulator(long.max_len, "uint16", "int8", row_sum=long.row_sum_bound)
    # the numpy product checks the data against the bound it was given
    a = np.full((1, 4), 40000, dtype=np.uint16)
    b = np.ones((1, 4), dtype=np.int8)
    with pytest.raises(ValueError, match="sums to 160000 > the proven 65538"):
        batch_matmul_np(a, b, row_sum=(1 << 16) + 2)


def test_plan_refuses_a_max_seq_the_pv_accumulator_cannot_hold(smq):
    import copy

    from ibert_tvm.model.plan import ModelPlan

    qm = copy.copy(smq(16))
    qm.dims = {**qm.dims, "max_seq": 1 << 26}
    with pytest.raises(ValueError, match="int32 accumulator over K=67108864 uint16xint8"):
        ModelPlan(qm)


# -- compiled == golden -------------------------------------------------------------------------
def test_plan_and_golden_use_the_widths(smq):
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.plan import ModelPlan

    plan8 = ModelPlan(smq(8))
    plan = ModelPlan(smq((8, 16)))
    assert [L.softmax.out_bits for L in plan.layers] == [8, 16]
    assert [L.softmax.out_dtype for L in plan.layers] == ["uint8", "uint16"]
    # the context requantization takes P's scale 2^-16: the 8-bit plan's multiplier, 8 more shift bits
    c16, c8 = plan.layers[1].ctx, plan8.layers[1].ctx
    assert int(c16.m) == int(c8.m) and int(c16.s) == int(c8.s) + 8
    assert (int(plan.layers[0].ctx.m), int(plan.layers[0].ctx.s)) == (int(plan8.layers[0].ctx.m), int(plan8.layers[0].ctx.s))
    trace: dict = {}
    inputs = random_batch(np.random.default_rng(0), 2, 9)
    run_golden(plan, **inputs, trace=trace)
    assert trace["layer0.p"].dtype == np.uint8 and trace["layer1.p"].dtype == np.uint16
    assert trace["layer1.p"].max() > 255


def test_golden_matches_the_fake_quant_reference(smq):
    """The independent float64 reference (``quantization.fake_quant``, reading the scheme's widths)
    agrees with golden node by node (local mode, as tests/quantization/test_fake_quant.py): the
    uint16 P's scale 2^-16 reaches the context requantization consistently (ctx exact to 1 LSB).
    Measured max |p| error at 16 bits: 36 LSB of 2^-16 (the i-exp polynomial, ~0.14 LSB of 2^-8)."""
    from ibert_tvm.model.golden_trace import trace_golden
    from ibert_tvm.model.plan import ModelPlan
    from ibert_tvm.quantization.fake_quant import fake_quant

    qm = smq((8, 16))
    plan = ModelPlan(qm)
    for seed, (B, S) in enumerate(((1, 7), (3, 16), (4, 33), (2, 64))):
        inp = random_batch(np.random.default_rng(seed), B, S)
        tr = trace_golden(plan, **inp)
        ref = fake_quant(qm, **inp, feed=tr)
        m = inp["attention_mask"].astype(bool)
        err = {}
        for n in ("layer0.p", "layer1.p", "layer0.ctx", "layer1.ctx"):
            d = np.abs(np.asarray(tr[n], np.int64) - ref[n])
            err[n] = int((d.transpose(0, 2, 1, 3)[m] if n.endswith(".p") else d[m]).max())
        assert err["layer0.p"] <= 2 and err["layer1.p"] <= 64 and err["layer0.ctx"] <= 1 and err["layer1.ctx"] <= 1, err


def test_fast_golden_matmuls_take_the_uint16_softmax(smq):
    """qat's float64-BLAS matmuls (the fast golden of ``eval --artifact q/``, QAT, stsb slices) give
    golden's integers with uint16 P too."""
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.plan import ModelPlan
    from ibert_tvm.quantization.qat import _fast_matmuls

    plan = ModelPlan(smq((8, 16)))
    inputs = random_batch(np.random.default_rng(5), 3, 40)
    want = run_golden(plan, **inputs)
    with _fast_matmuls():
        got = run_golden(plan, **inputs)
    np.testing.assert_array_equal(got, want)


def _compile(qm, target, tmp_path):
    from ibert_tvm.deploy.export import compile_quantized

    out, dump = tmp_path / "out", tmp_path / "dump"
    manifest = compile_quantized(qm, out, target=target, database_dir=False, dump_dir=dump, log=lambda *a: None)
    assert manifest["verify"]["module"]["float_ops"] == 0 and manifest["verify"]["code"]["float_ops"] == 0
    return out, (dump / "1_scheduled.py").read_text()


@pytest.mark.parametrize("target", ["llvm", "x86"])
@pytest.mark.parametrize("bits", [
    # 16 bits in every layer: slow. The (8, 16) mix's 16-bit layer takes the same code (the uint16
    # softmax, the two byte products, vpdpbusd on x86) under the same assertions, next to an 8-bit layer.
    pytest.param(16, id="sm16", marks=pytest.mark.slow),
    pytest.param((8, 16), id="sm8_16"),
])
def test_compiled_equals_golden(bits, target, smq, tmp_path):
    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.plan import ModelPlan

    qm = smq(bits)
    out, script = _compile(qm, target, tmp_path)
    assert "uint16" in script
    funcs = re.split(r"\n(?=    @T\.prim_func)", script)
    pv = {m.group(1): p for p in funcs if (m := re.search(r"def (\w*pv_matmul\w*)\(", p))}
    # a uint16 P runs as two uint8 byte products (op.wide_pv), combined as 256 hi + lo: every P V
    # product takes a uint8 P, on x86 on vpdpbusd (the 8-bit layers' schedule)
    assert pv and not any("pv16" in p for p in funcs)
    assert any(re.search(r"def \w*p_high_byte\w*\(", p) for p in funcs) and "pv_combine" in script
    if target == "x86":
        assert all("vpdpbusd" in p for p in pv.values()), sorted(pv)
    model, plan = CompiledModel(out), ModelPlan(qm)
    rng = np.random.default_rng(7)
    for batch, seq in SHAPES:
        inputs = random_batch(rng, batch, seq)
        np.testing.assert_array_equal(model.run_ids(inputs), run_golden(plan, **inputs),
                                      err_msg=f"{target} {bits} {batch}x{seq}")


# -- other targets: compiled, integer-only --------------------------------------------------------
def test_aarch64_compiles_the_uint16_softmax(smq, tmp_path):
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64-linux-gnu-g++ not installed (apt-get install g++-aarch64-linux-gnu)")
    _, script = _compile(smq((8, 16)), "aarch64", tmp_path)
    assert "uint16" in script and "llvm.aarch64.neon.sdot" in script  # the linears keep sdot


def test_cuda_t4_compiles_the_uint16_softmax(smq, tmp_path):
    from ibert_tvm.deploy.export import compile_quantized

    out, dump = tmp_path / "out", tmp_path / "dump"
    m = compile_quantized(smq((8, 16)), out, target="cuda-t4", database_dir=False, dump_dir=dump, log=lambda *a: None)
    assert m["verify"]["module"]["float_ops"] == 0 and m["verify"]["code"]["float_ops"] == 0
    assert "uint16" in (dump / "1_scheduled.py").read_text()
    ptx = m["cuda"]["ptx"]
    if ptx is not None:  # nvcc present: every P V on dp4a, the uint16 layer's two byte products too
        assert ptx["ok"] and ptx["float_ops"] == 0 and not ptx["untensorized_int8_matmuls"], ptx
        assert ptx["int8_matmul_units"].get("dp4a", 0) >= 1, ptx


def test_uint16_operand_needs_the_row_sum_proof():
    """batch_matmul takes a uint16 A only together with a proven row sum bound (numpy and TE)."""
    from tvm import te

    from ibert_tvm.op.int_matmul import batch_matmul_np, batch_matmul_te

    a, b = np.full((1, 3, 4), 60000, np.uint16), np.full((1, 2, 4), -128, np.int8)
    with pytest.raises(ValueError, match="a must have dtype"):
        batch_matmul_np(a, b)
    got = batch_matmul_np(a, b, row_sum=4 * 60000)
    assert (got == 4 * 60000 * -128).all() and got.dtype == np.int32
    pa, vb = te.placeholder((1, 3, 4), "uint16"), te.placeholder((1, 2, 4), "int8")
    with pytest.raises(ValueError, match="a must have dtype"):
        batch_matmul_te(pa, vb)
    batch_matmul_te(pa, vb, row_sum=4 * 60000)
