"""Golden agrees with an independent float64 fake-quant reference at every node; a planted wrong
scale makes them disagree.

Golden and the compiled module read the same folded constants (``model/plan.py``), so a wrong
scale there passes every bit-exact test. ``quantization.fake_quant`` recomputes each node from
the artifact's *recorded* scales (dequantize, float op, quantize); ``model.golden_trace`` exposes
golden's node values. In *local* mode (each reference node fed golden's integer inputs) the two
agree within ``LOCAL_LSB`` at every node; measured maxima (BertModel / RobertaModel /
BertForSequenceClassification, tiny 2x32 models, batches (1,7) (3,16) (4,33) (2,64), real rows):

    node                measured   asserted   (LSB of the node's own scale, per channel if per-channel)
    embeddings.sum         1          2       three tables requantized separately, then summed
    *.ln (all 5 kinds)     1          2       i-LayerNorm: integer sqrt, dyadic output
    q / k / v / ctx        0          1       one dyadic requantization of an exact accumulator
    p (softmax)            1          2       i-exp polynomial, 2^-8 output
    res1 / res2            1          2       two requantizations, then summed (24-bit)
    inter                  0          1
    gelu                   8         12       i-GELU's second-order erf polynomial
    pooled                 0          1       exact integer mean, rounded
    head.pre_tanh          0          1
    head.tanh              1          2       i-exp based tanh
    head.logits            0          1

In *chained* mode (the reference runs on its own values) errors accumulate through the two
layers; measured max: 13 LSB at 8-bit nodes (gelu), 5 at LayerNorm outputs, and at the wide
nodes 0.9% (res), 1.3% (inter), 2.2% (pre_tanh), 2.6% (logits), 1.8% (pooled) of the node's full
scale 2^(b-1) - 1. Asserted: <= 16 LSB at 8-bit nodes, <= 5% of full scale at wide ones.

Planted errors (the wrong constant is in what golden/compiled read, the reference uses the right
scale) that fail the local check at the named node: ``layer1.res1`` x1.25 (at ``layer1.res1``),
``layer0.q`` x1.25 (at ``layer0.q``), ``IntTanh.out_scale`` x1.25 (at ``head.logits``), and the
``head.out`` input scale of calibration disagreeing with ``IntTanh`` (at ``head.tanh``).
Measured on seeded batches: res1 off by ~6.4e5 LSB (bound 2), q by 22 LSB (bound 1; then p by 5),
IntTanh.out_scale: logits off by ~1.8e8 LSB (bound 1), calibration's tanh scale: head.tanh off by
20 LSB (bound 2).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import random_batch
from ibert_tvm.model.golden import run_golden
from ibert_tvm.model.golden_trace import trace_golden
from ibert_tvm.model.plan import ModelPlan
from ibert_tvm.op.pooling import FRAC_BITS
from ibert_tvm.quantization.fake_quant import fake_quant

ARCHS = ["BertModel", "RobertaModel", "BertForSequenceClassification"]
SHAPES = [(1, 7), (3, 16), (4, 33), (2, 64)]

# Local mode bound, in LSB of the node's scale (see the module docstring for the measured maxima).
LOCAL_LSB = {"embeddings.sum": 2, "ln": 2, "q": 1, "k": 1, "v": 1, "ctx": 1, "p": 2, "res1": 2, "res2": 2,
             "inter": 1, "gelu": 12, "pooled": 1, "head.pre_tanh": 1, "head.tanh": 2, "head.logits": 1}
CHAINED_LSB_8BIT = 16
CHAINED_FULL_SCALE = 0.05
PLANT = 1.25  # a wrong scale: the true one times 1.25


def _kind(node: str) -> str:
    if node.startswith(("embeddings.sum", "head.", "pooled")):
        return node
    last = node.rsplit(".", 1)[1]
    return "ln" if last.startswith("ln") else last


def _inputs(qm, seed: int, B: int, S: int):
    d = qm.dims
    return random_batch(np.random.default_rng(seed), B, S, family=d["family"], pad_id=d["pad_id"],
                        type_vocab=d["type_vocab"])


def _errors(golden: dict, ref: dict, mask: np.ndarray) -> dict[str, int]:
    """node -> max |golden - ref| (exact integers) over the real (unpadded) rows."""
    m = mask.astype(bool)
    out = {}
    for node, v in ref.items():
        diff = np.abs(np.asarray(golden[node], np.int64) - v)
        if node.endswith(".p"):  # [B, n, S, S]: padded query rows out (padded keys are 0 in both)
            diff = diff.transpose(0, 2, 1, 3)[m]
        elif diff.ndim == 3:  # [B, S, C]
            diff = diff[m]
        out[node] = int(diff.max())
    return out


def _local_errors(qm_ref, plan, inp) -> dict[str, int]:
    trace = trace_golden(plan, **inp)
    return _errors(trace, fake_quant(qm_ref, **inp, feed=trace), inp["attention_mask"])


def _over(errs: dict[str, int]) -> dict[str, int]:
    return {n: e for n, e in errs.items() if e > LOCAL_LSB[_kind(n)]}


@pytest.mark.parametrize("arch", ARCHS)
def test_trace_is_golden(quantized_factory, arch):
    """trace_golden repeats run_golden's calls: its output is golden's, bit for bit."""
    qm, _ = quantized_factory(arch)
    plan = ModelPlan(qm)
    for seed, (B, S) in enumerate(SHAPES[:2]):
        inp = _inputs(qm, seed, B, S)
        t = trace_golden(plan, **inp)
        np.testing.assert_array_equal(t["output"], run_golden(plan, **inp))
        assert t["output"].dtype == run_golden(plan, **inp).dtype


@pytest.mark.parametrize("arch", ARCHS)
def test_golden_matches_fake_quant_at_every_node(quantized_factory, arch):
    qm, _ = quantized_factory(arch)
    plan = ModelPlan(qm)
    worst: dict[str, int] = {}
    for seed, (B, S) in enumerate(SHAPES):
        inp = _inputs(qm, seed, B, S)
        for n, e in _local_errors(qm, plan, inp).items():
            worst[n] = max(worst.get(n, 0), e)
        # the pooled embedding's last requantization (per-channel s_h -> plan.out_scale)
        if plan.head != "classifier" and plan.pool is not None:
            t = trace_golden(plan, **inp)
            s_pool = np.asarray(qm.scale(f"layer{qm.dims['layers'] - 1}.ln2")) / (1 << FRAC_BITS)
            want = np.floor(t["pooled"] * s_pool / plan.out_scale + 0.5)
            assert np.abs(t["output"] - want).max() <= 1
    n_layers = qm.dims["layers"]
    assert len(worst) == 2 + 11 * n_layers + (3 if qm.dims["head"] == "classifier" else 1)
    assert not _over(worst), f"nodes beyond the LSB bound: {_over(worst)} (all: {worst})"


@pytest.mark.parametrize("arch", ARCHS)
def test_chained_fake_quant_stays_close(quantized_factory, arch):
    """The reference on its own values (errors accumulate through the layers) stays within
    CHAINED_LSB_8BIT at 8-bit nodes and CHAINED_FULL_SCALE of full scale at the wide ones."""
    qm, _ = quantized_factory(arch)
    plan, cfg = ModelPlan(qm), qm.config
    wide = {"embeddings.sum": cfg.residual_bits, "res1": cfg.residual_bits, "res2": cfg.residual_bits,
            "inter": cfg.gelu_in_bits, "head.pre_tanh": cfg.tanh_in_bits, "head.logits": cfg.logits_bits,
            "pooled": 8 + 8}  # int8 mean with FRAC_BITS = 8 fractional bits
    for seed, (B, S) in enumerate(SHAPES):
        inp = _inputs(qm, seed, B, S)
        errs = _errors(trace_golden(plan, **inp), fake_quant(qm, **inp), inp["attention_mask"])
        for n, e in errs.items():
            bits = wide.get(_kind(n))
            limit = CHAINED_LSB_8BIT if bits is None else CHAINED_FULL_SCALE * ((1 << (bits - 1)) - 1)
            assert e <= limit, f"{arch} {n}: chained error {e} > {limit}"


def _with_scale(qm, name: str, factor: float):
    """A copy of ``qm`` with scale ``name`` multiplied by ``factor`` (tensors shared)."""
    scales = dict(qm.scales)
    s = scales[name]
    scales[name] = [x * factor for x in s] if isinstance(s, list) else s * factor
    return dataclasses.replace(qm, scales=scales)


@pytest.mark.parametrize("arch, point", [("BertModel", "layer1.res1"), ("RobertaModel", "layer0.q"),
                                         ("BertForSequenceClassification", "layer1.res1")])
def test_planted_wrong_scale_fails(quantized_factory, arch, point):
    """Golden runs a plan folded from a wrong scale; the reference keeps the right one. The check
    fails at that node (nodes downstream may fail too: they dequantize golden's codes, which are
    in the wrong units, e.g. ``layer0.p`` after ``layer0.q``), and every node upstream passes."""
    qm, _ = quantized_factory(arch)
    inp = _inputs(qm, 7, 3, 16)
    assert not _over(_local_errors(qm, ModelPlan(qm), inp))
    errs = _local_errors(qm, ModelPlan(_with_scale(qm, point, PLANT)), inp)
    bad = _over(errs)
    assert point in bad, f"planted {point} x{PLANT} not caught: {errs}"
    order = list(errs)
    assert not {n for n in bad if order.index(n) < order.index(point)}, bad


def test_planted_tanh_out_scale_fails(quantized_factory, monkeypatch):
    """``IntTanh.out_scale`` (what plan.py folds into head.out's requantization) disagreeing with
    the 1/127 calibration quantized head.out's bias at: caught at head.logits."""
    import ibert_tvm.model.plan as plan_mod

    qm, _ = quantized_factory("BertForSequenceClassification")
    inp = _inputs(qm, 8, 4, 16)
    assert not _over(_local_errors(qm, ModelPlan(qm), inp))

    class WrongTanh(plan_mod.IntTanh):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.out_scale *= PLANT

    monkeypatch.setattr(plan_mod, "IntTanh", WrongTanh)
    errs = _local_errors(qm, ModelPlan(qm), inp)
    assert set(_over(errs)) == {"head.logits"}, errs


def test_planted_calibration_tanh_scale_fails(quantized_factory):
    """Calibration recording another tanh output scale than ``IntTanh``'s 1/127 (as if its
    ``1.0 / 127.0`` literal were wrong): plan.py ignores ``head.out.input`` and folds
    ``IntTanh.out_scale``, so golden passes every bit-exact test; the reference quantizes tanh at
    the recorded scale and disagrees at head.tanh."""
    qm, _ = quantized_factory("BertForSequenceClassification")
    inp = _inputs(qm, 9, 4, 16)
    wrong = _with_scale(qm, "head.out.input", PLANT)
    errs = _local_errors(wrong, ModelPlan(wrong), inp)
    assert "head.tanh" in _over(errs), errs
