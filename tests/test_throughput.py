"""``ibert-tvm bench --throughput / --server``: bulk embedding and the server load test, on a tiny model.

No test asserts a speed. They check that every engine does the whole job in its own worker
(every sentence embedded, in input order, agreeing with PyTorch FP32), that the report has its
fields, and that the load test gets exactly what ``encode`` gives, with no error, from a real
server on 127.0.0.1 that shuts down cleanly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ibert_tvm.benchmarks import throughput as thr
from ibert_tvm.cli import main
from ibert_tvm.errors import IBertTVMError

SENTENCES = [
    "A plane is taking off.",
    "Turn off the lights.",
    "What time is it?",
    "The Universal Declaration of Human Rights was adopted by the General Assembly in Paris on 10 December 1948 "
    "as a common standard of achievements for all peoples and all nations, after two world wars.",
    "Ok.",
    "def f(x): return x ** 2 + 3 * x - 1  # a line of code",
    "Tous les êtres humains naissent libres et égaux en dignité et en droits.",
    "Stocks Rally As Fed Holds Rates Steady",
    " ".join(["word"] * 150),  # over the tiny model's 128 tokens: truncated, for every engine alike
]


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text("\n".join(SENTENCES) + "\n\n", encoding="utf-8")
    return p


def test_corpus_sources(corpus_file):
    s, d = thr.load_corpus(str(corpus_file))
    assert sorted(s) == sorted(SENTENCES) and d["sentences"] == len(SENTENCES) and d["source"] == "file"
    s2, d2 = thr.load_corpus(str(corpus_file), limit=4)
    assert s2 == s[:4] and d2["of"] == len(SENTENCES)  # a fixed order: the limit is a prefix of it
    assert not any(x in json.dumps(d2) for x in s)  # a digest, never the sentences themselves
    st, ds = thr.load_corpus("stsb", limit=50)
    assert len(st) == 50 and len(set(st)) == 50 and ds["of"] > 2000
    with pytest.raises(IBertTVMError, match="no such file"):
        thr.load_corpus(str(corpus_file.parent / "missing.txt"))
    empty = corpus_file.parent / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(IBertTVMError, match="no sentence"):
        thr.load_corpus(str(empty))


def test_bulk_job_keeps_input_order(tiny_factory, corpus_file):
    """One pass = length-sorted batches, each row back in its place: the same as one text at a time."""
    from ibert_tvm.benchmarks.engines import ENGINES
    from ibert_tvm.benchmarks.models import resolve

    model = resolve(str(tiny_factory("BertModel")), corpus_file.parent / "cache")
    sentences, _ = thr.load_corpus(str(corpus_file))
    runner = ENGINES["torch-fp32"].load(model, {}, 1)
    job = thr.BulkJob(model, sentences, batch_size=3)
    d = job.describe()
    assert d["batches"] == 3 and d["truncated"] == 1 and d["length_max"] == 128
    assert d["tokens"] <= d["padded_tokens"]
    got = job.run(runner)
    alone = np.concatenate([thr.BulkJob(model, [s], 1).run(runner) for s in sentences])
    np.testing.assert_allclose(got, alone, rtol=1e-4, atol=1e-5)


def test_throughput_and_server_end_to_end(tiny_factory, compiled_factory, corpus_file, tmp_path):
    """tvm-int8 (prebuilt) and torch-fp32 in their own workers, 2 timed passes; then the server, 4 clients."""
    model = str(tiny_factory("BertModel"))
    cfg = thr.ThroughputConfig(models=[model], engines=["torch-fp32", "tvm-int8"], corpus=str(corpus_file),
                               batch_size=3, rounds=2, cache=str(tmp_path / "cache"),
                               prebuilt={model: str(compiled_factory("BertModel"))}, target="llvm", pause_s=0.0,
                               server=True, clients=4, requests=8, duration_s=120, texts_per_request=2)
    logs = []
    r = thr.run_throughput(cfg, log=logs.append, log_dir=tmp_path / "logs")
    paths = thr.write_outputs(r, tmp_path / "out" / "throughput.json")
    data = json.loads(paths["json"].read_text())
    assert data["format"] == thr.FORMAT and data["corpus"]["sentences"] == len(SENTENCES)
    assert data["git"]["commit"] and data["load_average"]["start"]
    (name, m), = data["models"].items()
    bulk = m["bulk"]
    assert bulk["corpus_tokens"]["truncated"] == 1 and bulk["corpus_tokens"]["batches"] == 3
    for e in ("tvm-int8", "torch-fp32"):
        d = bulk["engines"][e]
        assert d["status"] == "ok", (e, d.get("reason"), logs)
        assert len(d["rounds_s"]) == 2 and d["checksums_ok"] is True and d["dim"] == 32
        s = d["sentences_per_s"]
        assert s["n"] == 2 and 0 < s["min"] <= s["median"] <= s["max"]
        assert d["tokens_per_s"]["median"] > s["median"]  # several tokens per sentence
        cos = d["cosine_vs_fp32"]
        assert cos["reference"] == "torch-fp32" and cos["n"] == len(SENTENCES) and cos["mean"] > 0.9
        assert bulk["speedups"][e]["vs_torch-fp32"] == pytest.approx(
            s["median"] / bulk["engines"]["torch-fp32"]["sentences_per_s"]["median"])
        assert bulk["speedups"][e]["vs_ort-int8"] is None  # it did not run
    assert bulk["engines"]["torch-fp32"]["cosine_vs_fp32"]["mean"] == pytest.approx(1.0)
    srv = m["server"]
    assert srv["status"] == "ok" and srv["shutdown"]["clean"], (srv, logs)
    load = srv["load"]
    assert load["errors"] == 0 and load["requests_ok"] == 8 and load["stopped_by"] == "requests"
    assert load["p50_ms"] <= load["p90_ms"] <= load["p99_ms"] <= load["max_ms"]
    assert load["server_batching"]["rows"] >= 16  # 8 requests x 2 texts (+ the warm-up ones)
    assert srv["cosine_vs_fp32"]["mean"] > 0.9
    md = paths["md"].read_text()
    assert "### Bulk embedding" in md and "### Server under load" in md and "TVM int8 (ours)" in md
    assert "PyTorch FP32" in md
    if "png" in paths:  # matplotlib is optional
        assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_load_test_answers_equal_encode(compiled_factory, tmp_path):
    """8 clients x 4 requests of 2 texts against a real server: no error, every answer is encode()'s."""
    import ibert_tvm

    out = compiled_factory("BertModel")
    sentences = SENTENCES[:8]
    srv = thr.ServerProcess(out, tmp_path / "server.log", threads=1)
    try:
        assert srv.url.startswith("http://127.0.0.1:")
        r = thr.load_test(srv.url, sentences, clients=8, requests=32, duration_s=120, texts_per_request=2, keep=True)
    finally:
        stopped = srv.stop()
    assert stopped["clean"], srv.tail()
    assert r["errors"] == 0 and r["requests_ok"] == 32 and r["requests_sent"] == 32 and r["stuck_clients"] == 0
    assert r["requests_per_s"] > 0 and r["sentences_per_s"] == pytest.approx(2 * r["requests_per_s"])
    answers = r["answers"]
    assert sorted(answers) == list(range(len(sentences)))
    want = ibert_tvm.load(out).encode(sentences, normalize_embeddings=True, truncate=True)
    got = np.array([answers[i] for i in range(len(sentences))], dtype=np.float64)
    assert np.array_equal(got.astype(np.float32).astype(np.float64), got)  # float32 values, exactly
    np.testing.assert_array_equal(got.astype(np.float32), want)


def test_load_test_counts_errors(compiled_factory, tmp_path):
    """More texts per request than the server's --max-client-batch-size: every answer a 413, counted."""
    out = compiled_factory("BertModel")
    srv = thr.ServerProcess(out, tmp_path / "server.log", threads=1, extra=("--max-client-batch-size", "1"))
    try:
        r = thr.load_test(srv.url, SENTENCES[:3], clients=2, requests=4, duration_s=60, texts_per_request=2)
    finally:
        srv.stop()
    assert r["requests_ok"] == 0 and r["errors"] == 4
    assert r["error_kinds"]["HTTP 413"]["count"] == 4 and "batch size 2" in r["error_kinds"]["HTTP 413"]["first"]
    assert "p50_ms" not in r


# -- CLI: bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, msg", [
    (["--throughput", "--engines", "tvm-fp32"], "fixed shapes"),
    (["--throughput", "--engines", "bogus"], "unknown engine bogus"),
    (["--throughput", "--shapes", "1x8"], "--shapes is an option of the latency bench"),
    (["--server", "--profile"], "--profile is an option of the latency bench"),
    (["--clients", "4"], "--clients needs --throughput or --server"),
    (["--throughput", "--corpus", "stsb", "--text", "x.txt"], "not both"),
    (["--throughput", "--text", "/no/such/corpus.txt"], "no such file"),
    (["--throughput", "-o", "t.txt"], "must end in .json"),
    (["--server", "--engines", "ort-int8"], "--server alone runs the integer model"),
    (["--server", "--rounds", "2"], "--rounds is for --throughput"),
    (["--throughput", "--clients", "8"], "--clients needs --server"),
])
def test_throughput_bad_input(argv, msg, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", *argv, "--cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("error:") == 1, err
    assert not list(tmp_path.glob("*.json"))


def test_report_of_a_skipped_engine_and_a_failed_server(tmp_path):
    """Ratios only between engines that ran; a skipped engine and a failed server say why."""
    model = {"name": "m", "path": "/nowhere", "family": "bert", "head": "embedding", "pad_id": 0, "vocab": 100,
             "type_vocab": 2, "max_seq": 128, "layers": 2, "hidden": 32, "heads": 4, "intermediate": 64,
             "calibration": "stsb:8"}
    ok = {"label": "X", "precision": "int8", "status": "ok", "checksums_ok": True,
          "cosine_vs_fp32": {"reference": "torch-fp32", "n": 10, "mean": 0.99, "min": 0.9, "p01": 0.95}}
    r = {"format": thr.FORMAT, "started": "t", "seconds": 1.0,
         "config": thr.ThroughputConfig(models=["m"], server=True).to_dict(),
         "corpus": {"source": "file", "what": "c.txt", "sentences": 10, "of": 20, "order": "o", "sha256": "ab" * 32},
         "machine": {"cpu": {"model": "cpu", "logical_cpus": 2}}, "versions": {}, "git": {"commit": "abc"},
         "load_average": {"start": [0.1, 0.1, 0.1], "end": [0.2, 0.1, 0.1]},
         "models": {"m": {"model": model, "bulk": {
             "corpus_tokens": {"tokens": 200, "padded_tokens": 250, "batches": 2, "truncated": 0, "length_min": 3,
                               "length_median": 20, "length_p90": 40, "length_max": 60, "max_seq": 128},
             "engines": {"tvm-int8": {**ok, "label": "TVM int8 (ours)", "rounds_s": [1.0, 2.0, 0.5]},
                         "torch-fp32": {**ok, "label": "PyTorch FP32", "rounds_s": [4.0, 5.0, 2.0]},
                         "ort-int8": {"label": "ORT int8", "status": "skipped",
                                      "reason": "onnxruntime is not installed"}}},
             "server": {"status": "failed", "reason": "the server did not start within 180 s"}}}}
    thr.summarize(r)
    b = r["models"]["m"]["bulk"]
    assert b["engines"]["tvm-int8"]["sentences_per_s"] == {"median": 10.0, "min": 5.0, "max": 20.0, "n": 3}
    assert b["engines"]["tvm-int8"]["tokens_per_s"]["median"] == pytest.approx(200.0)
    assert b["speedups"]["tvm-int8"] == {"vs_torch-fp32": pytest.approx(4.0), "vs_ort-int8": None}
    assert "ort-int8" not in b["speedups"]
    md = thr.markdown(r)
    assert "| TVM int8 (ours) | **10.0** [5.0-20.0] | 200 | 4.00x | - |" in md
    assert "skipped: onnxruntime is not installed" in md
    assert "failed: the server did not start within 180 s" in md
    assert "10 sentences of 20" in md and "80% useful" in md
    assert "indicative only" not in md
    paths = thr.write_outputs(r, tmp_path / "t.json")
    assert json.loads(paths["json"].read_text())["models"]["m"]["bulk"]["speedups"]["tvm-int8"]["vs_ort-int8"] is None


def test_config_validation():
    with pytest.raises(IBertTVMError, match="nothing to run"):
        thr.ThroughputConfig(models=["m"], bulk=False, server=False)
    with pytest.raises(IBertTVMError, match="clients must be at least 1"):
        thr.ThroughputConfig(models=["m"], clients=0)
    cfg = thr.ThroughputConfig(models=["m"], engines=["torch-fp32", "ort-int8", "tvm-int8"])
    assert cfg.engines == ["tvm-int8", "torch-fp32", "ort-int8"]  # the registry's order
