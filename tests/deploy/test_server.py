"""``ibert-tvm serve``: a real uvicorn server in a child process on 127.0.0.1, a real HTTP client.

Every expected output is computed through another path, ``CompiledModel.run_ids`` on one text at
a time in this process, and compared exactly (JSON floats round-trip float32 exactly). The
server runs the real CLI (``python -m ibert_tvm serve``) so a crash fails a test instead of the
session; after every bad request the server must still answer ``/health``.

The :class:`Batcher` tests run in-process on the real model: requests queued before the batcher
starts are merged deterministically, so the merge itself (not only its results) is checked.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from ibert_tvm.deploy.runtime import CompiledModel
from test_batching import mixed_texts

ROOT = Path(__file__).resolve().parents[2]
KEY = "test-key-5b1d"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_INPUTS = 8
MAX_TOKENS = 512  # 4 rows of the model's 128-token maximum per model call
PAYLOAD = 200_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m ibert_tvm serve OUT --port P ...`` in a child process, until :meth:`stop`."""

    def __init__(self, out_dir: Path, log: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = dict(os.environ, PYTHONPATH=str(ROOT), TVM_NUM_THREADS="2", OMP_NUM_THREADS="2")
        env.pop("TVM_USE_RUNTIME_LIB", None)
        self._log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "ibert_tvm", "serve", str(out_dir), "--port",
                                      str(self.port), *args], stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=ROOT)
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"server not up after 180 s:\n{self.output()}")
            time.sleep(0.2)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log.read_text()[-4000:]

    def alive(self) -> bool:
        r = httpx.get(self.url + "/health", timeout=30)
        return self.proc.poll() is None and r.status_code == 200 and r.json() == {"status": "ok"}

    def stop(self) -> int:
        self.proc.terminate()
        try:
            rc = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(30)
        self._log.close()
        return rc


@pytest.fixture(scope="module")
def out_dir(compiled_factory):
    return compiled_factory("BertModel")


@pytest.fixture(scope="module")
def reference(out_dir):
    return CompiledModel(out_dir)


@pytest.fixture(scope="module")
def server(out_dir, tmp_path_factory):
    s = Server(out_dir, tmp_path_factory.mktemp("serve") / "server.log", "--api-key", KEY, "--max-batch-tokens",
               str(MAX_TOKENS), "--max-client-batch-size", str(MAX_INPUTS), "--payload-limit", str(PAYLOAD))
    yield s
    rc = s.stop()  # SIGTERM: uvicorn shuts down cleanly, then re-raises the signal (exit -15)
    assert rc in (0, -15) and "Application shutdown complete." in s.output(), (rc, s.output())


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as c:
        yield c
    assert server.alive(), server.output()  # the server is still up after every test


def alone(ref: CompiledModel, texts, truncate=False) -> np.ndarray:
    return np.concatenate([ref.run_ids(ref.tokenizer([t], truncate=truncate)) for t in texts])


def as_float(q: np.ndarray, scale: float, normalize: bool) -> np.ndarray:
    x = q.astype(np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True) if normalize else x * scale
    return x.astype(np.float32)


def f32(rows) -> np.ndarray:
    a = np.array(rows, dtype=np.float64)
    assert np.array_equal(a.astype(np.float32).astype(np.float64), a)  # float32 values, exactly
    return a.astype(np.float32)


# -- happy paths -------------------------------------------------------------------------------
def test_health_and_info(client, reference):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    m = reference.manifest
    assert info["model_id"] == m["model"]["identity"]
    assert (info["target"], info["head"], info["max_input_length"]) == ("llvm", "embedding", 128)
    assert (info["max_batch_tokens"], info["max_client_batch_size"], info["auth"]) == (MAX_TOKENS, MAX_INPUTS, True)
    assert info["integer_only"]["verified"] is True
    assert info["integer_only"]["float_ops"] == {"module": 0, "code": 0}
    assert info["output"]["scale"] == reference.output_scale


@pytest.mark.parametrize("normalize", [True, False, None])
def test_embed_equals_run_ids_one_at_a_time(client, reference, normalize):
    texts = mixed_texts(MAX_INPUTS, seed=21)
    body = {"inputs": texts} if normalize is None else {"inputs": texts, "normalize": normalize}
    r = client.post("/embed", json=body)
    assert r.status_code == 200, r.text
    want = as_float(alone(reference, texts), reference.output_scale, normalize is not False)  # TEI: default true
    np.testing.assert_array_equal(f32(r.json()), want)


def test_embed_one_string(client, reference):
    r = client.post("/embed", json={"inputs": "A plane is taking off.", "normalize": False})
    assert r.status_code == 200
    np.testing.assert_array_equal(f32(r.json()), as_float(alone(reference, ["A plane is taking off."]),
                                                          reference.output_scale, False))


def test_openai_float_and_base64(client, reference):
    texts = mixed_texts(5, seed=22)
    want = as_float(alone(reference, texts), reference.output_scale, True)
    r = client.post("/v1/embeddings", json={"input": texts, "model": "mini"})
    assert r.status_code == 200, r.text
    got = r.json()
    tokens = sum(len(ids) for ids, _ in reference.tokenizer.encode(texts))
    assert got["object"] == "list" and got["model"] == "mini"
    assert got["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert [d["index"] for d in got["data"]] == list(range(5)) and {d["object"] for d in got["data"]} == {"embedding"}
    np.testing.assert_array_equal(f32([d["embedding"] for d in got["data"]]), want)
    r = client.post("/v1/embeddings", json={"input": texts[0], "encoding_format": "base64"})
    assert r.status_code == 200
    vec = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(vec, want[0])
    assert r.json()["model"] == reference.manifest["model"]["identity"]


def test_token_id_inputs_equal_the_texts_they_encode(client, reference):
    """TEI and OpenAI take token ids: the tokenizer's ids of a text give exactly that text's
    embedding; a too-long id list is cut with ``truncate`` like a text."""
    texts = mixed_texts(4, seed=61, max_words=30)
    ids = [reference.tokenizer.encode([t])[0][0] for t in texts]
    want = as_float(alone(reference, texts), reference.output_scale, True)
    r = client.post("/embed", json={"inputs": ids})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(f32(r.json()), want)
    r = client.post("/embed", json={"inputs": ids[0]})  # one tokenized input
    np.testing.assert_array_equal(f32(r.json()), want[:1])
    r = client.post("/v1/embeddings", json={"input": ids})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(f32([d["embedding"] for d in r.json()["data"]]), want)
    assert r.json()["usage"]["prompt_tokens"] == sum(map(len, ids))
    long = ids[0] + [1000] * 200
    r = client.post("/embed", json={"inputs": [long], "truncate": True, "normalize": False})
    assert r.status_code == 200, r.text
    cut = reference.tokenizer.pad([(long[:128], [0] * 128)])
    np.testing.assert_array_equal(f32(r.json()), as_float(reference.run_ids(cut), reference.output_scale, False))


def test_truncate(client, reference):
    long = " ".join(["word"] * 300)
    r = client.post("/embed", json={"inputs": ["fine", long], "normalize": False})
    assert r.status_code == 422 and "302 tokens" in r.json()["error"] and '"truncate": true' in r.json()["error"]
    r = client.post("/embed", json={"inputs": ["fine", long], "normalize": False, "truncate": True})
    assert r.status_code == 200
    np.testing.assert_array_equal(f32(r.json()), as_float(alone(reference, ["fine", long], truncate=True),
                                                          reference.output_scale, False))


def test_64_concurrent_clients_get_what_each_gets_alone(server, client, reference, out_dir):
    """64 clients at once (a barrier releases them together), 1..8 texts each, mixed lengths and
    normalize flags: no errors, every answer exactly the one-at-a-time result, and also exactly
    what ``ibert_tvm.load(out).encode`` returns in this process."""
    import ibert_tvm

    rng = np.random.default_rng(64)
    pool = mixed_texts(200, seed=64, max_words=90)
    jobs = [([pool[j] for j in rng.choice(len(pool), int(rng.integers(1, MAX_INPUTS + 1)), replace=False)],
             bool(rng.integers(0, 2))) for _ in range(64)]
    ints = dict(zip(pool, alone(reference, pool)))
    before = client.get("/info").json()["batching"]
    barrier = threading.Barrier(64)

    def one(job):
        texts, normalize = job
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=240) as c:
            barrier.wait(60)
            r = c.post("/embed", json={"inputs": texts, "normalize": normalize})
        return r.status_code, r.text

    with ThreadPoolExecutor(64) as ex:
        results = list(ex.map(one, jobs, timeout=600))
    assert [s for s, _ in results] == [200] * 64, [t for s, t in results if s != 200][:3]
    model = ibert_tvm.load(out_dir)
    for (texts, normalize), (_, text) in zip(jobs, results):
        got = f32(json.loads(text))
        want = as_float(np.stack([ints[t] for t in texts]), reference.output_scale, normalize)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, model.encode(texts, normalize_embeddings=normalize))
    after = client.get("/info").json()["batching"]
    rows = sum(len(t) for t, _ in jobs)
    assert after["requests"] - before["requests"] == 64 and after["rows"] - before["rows"] == rows
    assert after["largest_batch_tokens"] <= MAX_TOKENS


# -- errors: JSON, TEI status codes, the server stays up ----------------------------------------
BAD = {
    "malformed-json": ("/embed", b'{"inputs": ', 400, "malformed JSON"),
    "not-utf8": ("/embed", b'{"inputs": "caf\xe9"}', 400, "malformed JSON"),
    "not-an-object": ("/embed", b'["a", "b"]', 422, "JSON object"),
    "inputs-missing": ("/embed", b'{"input": "a"}', 422, "missing field `inputs`"),
    "inputs-number": ("/embed", b'{"inputs": 5}', 422, "`inputs` must be a string, a list of strings, or token ids"),
    "inputs-object": ("/embed", b'{"inputs": {"a": 1}}', 422, "`inputs` must be a string, a list of strings, or token ids"),
    "inputs-not-strings": ("/embed", b'{"inputs": ["a", 3]}', 422, "`inputs[1]` must be a string"),
    "inputs-null": ("/embed", b'{"inputs": null}', 422, "`inputs` must be a string, a list of strings, or token ids"),
    "inputs-empty-list": ("/embed", b'{"inputs": []}', 422, "cannot be empty"),
    "inputs-empty-string": ("/embed", b'{"inputs": ""}', 422, "cannot be empty"),
    "inputs-empty-item": ("/embed", b'{"inputs": ["a", ""]}', 422, "`inputs[1]` cannot be empty"),
    "normalize-string": ("/embed", b'{"inputs": "a", "normalize": "yes"}', 422, "`normalize` must be true or false"),
    "truncate-number": ("/embed", b'{"inputs": "a", "truncate": 1}', 422, "`truncate` must be true or false"),
    "too-many-inputs": ("/embed", json.dumps({"inputs": ["a"] * (MAX_INPUTS + 1)}).encode(), 413,
                        f"batch size {MAX_INPUTS + 1} > maximum allowed batch size {MAX_INPUTS}"),
    "too-large-body": ("/embed", json.dumps({"inputs": ["a" * (PAYLOAD + 10)]}).encode(), 413, "payload limit"),
    "ids-mixed": ("/embed", b'{"inputs": ["a", [101, 102]]}', 422, "mixes texts and token ids"),
    "ids-mixed-2": ("/embed", b'{"inputs": [[101, 102], "a"]}', 422, "mixes texts and token ids"),
    "ids-out-of-vocab": ("/embed", b'{"inputs": [101, 30522, 102]}', 422, "token id 30522 is outside the vocabulary"),
    "ids-negative": ("/v1/embeddings", b'{"input": [[101, -1, 102]]}', 422, "token id -1 is outside"),
    "ids-float": ("/embed", b'{"inputs": [[101, 2.5, 102]]}', 422, "must be a non-empty list of integer token ids"),
    "ids-bool": ("/embed", b'{"inputs": [[true, 102]]}', 422, "must be a non-empty list of integer token ids"),
    "ids-empty-row": ("/embed", b'{"inputs": [[]]}', 422, "must be a non-empty list of integer token ids"),
    "ids-too-long": ("/embed", json.dumps({"inputs": [101] * 129}).encode(), 422,
                     "has 129 tokens; the model's maximum sequence length is 128 (cut it, or send"),
    "openai-format": ("/v1/embeddings", b'{"input": "a", "encoding_format": "hex"}', 422,
                      '`encoding_format` must be "float" or "base64"'),
    "openai-model-number": ("/v1/embeddings", b'{"input": "a", "model": 5}', 422, "`model` must be a string"),
    "openai-dimensions": ("/v1/embeddings", b'{"input": "a", "dimensions": 8}', 422, "`dimensions` 8"),
    "openai-empty": ("/v1/embeddings", b'{"input": []}', 422, "cannot be empty"),
    "openai-malformed": ("/v1/embeddings", b"{,}", 400, "malformed JSON"),
}


@pytest.mark.parametrize("row", list(BAD))
def test_bad_request_is_json_4xx_and_the_server_stays_up(client, row):
    path, body, status, needle = BAD[row]
    r = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    message = err["message"] if path.startswith("/v1/") else err
    assert needle in message, message
    if path.startswith("/v1/"):
        assert err["type"] == "invalid_request_error"
    else:
        assert r.json()["error_type"] == "Validation"


@pytest.mark.parametrize("method,path,status", [("GET", "/nope", 404), ("GET", "/embed", 405),
                                                ("POST", "/health", 405), ("DELETE", "/v1/embeddings", 405)])
def test_unknown_routes_and_methods_are_json(client, method, path, status):
    r = client.request(method, path)
    assert r.status_code == status and "error" in r.json()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                                     {"Authorization": f"bearer  {KEY}x"}])
def test_api_key_is_enforced(server, client, headers):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for method, path, body in [("POST", "/embed", {"inputs": "a"}), ("POST", "/v1/embeddings", {"input": "a"}),
                                   ("GET", "/info", None)]:
            r = c.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (path, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            assert "API key" in json.dumps(r.json())
        assert c.get("/health").status_code == 200  # liveness probes need no key
    assert client.post("/embed", json={"inputs": "a"}).status_code == 200


def _raw(server, data: bytes, read: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as s:
        s.sendall(data)
        return s.recv(65536) if read else b""


def test_disconnecting_clients_do_not_wedge_the_batcher(server, client, reference):
    """Clients that leave halfway through their body, or right after sending a full request, and
    one that half-closes while waiting: the batcher keeps serving, and answers stay exact."""
    texts = mixed_texts(MAX_INPUTS, seed=31, max_words=120)
    body = json.dumps({"inputs": texts}).encode()
    head = (f"POST /embed HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    for _ in range(5):
        _raw(server, head + body[: len(body) // 2])  # leaves mid-body
        _raw(server, head + body)  # leaves before the answer
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as s:  # half-closes, then waits
        s.sendall(head + body)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)
    want = as_float(alone(reference, texts), reference.output_scale, True)
    for _ in range(3):
        r = client.post("/embed", json={"inputs": texts})
        assert r.status_code == 200
        np.testing.assert_array_equal(f32(r.json()), want)
    assert server.alive()


# -- the batcher, in-process: merging is deterministic when requests wait before it starts -------
def test_batcher_merges_waiting_requests_within_the_token_budget(reference):
    from ibert_tvm.deploy.server import Batcher

    budget = 3 * 40
    b = Batcher(reference.run_ids, reference.tokenizer.pad, budget)
    requests = [mixed_texts(int(n), seed=40 + i, max_words=30) for i, n in enumerate([3, 1, 5, 2, 4])]
    futures = [b.submit(reference.tokenizer.encode(t)) for t in requests]
    b.start()
    try:
        got = [f.result(timeout=300) for f in futures]
    finally:
        b.stop()
    for texts, q in zip(requests, got):
        np.testing.assert_array_equal(q, alone(reference, texts))
    lengths = sorted((len(ids) for t in requests for ids, _ in reference.tokenizer.encode(t)), reverse=True)
    expected, i = [], 0
    while i < len(lengths):  # rows sorted longest first, as many as fit rows x longest <= budget
        n = max(1, min(len(lengths) - i, budget // lengths[i]))
        expected.append((n, lengths[i]))
        i += n
    assert b.stats.batch_shapes == expected
    assert len(expected) < len(requests)  # requests really were merged
    assert all(n * L <= budget for n, L in expected) and b.stats.rows == 15 and b.stats.requests == 5


def test_batcher_skips_cancelled_requests_and_survives_a_failing_call(reference):
    """A cancelled request (its client left) is not run; a request the model refuses (a token id
    outside the vocabulary) fails alone; the batcher keeps serving."""
    from ibert_tvm.deploy.server import Batcher
    from ibert_tvm.errors import IBertTVMError

    good = reference.tokenizer.encode(["A man is playing a guitar."])
    b = Batcher(reference.run_ids, reference.tokenizer.pad, len(good[0][0]))  # one such row per call
    bad = [([101, 10**6, 102], [0, 0, 0])]
    f_gone, f_bad, f_good = b.submit(good), b.submit(bad), b.submit(good)
    assert f_gone.cancel()
    b.start()
    try:
        np.testing.assert_array_equal(f_good.result(timeout=300), alone(reference, ["A man is playing a guitar."]))
        with pytest.raises(IBertTVMError, match="outside the vocabulary"):
            f_bad.result(timeout=300)
        np.testing.assert_array_equal(b.submit(good).result(timeout=300), f_good.result())
        assert b.alive
    finally:
        b.stop()
    assert b.stats.cancelled == 1 and not b.alive


# -- a classifier: TEI's /predict ----------------------------------------------------------------
@pytest.fixture(scope="module")
def classifier(compiled_factory, tmp_path_factory):
    out = compiled_factory("BertForSequenceClassification")
    s = Server(out, tmp_path_factory.mktemp("serve-clf") / "server.log", "--max-client-batch-size", str(MAX_INPUTS))
    yield s, CompiledModel(out)
    s.stop()


def _expected_predictions(ref: CompiledModel, q: np.ndarray, raw: bool) -> list:
    x = q.astype(np.float64) * ref.output_scale
    if not raw:
        x = np.exp(x - x.max(axis=1, keepdims=True))
        x = x / x.sum(axis=1, keepdims=True)
    names = ref.manifest["labels"]
    return [[{"score": float(np.float32(row[k])), "label": names[k]}
             for k in sorted(range(len(row)), key=lambda k: (-int(qr[k]), k))] for qr, row in zip(q, x)]


@pytest.mark.parametrize("raw", [False, True])
def test_predict_single_pair_and_batches(classifier, raw):
    s, ref = classifier
    a, b = mixed_texts(5, seed=51, max_words=20), mixed_texts(5, seed=52, max_words=20)
    with httpx.Client(base_url=s.url, timeout=120) as c:
        r = c.post("/predict", json={"inputs": a[0], "raw_scores": raw})  # one text
        assert r.status_code == 200, r.text
        assert r.json() == _expected_predictions(ref, ref.run_ids(ref.tokenizer([a[0]])), raw)[0]
        r = c.post("/predict", json={"inputs": [a[0], b[0]], "raw_scores": raw})  # [a, b] is one pair (TEI)
        assert r.json() == _expected_predictions(ref, ref.run_ids(ref.tokenizer([a[0]], [b[0]])), raw)[0]
        r = c.post("/predict", json={"inputs": [[x, y] for x, y in zip(a, b)], "raw_scores": raw})
        q = np.concatenate([ref.run_ids(ref.tokenizer([x], [y])) for x, y in zip(a, b)])
        assert r.json() == _expected_predictions(ref, q, raw)
        r = c.post("/predict", json={"inputs": a[:3], "raw_scores": raw})  # three single texts
        q = np.concatenate([ref.run_ids(ref.tokenizer([x])) for x in a[:3]])
        assert r.json() == _expected_predictions(ref, q, raw)
    assert s.alive()


@pytest.mark.parametrize("path,body,status,needle", [
    ("/embed", {"inputs": "a"}, 400, "head is 'classifier': /embed serves embedding models (use /predict)"),
    ("/v1/embeddings", {"input": "a"}, 400, "head is 'classifier'"),
    ("/predict", {"inputs": [["a", "b"], "c"]}, 422, "mixes single texts and pairs"),
    ("/predict", {"inputs": [["a", "b", "c"]]}, 422, "`inputs[0]` must be a non-empty string or a pair"),
    ("/predict", {"inputs": 3}, 422, "`inputs` must be a string"),
    ("/predict", {"inputs": ["a"] * (MAX_INPUTS + 1)}, 413, "maximum allowed batch size"),
    ("/predict", {"inputs": "a", "raw_scores": "no"}, 422, "`raw_scores` must be true or false"),
])
def test_classifier_server_errors(classifier, path, body, status, needle):
    s, _ = classifier
    r = httpx.post(s.url + path, json=body, timeout=60)
    assert r.status_code == status, r.text
    assert needle in json.dumps(r.json()), r.text
    assert s.alive()


def test_predict_on_an_embedding_model_is_refused(client):
    r = client.post("/predict", json={"inputs": "a"})
    assert r.status_code == 400 and "use /embed or /v1/embeddings" in r.json()["error"]


# -- a one-label classifier (a cross-encoder): TEI's /rerank ---------------------------------------
@pytest.fixture(scope="module")
def reranker(regression_compiled, tmp_path_factory):
    """The tiny one-label classifier's llvm build (conftest ``regression_compiled``, shared with
    test_token_heads), served."""
    _, out = regression_compiled
    s = Server(out, tmp_path_factory.mktemp("reranker") / "server.log")
    yield s, CompiledModel(out)
    s.stop()


@pytest.mark.parametrize("raw", [False, True])
def test_rerank_orders_by_the_integer_logit(reranker, raw):
    s, ref = reranker
    query = "how do I compile a model for an arm board"
    texts = mixed_texts(7, seed=71, max_words=25)
    q = np.concatenate([ref.run_ids(ref.tokenizer([query], [t])) for t in texts])[:, 0]
    logit = q.astype(np.float64) * ref.output_scale
    score = logit if raw else 1 / (1 + np.exp(-logit))
    order = sorted(range(len(texts)), key=lambda i: (-int(q[i]), i))
    with httpx.Client(base_url=s.url, timeout=120) as c:
        r = c.post("/rerank", json={"query": query, "texts": texts, "raw_scores": raw, "return_text": True})
        assert r.status_code == 200, r.text
        assert r.json() == [{"index": i, "score": float(np.float32(score[i])), "text": texts[i]} for i in order]
        assert len(set(q.tolist())) > 1  # the order is not the input order by accident of equal logits
        r = c.post("/rerank", json={"query": query, "texts": texts[:2]})
        assert [x["index"] for x in r.json()] == sorted(range(2), key=lambda i: (-int(q[i]), i))
        assert all("text" not in x for x in r.json())
        for body, status, needle in [({"texts": ["a"]}, 422, "`query`"), ({"query": "", "texts": ["a"]}, 422, "`query`"),
                                     ({"query": "q", "texts": []}, 422, "cannot be empty"),
                                     ({"query": "q", "texts": ["a"] * 40}, 413, "maximum allowed batch size"),
                                     ({"query": "q", "texts": "a", "return_text": 1}, 422, "`return_text`")]:
            r = c.post("/rerank", json=body)
            assert r.status_code == status and needle in r.text, (body, r.text)
    assert s.alive()


def test_rerank_needs_a_one_label_classifier(classifier, client):
    s, _ = classifier
    r = httpx.post(s.url + "/rerank", json={"query": "q", "texts": ["a"]}, timeout=60)
    assert r.status_code == 400 and "one-label (cross-encoder) classifier; this model has 2 labels" in r.text
    r = client.post("/rerank", json={"query": "q", "texts": ["a"]})  # an embedding model
    assert r.status_code == 400 and "use /embed or /v1/embeddings" in r.text


def test_accepted_connections_are_tcp_nodelay():
    """The listening socket says TCP (proto IPPROTO_TCP), so its accepted sockets do too and asyncio
    sets TCP_NODELAY on them; with proto 0 every response waited ~40 ms on Nagle's algorithm and
    the client's delayed ACK. Checked on a real accepted connection."""
    import socket

    from ibert_tvm.deploy.server import listen_socket

    sock = listen_socket("127.0.0.1", 0)
    try:
        sock.listen(1)
        with socket.create_connection(sock.getsockname()):
            conn, _ = sock.accept()
            with conn:
                assert conn.proto == socket.IPPROTO_TCP
                assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        sock.close()
