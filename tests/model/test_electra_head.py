"""ELECTRA's classification head through import + passes: dense -> GELU -> out_proj on the first
token, lowered with the encoder's own i-GELU (op/int_gelu.py; its input wide, its output int8
with per-channel scales folded into out_proj). A tiny random ElectraForSequenceClassification
calibrates, compiles (llvm) float-free, equals golden bit for bit on padded batches, and tracks
FP32."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import random_batch

ARCH = "ElectraForSequenceClassification"
SHAPES = [(1, 1), (2, 7), (3, 33), (8, 128)]


@pytest.fixture(scope="module")
def built(tiny_factory, calibration_sentences, tmp_path_factory):
    from ibert_tvm.deploy.export import compile_quantized
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.quantization.calibrate import calibrate

    ckpt = load_checkpoint(tiny_factory(ARCH, num_labels=3))
    qm = calibrate(ckpt, calibration_sentences)
    d = tmp_path_factory.mktemp(ARCH)
    qm.save(d / "q")
    manifest = compile_quantized(qm, d / "out", target="llvm", log=lambda *a: None)
    return ckpt, qm, d, manifest


def test_electra_head_is_i_gelu_and_compiles_float_free(built):
    from ibert_tvm.frontend.points import hook_points
    from ibert_tvm.quantization.artifact import QuantizedModel

    ckpt, qm, d, manifest = built
    assert manifest["verify"]["module"]["float_ops"] == 0 and manifest["verify"]["code"]["float_ops"] == 0
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
    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.plan import ModelPlan

    _, qm, d, _ = built
    plan, model = ModelPlan(qm), CompiledModel(d / "out")
    d_ = qm.dims
    rng = np.random.default_rng(5)
    for batch, seq in SHAPES:
        inputs = random_batch(rng, batch, seq, family=d_["family"], pad_id=d_["pad_id"], type_vocab=d_["type_vocab"])
        got, want = model.run_ids(inputs), run_golden(plan, **inputs)
        assert got.dtype == np.int32 and want.dtype == np.int32 and got.shape == (batch, 3)
        np.testing.assert_array_equal(got, want, err_msg=f"batch={batch} seq={seq}")


def test_electra_head_tracks_fp32(built, calibration_sentences):
    import torch

    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.model.plan import ModelPlan
    from ibert_tvm.quantization.calibrate import torch_inputs

    ckpt, qm, d, _ = built
    model, plan = CompiledModel(d / "out"), ModelPlan(qm)
    enc = model.tokenizer(calibration_sentences[:16])
    assert enc["attention_mask"].min() == 0
    ours = model.run_ids(enc) * plan.out_scale
    with torch.no_grad():
        ref = ckpt.model(**torch_inputs(enc)).logits.numpy()
    # a random 2-layer model: nearly input-independent logits (the bounds of test_more_architectures)
    err, agree = np.abs(ours - ref).max() / np.abs(ref).max(), (ours.argmax(1) == ref.argmax(1)).mean()
    print(f"{ARCH}: max |err| / max |logit| = {err:.4f}, argmax agreement {agree:.3f}")
    assert err < 0.2 and agree >= 0.9

