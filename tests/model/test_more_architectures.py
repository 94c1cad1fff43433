"""XLM-RoBERTa, CamemBERT and ELECTRA's encoder through import + passes: tiny random models
calibrate, compile (llvm) float-free, equal golden bit for bit on padded batches, and track FP32.
Known architectures we cannot lower are refused before any work, with the reason."""

from __future__ import annotations

import json

import numpy as np
import pytest
from arch_checks import assert_float_free, assert_tracks_fp32, run_both

from ibert_tvm.errors import IBertTVMError

NEW = ["XLMRobertaModel", "CamembertForSequenceClassification", "ElectraModel"]


@pytest.mark.parametrize("arch", NEW)
def test_new_architecture_compiles_bit_exact_and_tracks_fp32(arch, tiny_factory, calibration_sentences, tmp_path):
    _compiles_bit_exact_and_tracks_fp32(tiny_factory(arch), calibration_sentences, tmp_path)


@pytest.mark.parametrize("arch", ["ElectraModel", "ElectraForSequenceClassification"])
def test_electra_with_factorized_embeddings_compiles(arch, tiny_factory, calibration_sentences, tmp_path):
    """embedding_size 16 < hidden_size 32: embeddings_project (E -> H) is one more integer linear.
    The classifier has 3 labels, as in test_electra_head: the 2-label seed-0 random head's logits
    differ by ~0.007, below the quantization error, and its argmax is a coin flip."""
    kw = dict(num_labels=3) if "Classification" in arch else {}
    qm = _compiles_bit_exact_and_tracks_fp32(tiny_factory(arch, embedding_size=16, **kw), calibration_sentences,
                                             tmp_path)
    assert qm.dims["embedding_size"] == 16 and "shared_layers" not in qm.dims
    assert qm.tensors["embeddings.word"].shape[1] == 16 and qm.tensors["embeddings.project.weight"].shape == (32, 16)


def _compiles_bit_exact_and_tracks_fp32(model_dir, calibration_sentences, tmp_path):
    from ibert_tvm.deploy.export import compile_quantized
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.quantization.calibrate import calibrate

    ckpt = load_checkpoint(model_dir)
    qm = calibrate(ckpt, calibration_sentences)
    assert_float_free(compile_quantized(qm, tmp_path / "out", target="llvm", log=lambda *a: None))
    got, plan, enc, res = run_both(ckpt, qm, tmp_path, calibration_sentences)
    np.testing.assert_array_equal(got, run_golden(plan, **enc))
    assert_tracks_fp32(str(model_dir), ckpt, got * plan.out_scale, res, enc["attention_mask"])
    return qm


@pytest.mark.parametrize("arch, why", [
    ("DebertaV2Model", "disentangled attention is not supported"),
])
def test_known_unsupported_architecture_is_refused_with_the_reason(arch, why, tmp_path):
    from ibert_tvm.model.hf_loader import load_checkpoint

    (tmp_path / "config.json").write_text(json.dumps({"architectures": [arch], "hidden_size": 32}))
    with pytest.raises(IBertTVMError) as e:
        load_checkpoint(tmp_path)
    assert f"config.json: architectures {arch}: " in str(e.value) and why in str(e.value)


def test_only_a_factorized_electra_is_refused_by_the_tools_that_walk_bert_attributes(tiny_factory):
    """The ELECTRA name map renames embeddings_project only: QAT / sensitivity (``ckpt.base``) keep a
    hidden-sized ELECTRA and refuse a factorized one (they would miss its projection)."""
    from ibert_tvm.model.hf_loader import load_checkpoint

    plain = load_checkpoint(tiny_factory("ElectraModel"))
    assert not plain.renamed and plain.base is plain.model
    factorized = load_checkpoint(tiny_factory("ElectraModel", embedding_size=16))
    assert factorized.renamed and factorized.canonical("embeddings_project") == "embeddings.project"
    with pytest.raises(IBertTVMError, match="config.json: architectures ElectraModel: this tool walks BERT's"):
        factorized.base
