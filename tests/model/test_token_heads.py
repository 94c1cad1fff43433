"""Per-token heads through import + passes: token classification (NER) and extractive QA.

Tiny random models calibrate, compile (llvm) float-free, equal golden bit for bit on padded
batches, track FP32 per token, and the Python API / ``run`` decode them with integers only."""

from __future__ import annotations

import numpy as np
import pytest
from arch_checks import assert_float_free, build

ARCHS = ["RobertaForTokenClassification", "BertForQuestionAnswering"]


@pytest.fixture(scope="module")
def built(tiny_factory, calibration_sentences, tmp_path_factory):
    cases = {arch: ({"num_labels": 5} if "Token" in arch else {}) for arch in ARCHS}
    return build(cases, tiny_factory, calibration_sentences, tmp_path_factory)


@pytest.mark.parametrize("arch", ARCHS)
def test_token_head_compiles_bit_exact_and_tracks_fp32(arch, built, calibration_sentences):
    import torch

    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.plan import ModelPlan
    from ibert_tvm.quantization.calibrate import torch_inputs

    ckpt, qm, d, manifest = built[arch]
    labels = qm.dims["num_labels"]
    assert manifest["output"]["shape"] == ["batch", "seq", labels]
    assert_float_free(manifest)
    model, plan = CompiledModel(d / "out"), ModelPlan(qm)
    enc = model.tokenizer(calibration_sentences[:16])
    mask = enc["attention_mask"] != 0
    assert not mask.all()
    got = model.run_ids(enc)
    assert got.shape == (16, mask.shape[1], labels)
    np.testing.assert_array_equal(got, run_golden(plan, **enc))
    with torch.no_grad():
        res = ckpt.model(**torch_inputs(enc))
    if arch.endswith("TokenClassification"):
        ref = res.logits.numpy()
    else:
        ref = np.stack([res.start_logits.numpy(), res.end_logits.numpy()], -1)
    ours = got * plan.out_scale
    err = np.abs(ours - ref)[mask]
    # a random 2-layer model: small, nearly input-independent logits (see test_end_to_end); this
    # bounds the error by their magnitude and checks the per-token decisions
    assert err.max() < 0.2 * np.abs(ref[mask]).max(), (err.max(), np.abs(ref[mask]).max())
    agree = (ours.argmax(-1) == ref.argmax(-1))[mask].mean()
    assert agree >= 0.9, agree


def test_token_outputs_in_batches_equal_one_text_at_a_time(built, calibration_sentences):
    from ibert_tvm.deploy.runtime import CompiledModel

    _, _, d, _ = built["RobertaForTokenClassification"]
    model = CompiledModel(d / "out")
    texts = calibration_sentences[:9]
    out = model.run_text(texts, batch_size=4)
    lengths = [len(ids) for ids, _ in model.tokenizer.encode(texts)]
    assert out.shape[:2] == (9, max(lengths))
    for i, t in enumerate(texts):
        alone = model.run_text([t])[0]
        np.testing.assert_array_equal(out[i, : lengths[i]], alone)
        assert not out[i, lengths[i]:].any()  # zero past the text's tokens


def test_api_predicts_a_label_per_token_and_a_span_per_pair(built, calibration_sentences):
    import ibert_tvm
    from ibert_tvm.deploy.runtime import CompiledModel

    _, qm, d, _ = built["RobertaForTokenClassification"]
    m = ibert_tvm.load(d / "out")
    texts = calibration_sentences[:3]
    labels = m.predict(texts)
    q = CompiledModel(d / "out").run_text(texts)
    for t, row_labels, row in zip(texts, labels, q):
        n = len(m.tokenizer.encode([t])[0][0])
        assert len(row_labels) == n
        assert row_labels == [qm.labels[k] for k in row[:n].argmax(1)]
    _, _, d, _ = built["BertForQuestionAnswering"]
    m = ibert_tvm.load(d / "out")
    spans = m.predict([("Who is taking off?", "A plane is taking off from the airport.")])
    assert len(spans) == 1 and 0 <= spans[0][0] <= spans[0][1] < spans[0][0] + 30


def test_best_span_is_the_best_valid_pair():
    from ibert_tvm.deploy.api import best_span

    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 40))
        logits = rng.integers(-1000, 1000, (n, 2)).astype(np.int32)
        best = max(((int(logits[i, 0]) + int(logits[j, 1]), -i, -j) for i in range(n) for j in range(i, min(n, i + 30))))
        assert best_span(logits) == (-best[1], -best[2])


def test_run_prints_a_label_per_token(built, capsys):
    from cli_helpers import cli

    _, _, d, _ = built["RobertaForTokenClassification"]
    rc, out, err = cli(capsys, "run", d / "out", "A plane is taking off.")
    assert rc == 0, err
    line = next(x for x in out.splitlines() if x.startswith("'A plane"))
    assert len(line.split(": ", 1)[1].split()) == 8  # [CLS] a plane is taking off . [SEP] (the MiniLM tokenizer of the tiny models)


def test_regression_head_one_label(regression_compiled, calibration_sentences):
    """A sequence-classification head with one label is a regression: compiled == golden, and
    ``predict`` gives the dequantized score (conftest ``regression_compiled``: the tiny one-label
    model's llvm build, shared with test_server's /rerank)."""
    import ibert_tvm
    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.plan import ModelPlan

    qm, out = regression_compiled
    model = CompiledModel(out)
    enc = model.tokenizer(calibration_sentences[:8])
    q = model.run_ids(enc)
    assert q.shape == (8, 1)
    np.testing.assert_array_equal(q, run_golden(ModelPlan(qm), **enc))
    scores = ibert_tvm.load(out).predict(calibration_sentences[:8])
    np.testing.assert_allclose(scores, q[:, 0] * model.output_scale, rtol=1e-12)
