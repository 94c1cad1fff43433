"""ELECTRA's classification head through import + passes: dense -> GELU -> out_proj on the first
token, lowered with the encoder's own i-GELU (op/int_gelu.py; its input wide, its output int8
with per-channel scales folded into out_proj). A tiny random ElectraForSequenceClassification
calibrates, compiles (llvm) float-free, equals golden bit for bit on padded batches, and tracks
FP32."""

from __future__ import annotations

import numpy as np
import pytest
from arch_checks import (
    assert_equals_golden,
    assert_float_free,
    assert_tracks_fp32,
    build,
    run_both,
)

ARCH = "ElectraForSequenceClassification"
SHAPES = [(1, 1), (2, 7), (3, 33), (8, 128)]


@pytest.fixture(scope="module")
def built(tiny_factory, calibration_sentences, tmp_path_factory):
    return build({ARCH: {"num_labels": 3}}, tiny_factory, calibration_sentences, tmp_path_factory)[ARCH]


def test_electra_head_is_i_gelu_and_compiles_float_free(built):
    from ibert_tvm.frontend.points import hook_points
    from ibert_tvm.quantization.artifact import QuantizedModel

    ckpt, qm, d, manifest = built
    assert_float_free(manifest)
    assert manifest["inputs"] == ["input_ids", "attention_mask", "token_type_ids", "position_ids"]
    assert manifest["output"]["shape"] == ["batch", 3]
    assert qm.dims["head_act"] == "gelu" and "head.pre_tanh" not in qm.scales
    assert len(qm.scales["head.gelu"]) == qm.dims["hidden"]  # per-channel, folded into head.out
    assert QuantizedModel.load(d / "q").dims == qm.dims
    hooks = {name: (path, side) for name, path, side in hook_points(ckpt)}
    assert hooks["head.pre_gelu"] == ("classifier.dense", "out")
    assert hooks["head.gelu"] == ("classifier.out_proj", "in")
    assert hooks["head.logits"] == ("classifier.out_proj", "out")
    assert [p for p in manifest["params"] if p.startswith("head.act.")]  # the head's own i-GELU constants


def test_electra_head_compiled_equals_golden_with_padding(built):
    def three_logits(model, plan, inputs, want, rng):
        assert want.shape == (inputs["input_ids"].shape[0], 3)

    _, qm, d, _ = built
    assert_equals_golden(ARCH, qm, d, SHAPES, seed=5, also=three_logits)


def test_electra_head_tracks_fp32(built, calibration_sentences):
    ckpt, qm, d, _ = built
    q, plan, enc, res = run_both(ckpt, qm, d, calibration_sentences)
    assert_tracks_fp32(ARCH, ckpt, q * plan.out_scale, res, enc["attention_mask"])
