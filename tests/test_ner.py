"""The NER data loader, word/sub-token alignment and entity span F1 on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest

from ibert_tvm.errors import IBertTVMError
from ibert_tvm.token_tasks.data import (
    TaggedSentence,
    entity_spans,
    first_subtoken_index,
    label_list,
    read_conll,
    span_f1,
    split_sentences,
)


def test_entity_spans_follow_conlleval_chunking():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-ORG", "B-ORG", "B-ORG", "I-ORG"]
    assert entity_spans(tags) == {("PER", 0, 1), ("LOC", 3, 4), ("LOC", 5, 5), ("ORG", 6, 6), ("ORG", 7, 7),
                                  ("ORG", 8, 9)}
    assert entity_spans(["O", "O"]) == set()
    assert entity_spans(["I-X"]) == {("X", 0, 0)}


def test_span_f1_counts_exact_matches_only():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "O", "B-PER"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"],  # PER right; LOC typed wrong
            ["O", "B-ORG", "O", "O", "B-PER"]]  # ORG cut short; PER right
    s = span_f1(gold, pred)
    assert (s.tp, s.n_pred, s.n_gold) == (2, 4, 4)
    assert s.precision == s.recall == s.f1 == 0.5
    per = span_f1(gold, pred, "PER")
    assert (per.tp, per.n_pred, per.n_gold, per.f1) == (2, 2, 2, 1.0)
    loc = span_f1(gold, pred, "LOC")
    assert (loc.tp, loc.n_pred, loc.n_gold, loc.f1) == (0, 0, 1, 0.0)
    assert span_f1(gold, gold).f1 == 1.0
    with pytest.raises(IBertTVMError, match="sentence 1 has 5 gold tags but 4"):
        span_f1(gold, [pred[0], pred[1][:4]])


def test_read_conll_and_labels(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("John\tB-person\nlives\tO\n\t\nin\tO\nNew York\tB-geo-loc\n\n\nYork\tI-geo-loc\n", encoding="utf-8")
    s = read_conll(p)
    assert s == [TaggedSentence(("John", "lives"), ("B-person", "O")),
                 TaggedSentence(("in", "New York"), ("O", "B-geo-loc")),
                 TaggedSentence(("York",), ("I-geo-loc",))]
    assert s[1].text == "in New York"
    assert label_list(s) == ["O", "B-geo-loc", "I-geo-loc", "B-person", "I-person"]
    bad = tmp_path / "bad.txt"
    bad.write_text("John\tB-person\nlives\tX-verb\n", encoding="utf-8")
    with pytest.raises(IBertTVMError, match=r"bad.txt line 2: tag 'X-verb' is not O, B-TYPE or I-TYPE"):
        read_conll(bad)
    one = tmp_path / "one.txt"
    one.write_text("John\n", encoding="utf-8")
    with pytest.raises(IBertTVMError, match=r"one.txt line 1: expected 'word<TAB>tag'"):
        read_conll(one)
    with pytest.raises(IBertTVMError, match="does not exist"):
        read_conll(tmp_path / "none.txt")


def test_split_is_fixed_and_disjoint():
    sents = [TaggedSentence((f"w{i}",), ("O",)) for i in range(50)]
    a, b = split_sentences(sents), split_sentences(sents)
    assert a == b and len(a["test"]) == 10 and len(a["train"]) == 40
    assert not set(a["test"]) & set(a["train"])


def test_first_subtoken_of_each_word():
    # [CLS] john liv ##es [SEP]
    assert first_subtoken_index([None, 0, 1, 1, None], 2) == [1, 2]
    with pytest.raises(IBertTVMError, match="word 2 has no token"):
        first_subtoken_index([None, 0, 1, None], 3)


def test_compare_token_logits_counts_disagreements_and_f1():
    from ibert_tvm.token_tasks.compare import compare_token_logits

    labels = ["O", "B-PER", "I-PER"]
    sents = [TaggedSentence(("Ann", "Lee", "ran"), ("B-PER", "I-PER", "O")),
             TaggedSentence(("hi",), ("O",))]
    wids = [[None, 0, 1, 1, 2, None], [None, 0, None]]
    # FP32 float logits; the integer ones flip the second sub-token of "Lee" (not a word's label)
    # and the label of "Lee" in a copy below
    f0 = np.array([[5, 0, 0], [0, 3, 1], [0, 1, 3], [0, 1, 3], [3, 0, 1], [5, 0, 0]], dtype=np.float64)
    q0 = np.array([[50, 0, 0], [0, 30, 10], [0, 10, 30], [0, 30, 10], [30, 0, 10], [50, 0, 0]], dtype=np.int32)
    f1 = np.array([[5, 0, 0], [2, 0, 1], [5, 0, 0]], dtype=np.float64)
    q1 = np.array([[50, 0, 0], [20, 0, 10], [50, 0, 0]], dtype=np.int32)
    r = compare_token_logits(sents, wids, [f0, f1], [q0, q1], labels)
    assert (r["tokens"], r["disagreeing_tokens"], r["words"], r["disagreeing_words"]) == (5, 1, 4, 0)
    assert r["token_agreement"] == 0.8 and r["word_agreement"] == 1.0
    assert r["sentences_any_token_disagrees"] == 0.5 and r["sentences_any_word_disagrees"] == 0.0
    assert r["worst_sentence"] == {"index": 0, "disagreeing_tokens": 1, "tokens": 4}
    assert r["fp32_margin_at_disagreements"]["max"] == 2.0
    assert r["f1_fp32"]["f1"] == r["f1_integer"]["f1"] == 1.0
    q0b = q0.copy()
    q0b[2] = [0, 30, 10]  # "Lee" -> B-PER: two PER spans instead of one
    r = compare_token_logits(sents, wids, [f0, f1], [q0b, q1], labels)
    assert r["disagreeing_words"] == 1 and r["per_type"]["PER"]["agreement"] == 0.5
    assert r["f1_integer"]["tp"] == 0 and r["f1_integer"]["pred"] == 2
    assert r["f1_integer_vs_fp32"]["f1"] == 0.0


def test_bench_script_refuses_bad_input_with_one_error_line(tmp_path, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from token_heads_accuracy import main

    assert main(["--model-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --model-dir ") and "config.json" in err[0]
    assert main(["--report", "--out", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.json does not exist" in err[0]
    (tmp_path / "bad.json").write_text("{}")
    assert main(["--report", "--out", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.json: not a results file" in err[0]
    assert main(["--calib", "0", "--model-dir", str(tmp_path)]) == 2  # the dir is checked first
    capsys.readouterr()


def test_qa_from_ner_questions_spans_and_scores():
    from ibert_tvm.deploy.api import best_span
    from ibert_tvm.token_tasks.qa import (
        best_span_float,
        compare_spans,
        qa_examples,
        token_span,
        word_span,
    )

    s = TaggedSentence(("Ann", "met", "Bob", "in", "New", "York"), ("B-person", "O", "B-person", "O", "B-geo-loc",
                                                                    "I-geo-loc"))
    ex = qa_examples([s])
    assert [e.question for e in ex] == [tuple(["Which", "place", "is", "mentioned", "?"]),
                                        tuple(["Which", "person", "is", "mentioned", "?"])]
    assert ex[0].answers == ((4, 5),) and ex[1].answers == ((0, 0), (2, 2))
    # [CLS] which place is mentioned ? [SEP] ann met bob in new york [SEP]
    ctx = [None] * 7 + [0, 1, 2, 3, 4, 5, None]
    assert token_span(ctx, (4, 5)) == (11, 12)
    assert word_span(ctx, (11, 13)) == (4, 5) and word_span(ctx, (1, 3)) is None
    # place: exact; person: "Bob in" overlaps the gold "Bob" (F1 2/3), no exact match
    r = compare_spans(ex, [ctx, ctx], [(11, 12), (9, 10)], [(11, 12), (9, 9)])
    assert r["span_match"] == 0.5 and r["start_match"] == 1.0 and r["end_match"] == 0.5
    assert r["em_fp32"] == 0.5 and abs(r["f1_fp32"] - (1 + 2 / 3) / 2) < 1e-12
    assert r["em_integer"] == 1.0 and r["f1_integer"] == 1.0
    rng = np.random.default_rng(1)
    for _ in range(20):
        q = rng.integers(-50, 50, (int(rng.integers(1, 45)), 2))
        assert best_span_float(q.astype(np.float64)) == best_span(q.astype(np.int32))
