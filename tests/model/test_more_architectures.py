"""XLM-RoBERTa, CamemBERT and ELECTRA's encoder through import + passes: tiny random models
calibrate, compile (llvm) float-free, equal golden bit for bit on padded batches, and track FP32.
Known architectures we cannot lower are refused before any work, with the reason."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ibert_tvm.errors import IBertTVMError

NEW = ["XLMRobertaModel", "CamembertForSequenceClassification", "ElectraModel"]


@pytest.mark.parametrize("arch", NEW)
def test_new_architecture_compiles_bit_exact_and_tracks_fp32(arch, tiny_factory, calibration_sentences, tmp_path):
    import torch

    from ibert_tvm.deploy.export import compile_quantized
    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.model.plan import ModelPlan
    from ibert_tvm.op.pooling import float_pool
    from ibert_tvm.quantization.calibrate import calibrate, torch_inputs

    ckpt = load_checkpoint(tiny_factory(arch))
    qm = calibrate(ckpt, calibration_sentences)
    manifest = compile_quantized(qm, tmp_path / "out", target="llvm", log=lambda *a: None)
    assert manifest["verify"]["module"]["float_ops"] == 0 and manifest["verify"]["code"]["float_ops"] == 0
    model, plan = CompiledModel(tmp_path / "out"), ModelPlan(qm)
    enc = model.tokenizer(calibration_sentences[:16])
    assert enc["attention_mask"].min() == 0
    got = model.run_ids(enc)
    np.testing.assert_array_equal(got, run_golden(plan, **enc))
    with torch.no_grad():
        res = ckpt.model(**torch_inputs(enc))
    ours = got * plan.out_scale
    if ckpt.head == "classifier":
        ref = res.logits.numpy()
        # a random 2-layer model: nearly input-independent logits (see test_end_to_end)
        assert np.abs(ours - ref).max() < 0.2 * np.abs(ref).max()
        assert (ours.argmax(1) == ref.argmax(1)).mean() >= 0.9
    else:
        ref = float_pool("mean", res.last_hidden_state.double().numpy(), enc["attention_mask"])
        cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() > 0.95, cos.min()


@pytest.mark.parametrize("arch, why", [
    ("AlbertModel", "shared layers"),
    ("DebertaV2Model", "disentangled attention is not supported"),
])
def test_known_unsupported_architecture_is_refused_with_the_reason(arch, why, tmp_path):
    from ibert_tvm.model.hf_loader import load_checkpoint

    (tmp_path / "config.json").write_text(json.dumps({"architectures": [arch], "hidden_size": 32}))
    with pytest.raises(IBertTVMError) as e:
        load_checkpoint(tmp_path)
    assert f"config.json: architectures {arch}: " in str(e.value) and why in str(e.value)


def test_electra_with_factorized_embeddings_is_refused(tiny_factory, tmp_path):
    from ibert_tvm.model.hf_loader import load_checkpoint

    d = tmp_path / "m"
    shutil.copytree(tiny_factory("ElectraModel"), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["embedding_size"] = 16
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(IBertTVMError, match="embedding_size 16 != hidden_size 32"):
        load_checkpoint(d)
