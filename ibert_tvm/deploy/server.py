"""An embedding server for a compiled model: the TEI and OpenAI protocols, on Starlette + uvicorn.

    POST /embed          TEI: {"inputs": str | [str] | [int] | [[int]], "normalize": true, "truncate": false}
                         -> [[float]] (token ids are used as given: the special tokens are the caller's)
    POST /v1/embeddings  OpenAI: {"input": str | [str] | [int] | [[int]], "model": str,
                         "encoding_format": "float" | "base64"}
    POST /predict        TEI, classifier heads: {"inputs": str | [a, b] (one pair) | [str | [a, b], ...],
                         "raw_scores": false, "truncate": false} -> [{"label", "score"}] (a list per input)
    POST /rerank         TEI, one-label (cross-encoder) classifiers: {"query": str, "texts": [str],
                         "raw_scores": false, "return_text": false, "truncate": false}
                         -> [{"index", "score"[, "text"]}], best first (sigmoid of the logit)
    GET  /health         200 while the batcher runs (open without the API key: a liveness probe)
    GET  /info           model id, target, head, max sequence, limits, the integer-only proof's summary

Dynamic batching: every request is tokenized in its handler and handed to one :class:`Batcher`
thread, which takes everything waiting, sorts the rows by length and runs them in batches whose
padded size (rows x longest row) stays within ``max_batch_tokens``. Each row's output depends on
that row alone (padding is masked exactly, in integers), so a request gets exactly what it would
get alone; ``tests/deploy/test_server.py`` checks that against ``CompiledModel.run_text``.

Errors are JSON with TEI's status codes: 400 malformed JSON, 401 missing or wrong API key, 413
too many inputs (or a body over ``payload_limit``), 422 a field of the wrong type, an empty input,
or a text over the maximum without ``truncate``. TEI routes answer ``{"error", "error_type"}``,
the OpenAI route ``{"error": {"message", "type", "param", "code"}}``.

There is no authentication unless ``api_key`` is set (``Authorization: Bearer KEY``); the CLI
listens on 127.0.0.1 unless given another ``--host``.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import queue
import socket
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from .. import __version__
from ..errors import IBertTVMError
from .api import dequantize, model_id

if TYPE_CHECKING:
    import numpy as np

    from .runtime import CompiledModel

DEFAULT_MAX_BATCH_TOKENS = 16384  # TEI's defaults
DEFAULT_MAX_CLIENT_BATCH_SIZE = 32
DEFAULT_PAYLOAD_LIMIT = 2_000_000  # bytes of request body


# -- the batcher -----------------------------------------------------------------------------
@dataclass
class _Request:
    encs: list  # (ids, type_ids) per row
    future: Future
    out: np.ndarray | None = None
    left: int = 0
    failed: bool = False


@dataclass
class BatchStats:
    requests: int = 0  # requests computed (cancelled ones excluded)
    cancelled: int = 0  # requests whose client left before their rows ran
    batches: int = 0  # model calls
    rows: int = 0
    largest_batch_tokens: int = 0  # rows x longest row of the largest call
    batch_shapes: list = field(default_factory=list)  # (rows, longest) of the last 256 calls


class Batcher:
    """One thread that runs every request's rows through ``run_ids`` in merged, length-sorted
    batches of at most ``max_batch_tokens`` padded tokens.

    :meth:`submit` returns a ``concurrent.futures.Future`` of the request's int32 rows, in its
    order. A request cancelled before the batcher takes it is skipped; a failing model call fails
    only the requests with rows in it. Requests submitted before :meth:`start` are merged with
    each other when it starts (how the tests make merging deterministic).
    """

    def __init__(self, run_ids: Callable[[dict], np.ndarray], pad: Callable[[list], dict], max_batch_tokens: int):
        if max_batch_tokens < 1:
            raise IBertTVMError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
        self.run_ids, self.pad, self.max_batch_tokens = run_ids, pad, max_batch_tokens
        self.stats = BatchStats()
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ibert-tvm-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, encs: list) -> Future:
        """Queue one request's encoded rows (each at most ``max_batch_tokens`` long)."""
        longest = max(len(ids) for ids, _ in encs)
        if longest > self.max_batch_tokens:
            raise IBertTVMError(f"a row of {longest} tokens exceeds max_batch_tokens={self.max_batch_tokens}")
        fut: Future = Future()
        self._queue.put(_Request(list(encs), fut))
        return fut

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            items, stop = [item], False
            while True:  # everything waiting joins this round
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                items.append(nxt)
            try:
                self._run(items)
            except BaseException as e:  # noqa: BLE001 - never let the thread die with requests waiting
                for r in items:
                    if not r.future.done():
                        r.future.set_exception(e)
            if stop:
                return

    def _run(self, items: list[_Request]) -> None:
        import numpy as np

        live = []
        for r in items:
            if r.future.set_running_or_notify_cancel():  # False: its client left and it was cancelled
                r.left = len(r.encs)
                live.append(r)
            else:
                self.stats.cancelled += 1
        rows = [(r, i) for r in live for i in range(len(r.encs))]
        rows.sort(key=lambda ri: -len(ri[0].encs[ri[1]][0]))  # longest first (stable)
        start = 0
        while start < len(rows):
            longest = len(rows[start][0].encs[rows[start][1]][0])
            n = max(1, min(len(rows) - start, self.max_batch_tokens // longest))
            batch = rows[start : start + n]
            start += n
            try:
                y = self.run_ids(self.pad([r.encs[i] for r, i in batch]))
            except Exception as e:  # noqa: BLE001 - fail the requests in this call, keep serving
                for r, _ in batch:
                    if not r.failed:
                        r.failed = True
                        r.future.set_exception(e)
                continue
            self.stats.batches += 1
            self.stats.rows += n
            self.stats.largest_batch_tokens = max(self.stats.largest_batch_tokens, n * longest)
            self.stats.batch_shapes = [*self.stats.batch_shapes[-255:], (n, longest)]
            for (r, i), row in zip(batch, y):
                if r.failed:
                    continue
                if r.out is None:
                    r.out = np.empty((len(r.encs), *row.shape), dtype=row.dtype)
                r.out[i] = row
                r.left -= 1
                if r.left == 0:
                    self.stats.requests += 1
                    r.future.set_result(r.out)


# -- validation --------------------------------------------------------------------------------
class HTTPError(Exception):
    """A client error: status code + message (+ TEI error type)."""

    def __init__(self, status: int, message: str, error_type: str = "Validation"):
        super().__init__(message)
        self.status, self.message, self.error_type = status, message, error_type


def _is_id(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _texts(body: dict, key: str, max_inputs: int, *, ids: bool = False) -> tuple[list, bool]:
    """``body[key]`` as a non-empty list of non-empty strings (and whether it was one string).

    With ``ids``, token ids are accepted too, as TEI's ``/embed`` and OpenAI's ``/v1/embeddings``
    take them: ``[int, ...]`` is one tokenized input, ``[[int, ...], ...]`` a batch of them; the
    items are then lists of ints (used as given: special tokens are the caller's)."""
    if key not in body:
        raise HTTPError(422, f"missing field `{key}`")
    v = body[key]
    if ids and isinstance(v, list) and v and all(_is_id(x) for x in v):
        return [v], True  # one tokenized input
    single = isinstance(v, str)
    texts = [v] if single else v
    if not isinstance(texts, list):
        want = "a string, a list of strings, or token ids" if ids else "a string or a list of strings"
        raise HTTPError(422, f"`{key}` must be {want}, got {type(v).__name__}")
    if not texts:
        raise HTTPError(422, f"`{key}` cannot be empty")
    kinds = set()
    for i, t in enumerate(texts):
        if ids and isinstance(t, list):
            if not t or not all(_is_id(x) for x in t):
                raise HTTPError(422, f"`{key}[{i}]` must be a non-empty list of integer token ids")
            kinds.add("ids")
            continue
        if not isinstance(t, str):
            what = "token ids are not accepted: send text" if isinstance(t, (int, list)) else type(t).__name__
            raise HTTPError(422, f"`{key}[{i}]` must be a string ({what})")
        if not t:
            raise HTTPError(422, f"`{key}[{i}]` cannot be empty" if not single else f"`{key}` cannot be empty")
        kinds.add("text")
    if len(kinds) > 1:
        raise HTTPError(422, f"`{key}` mixes texts and token ids: send one kind per request")
    if len(texts) > max_inputs:
        raise HTTPError(413, f"batch size {len(texts)} > maximum allowed batch size {max_inputs}")
    return texts, single


def _predict_inputs(body: dict, max_inputs: int) -> tuple[list[str], list[str] | None, bool]:
    """TEI's ``/predict`` inputs: a string, or ``[a, b]`` (one sentence pair, as TEI reads it), is
    one input; any other list is a batch whose items are strings or ``[a, b]`` pairs (all of one
    kind). Returns (texts, pairs or None, single)."""
    if "inputs" not in body:
        raise HTTPError(422, "missing field `inputs`")
    v = body["inputs"]
    if isinstance(v, str) or (isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v)):
        items, single = [v], True
    elif isinstance(v, list):
        items, single = v, False
    else:
        raise HTTPError(422, f"`inputs` must be a string, a [text, text] pair or a list of them, got {type(v).__name__}")
    if not items:
        raise HTTPError(422, "`inputs` cannot be empty")
    if len(items) > max_inputs:
        raise HTTPError(413, f"batch size {len(items)} > maximum allowed batch size {max_inputs}")
    is_pair = [isinstance(x, list) for x in items]
    for i, x in enumerate(items):
        ok = isinstance(x, str) and x or (isinstance(x, list) and len(x) == 2 and all(isinstance(t, str) and t for t in x))
        if not ok:
            raise HTTPError(422, f"`inputs[{i}]` must be a non-empty string or a pair of non-empty strings")
    if any(is_pair) and not all(is_pair):
        raise HTTPError(422, "`inputs` mixes single texts and pairs: send one kind per request")
    if all(is_pair):
        return [x[0] for x in items], [x[1] for x in items], single
    return list(items), None, single


def _flag(body: dict, key: str, default: bool) -> bool:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise HTTPError(422, f"`{key}` must be true or false, got {json.dumps(v)}")
    return v


def _string(body: dict, key: str, default: str | None, choices: tuple[str, ...] | None = None) -> str | None:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, str) or (choices and v not in choices):
        want = " or ".join(f'"{c}"' for c in choices) if choices else "a string"
        raise HTTPError(422, f"`{key}` must be {want}, got {json.dumps(v)}")
    return v


# -- the app -----------------------------------------------------------------------------------
def integer_only_summary(manifest: dict) -> dict:
    """The manifest's verifier reports in short: float ops found at each level, and the verdict."""
    v = manifest.get("verify")
    if not isinstance(v, dict) or not v:
        return {"verified": False, "reason": "the manifest records no verifier report"}
    levels = {k: r.get("float_ops") for k, r in v.items() if isinstance(r, dict)}
    ok = bool(levels) and all(n == 0 for n in levels.values())
    return {"verified": ok, "float_ops": levels,
            "checked_by": "ibert-tvm verify (Relax/TIR, LLVM IR and model.so machine code)"}


def create_app(model: CompiledModel, *, api_key: str | None = None,
               max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
               max_client_batch_size: int = DEFAULT_MAX_CLIENT_BATCH_SIZE,
               payload_limit: int = DEFAULT_PAYLOAD_LIMIT, served_model_name: str | None = None):
    """The Starlette app serving ``model``; its batcher starts and stops with the app's lifespan."""
    import contextlib

    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    m = model.manifest
    if max_batch_tokens < m["max_seq"]:
        raise IBertTVMError(f"max_batch_tokens {max_batch_tokens} is below the model's maximum sequence "
                            f"length {m['max_seq']}: one text must fit in a batch")
    if max_client_batch_size < 1:
        raise IBertTVMError(f"max_client_batch_size must be >= 1, got {max_client_batch_size}")
    name = served_model_name or model_id(model)
    batcher = Batcher(model.run_ids, model.tokenizer.pad, max_batch_tokens)
    scale = model.output_scale
    tokenizer = model.tokenizer

    def tei_error(status: int, message: str, error_type: str = "Validation", headers=None) -> JSONResponse:
        return JSONResponse({"error": message, "error_type": error_type}, status_code=status, headers=headers)

    def openai_error(status: int, message: str, error_type: str = "Validation", headers=None) -> JSONResponse:
        kind = "invalid_request_error" if status < 500 else "server_error"
        return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": error_type}},
                            status_code=status, headers=headers)

    def endpoint(handler, error=tei_error, head: str | None = "embedding"):
        """Wrap a handler ``(body) -> (status, payload)``: auth, body limit, JSON, errors."""
        async def run(request: Request):
            if api_key is not None:
                got = request.headers.get("authorization", "")
                if not hmac.compare_digest(got.encode(), f"Bearer {api_key}".encode()):
                    return error(401, "missing or wrong API key (Authorization: Bearer KEY)", "Unauthorized",
                                 headers={"WWW-Authenticate": "Bearer"})
            try:
                if request.method == "GET":
                    return JSONResponse(await handler(None))
                if head is not None and m["head"] != head:
                    routes = {"embedding": "/embed or /v1/embeddings", "classifier": "/predict"}
                    raise HTTPError(400, f"this model's head is {m['head']!r}: {request.url.path} serves {head} "
                                    f"models (use {routes.get(m['head'], 'the route for its head')})")
                size = request.headers.get("content-length")
                if size is not None and size.isdigit() and int(size) > payload_limit:
                    raise HTTPError(413, f"request body of {size} bytes > payload limit {payload_limit}")
                chunks, n = [], 0
                async for chunk in request.stream():
                    n += len(chunk)
                    if n > payload_limit:
                        raise HTTPError(413, f"request body > payload limit {payload_limit} bytes")
                    chunks.append(chunk)
                try:
                    body = json.loads(b"".join(chunks))
                except (ValueError, UnicodeDecodeError) as e:
                    raise HTTPError(400, f"malformed JSON: {e}") from None
                if not isinstance(body, dict):
                    raise HTTPError(422, f"the body must be a JSON object, got {type(body).__name__}")
                return JSONResponse(await handler(body))
            except HTTPError as e:
                return error(e.status, e.message, e.error_type)
            except ClientDisconnect:
                return Response(status_code=499)  # the client is gone: nothing will read this
            except IBertTVMError as e:  # the model refused its inputs after validation: a bug, not the client's
                return error(500, f"model error: {e}", "Backend")

        return run

    def id_encodings(key: str, seqs: list[list[int]], truncate: bool) -> list:
        """Token-id inputs as encodings (token type 0), checked against the vocabulary and the
        maximum length (cut to it with ``truncate``, as a text would be)."""
        vocab, max_len = int(m["vocab"]), int(m["max_seq"])
        encs = []
        for i, row in enumerate(seqs):
            bad = next((x for x in row if not 0 <= x < vocab), None)
            if bad is not None:
                raise HTTPError(422, f"`{key}[{i}]`: token id {bad} is outside the vocabulary [0, {vocab})")
            if len(row) > max_len:
                if not truncate:
                    raise HTTPError(422, f"`{key}[{i}]` has {len(row)} tokens; the model's maximum sequence length "
                                    f'is {max_len} (cut it, or send "truncate": true)')
                row = row[:max_len]
            encs.append((list(row), [0] * len(row)))
        return encs

    async def embed_ints(texts: list, truncate: bool, pairs: list[str] | None = None, key: str = "inputs"):
        """Tokenize (422 if a text is over the maximum), queue, await the int32 rows. ``texts``
        may instead be token-id lists (see :func:`_texts`)."""
        if isinstance(texts[0], list):
            encs = id_encodings(key, texts, truncate)
        else:
            try:
                encs = await run_in_threadpool(tokenizer.encode, texts, pairs, truncate=truncate)
            except IBertTVMError as e:
                raise HTTPError(422, f"{e}".replace("pass truncate=True / --truncate",
                                                    'send "truncate": true')) from None
        q = await asyncio.wrap_future(batcher.submit(encs))
        return q, encs

    async def embed(body):
        texts, _ = _texts(body, "inputs", max_client_batch_size, ids=True)
        normalize = _flag(body, "normalize", True)
        truncate = _flag(body, "truncate", False)
        q, _ = await embed_ints(texts, truncate)
        return dequantize(q, scale, normalize=normalize).tolist()

    async def openai_embeddings(body):
        texts, _ = _texts(body, "input", max_client_batch_size, ids=True)
        fmt = _string(body, "encoding_format", "float", ("float", "base64"))
        name_given = _string(body, "model", None)
        dims = body.get("dimensions")
        if dims is not None and dims != m["output"].get("shape", [None, None])[-1]:
            raise HTTPError(422, f"`dimensions` {json.dumps(dims)} is not supported: this model's embeddings "
                            f"have {m['output'].get('shape', ['?', '?'])[-1]}")
        q, encs = await embed_ints(texts, False, key="input")
        e = dequantize(q, scale, normalize=True)  # OpenAI's embeddings are unit length
        data = []
        for i, row in enumerate(e):
            vec = base64.b64encode(row.astype("<f4").tobytes()).decode() if fmt == "base64" else row.tolist()
            data.append({"object": "embedding", "embedding": vec, "index": i})
        tokens = sum(len(ids) for ids, _ in encs)
        return {"object": "list", "data": data, "model": name_given or name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    labels = list(m.get("labels") or [])

    async def predict(body):
        import numpy as np

        texts, pairs, single = _predict_inputs(body, max_client_batch_size)
        raw = _flag(body, "raw_scores", False)
        truncate = _flag(body, "truncate", False)
        q, _ = await embed_ints(texts, truncate, pairs)
        names = labels or [f"LABEL_{i}" for i in range(q.shape[1])]
        x = q.astype(np.float64) * scale  # the logits, dequantized at the boundary
        if not raw:
            x = np.exp(x - x.max(axis=1, keepdims=True))
            x = x / x.sum(axis=1, keepdims=True)
        out = []
        for qrow, row in zip(q, x.astype(np.float32)):
            order = sorted(range(len(row)), key=lambda k: (-int(qrow[k]), k))  # by the integer logit, then label
            out.append([{"score": float(row[k]), "label": names[k]} for k in order])
        return out[0] if single else out

    async def rerank(body):
        """TEI's ``/rerank``: score each of ``texts`` against ``query`` with a one-label (cross-encoder)
        classifier: ``[{"index", "score"[, "text"]}]``, best first. The order is the integer
        logits' (ties by index); the score is their sigmoid, or the logit with ``raw_scores``."""
        import numpy as np

        n_labels = len(labels) if labels else m["output"].get("shape", [None, None])[-1]
        if n_labels != 1:
            raise HTTPError(400, f"/rerank needs a one-label (cross-encoder) classifier; this model has "
                            f"{n_labels} labels (use /predict)")
        query = _string(body, "query", None)
        if not query:
            raise HTTPError(422, "missing or empty field `query`")
        texts, _ = _texts(body, "texts", max_client_batch_size)
        raw = _flag(body, "raw_scores", False)
        return_text = _flag(body, "return_text", False)
        truncate = _flag(body, "truncate", False)
        q, _ = await embed_ints([query] * len(texts), truncate, texts, key="texts")
        logit = q[:, 0].astype(np.float64) * scale
        score = (logit if raw else 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
        order = sorted(range(len(texts)), key=lambda i: (-int(q[i, 0]), i))
        return [{"index": i, "score": float(score[i]), **({"text": texts[i]} if return_text else {})}
                for i in order]

    async def health(_):
        if not batcher.alive:
            raise HTTPError(503, "the batcher is not running", "Unhealthy")
        return {"status": "ok"}

    async def info(_):
        s = batcher.stats
        return {
            "model_id": name, "version": __version__, "head": m["head"], "family": m["family"],
            "target": m["target"], "max_input_length": m["max_seq"], "labels": m.get("labels") or [],
            "output": {k: m["output"].get(k) for k in ("dtype", "shape", "scale")},
            "max_batch_tokens": max_batch_tokens, "max_client_batch_size": max_client_batch_size,
            "payload_limit": payload_limit, "auth": api_key is not None,
            "integer_only": integer_only_summary(m),
            "threads": getattr(model, "threads_note", None),
            "batching": {"requests": s.requests, "cancelled": s.cancelled, "batches": s.batches, "rows": s.rows,
                         "largest_batch_tokens": s.largest_batch_tokens},
        }

    async def health_route(request: Request):
        try:
            return JSONResponse(await health(None))
        except HTTPError as e:
            return tei_error(e.status, e.message, e.error_type)

    async def http_error(request: Request, exc: HTTPException):
        err = openai_error if request.url.path.startswith("/v1/") else tei_error
        return err(exc.status_code, exc.detail or "error", "Http", headers=getattr(exc, "headers", None))

    async def server_error(request: Request, exc: Exception):
        return tei_error(500, f"internal error: {type(exc).__name__}", "Backend")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            await run_in_threadpool(batcher.stop)

    routes = [
        Route("/embed", endpoint(embed), methods=["POST"]),
        Route("/v1/embeddings", endpoint(openai_embeddings, openai_error), methods=["POST"]),
        Route("/predict", endpoint(predict, head="classifier"), methods=["POST"]),
        Route("/rerank", endpoint(rerank, head="classifier"), methods=["POST"]),
        Route("/health", health_route, methods=["GET"]),
        Route("/info", endpoint(info, head=None), methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.batcher = batcher
    return app


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_socket(host: str, port: int) -> socket.socket:
    """The bound (not yet listening) TCP socket uvicorn serves on.

    Its proto is IPPROTO_TCP, not 0: accepted sockets inherit it, and asyncio sets TCP_NODELAY
    only on sockets that say TCP. Without it every response waited on Nagle's algorithm and the
    client's delayed ACK: a ``/health`` round trip took 44 ms instead of 1.3, and one-sentence
    ``/embed`` 51 ms instead of 8.5. TCP_NODELAY is also set on this socket (Linux hands it on)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except (OSError, OverflowError) as e:
        raise IBertTVMError(f"cannot listen on {host}:{port}: {e}") from None
    return sock


def serve(model: CompiledModel, host: str = "127.0.0.1", port: int = 8080, *, log_level: str = "info",
          **app_kw) -> None:
    """Listen on ``host:port`` (the socket is bound first, so a port in use is a clear error) and
    serve until interrupted."""

    try:
        import uvicorn
    except ImportError as e:
        raise IBertTVMError(f"serving needs uvicorn and starlette ({e}): pip install 'ibert-tvm[serve]'") from None
    app = create_app(model, **app_kw)
    sock = listen_socket(host, port)
    import sys

    shown = f"[{host}]" if ":" in host else host
    m = model.manifest
    print(f"ibert-tvm serve: {model_id(model)} ({m['head']}, target {m['target']}, max {m['max_seq']} tokens) on "
          f"http://{shown}:{sock.getsockname()[1]}" + ("" if app_kw.get("api_key") else " (no authentication)"),
          file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=10, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


# -- the command line (shared by ``ibert-tvm serve`` and ``python -m ibert_tvm.deploy.server``) ----
def add_arguments(p) -> None:
    """The serve options, on an argparse parser (``ibert-tvm serve`` and this module's main)."""
    import argparse

    def port_number(s: str) -> int:
        try:
            n = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not a port number") from None
        if not 0 <= n <= 65535:
            raise argparse.ArgumentTypeError(f"{s} is not a port number (0..65535)")
        return n

    def positive_int(s: str) -> int:
        try:
            n = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
        if n < 1:
            raise argparse.ArgumentTypeError(f"{s} must be at least 1")
        return n

    p.add_argument("compiled", help="directory written by `ibert-tvm compile`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; another address exposes the model to the network)")
    p.add_argument("--port", type=port_number, default=8080, help="port (default 8080)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every route but /health "
                   "(default: no authentication)")
    p.add_argument("--max-batch-tokens", type=positive_int, default=DEFAULT_MAX_BATCH_TOKENS,
                   help=f"padded tokens (rows x longest row) per model call (default {DEFAULT_MAX_BATCH_TOKENS})")
    p.add_argument("--max-client-batch-size", type=positive_int, default=DEFAULT_MAX_CLIENT_BATCH_SIZE,
                   help=f"texts per request; more is a 413 (default {DEFAULT_MAX_CLIENT_BATCH_SIZE})")
    p.add_argument("--payload-limit", type=positive_int, default=DEFAULT_PAYLOAD_LIMIT,
                   help=f"request body bytes; more is a 413 (default {DEFAULT_PAYLOAD_LIMIT})")
    p.add_argument("--served-model-name", help="the model name /info and /v1/embeddings report "
                   "(default: the manifest's model identity)")


def serve_from_args(args, prog: str = "ibert-tvm serve") -> int:
    """Check the options, load the model (runtime only), serve until interrupted."""
    import sys

    from .api import load

    if args.api_key is not None and not args.api_key.strip():
        raise IBertTVMError("--api-key is empty")
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise IBertTVMError(f"serve needs starlette and uvicorn ({e}): pip install 'ibert-tvm[serve]' "
                            "(or the bundle's requirements.txt)") from None
    model = load(args.compiled)
    if args.max_batch_tokens < model.max_seq_length:
        raise IBertTVMError(f"--max-batch-tokens {args.max_batch_tokens} is below the model's maximum sequence "
                            f"length {model.max_seq_length}: one text must fit in a model call")
    if not is_loopback(args.host) and args.api_key is None:
        print(f"{prog}: warning: listening on {args.host} with no authentication: anyone who can reach "
              "this address can use the model (set --api-key)", file=sys.stderr)
    serve(model.compiled, args.host, args.port, api_key=args.api_key, max_batch_tokens=args.max_batch_tokens,
          max_client_batch_size=args.max_client_batch_size, payload_limit=args.payload_limit,
          served_model_name=args.served_model_name)
    return 0


def main(argv=None) -> int:
    """``python -m ibert_tvm.deploy.server OUT/ [--host] [--port] ...``: ``ibert-tvm serve`` for a board,
    where only the runtime modules (``ibert-tvm bundle``) are installed."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m ibert_tvm.deploy.server",
                                 description="Serve a compiled model over HTTP (TEI / OpenAI embeddings).")
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        return serve_from_args(args, ap.prog)
    except IBertTVMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    import sys

    sys.exit(main())
