"""The Python API: ``ibert_tvm.load("out/")`` -> a :class:`Model` with ``encode``, ``encode_int``
and ``predict``, shaped like sentence-transformers.

    import ibert_tvm
    m = ibert_tvm.load("out/")
    e = m.encode(texts, normalize_embeddings=True)   # float32 [N, H], dequantized at the boundary
    q, scale = m.encode_int(texts)                   # the int32 outputs and their scale
    labels = m.predict(texts)                        # classifier heads

Everything runs through :class:`~ibert_tvm.deploy.runtime.CompiledModel.run_text`: length-sorted
batches in bounded memory, rows in input order, each row identical to that text run alone. The
model computes in integers only; floats appear here, at the boundary, as ``int32 x scale``.

What a method needs is decided by the manifest's ``head`` (:data:`HEAD_METHODS`): a head added
later (token logits, QA spans) gets its own entry and methods; calling a method the head does
not serve is an error naming the head and the method to use instead.

:func:`load` does not import the ``tvm`` Python package at all on the CPU: it runs model.so
with ``tvm_ffi`` and ``libtvm_runtime.so`` alone (:mod:`~ibert_tvm.deploy.light`), without
PyTorch, which ``tvm_ffi`` would otherwise import whenever it is installed. Where that is
impossible it falls back to :func:`import_runtime_tvm` (the runtime library only,
``TVM_USE_RUNTIME_LIB=1``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..errors import IBertTVMError
from .batching import DEFAULT_BATCH_SIZE
from .light import import_runtime_tvm  # noqa: F401  (re-exported: the fallback of the light runtime)

if TYPE_CHECKING:
    import numpy as np

    from .runtime import CompiledModel

# head (manifest "head") -> the methods that serve it; encode_int serves every sentence-level head
HEAD_METHODS = {
    "embedding": ("encode", "encode_int"),
    "classifier": ("predict", "encode_int"),
    "token_classifier": ("predict", "encode_int"),  # a label per token (NER)
    "qa": ("predict", "encode_int"),  # the best answer span per (question, context) pair
}
_USE_INSTEAD = {"embedding": "encode()", "classifier": "predict()", "token_classifier": "predict()", "qa": "predict()"}
MAX_ANSWER_TOKENS = 30  # QA spans: as transformers' question-answering pipeline's max_answer_len


def load(path, device: str | None = None, *, serial_thresholds: str | None = None) -> Model:
    """Load a compiled ``out/`` (manifest, every file's sha256, then model.so) for running here.

    ``device``: ``"cpu"``, or a TVM device name; the default is the target's (CPU, or the first
    GPU for a CUDA build). ``serial_thresholds``: ``"spin"`` or ``"passive"``, the table of
    serial/parallel thresholds an x86 model is fed; default ``$IBERT_TVM_SERIAL_THRESHOLDS``, else
    "passive" when ``TVM_THREAD_POOL_SPIN_COUNT=0`` (idle pool threads sleep), else "spin"
    (:func:`~ibert_tvm.deploy.runtime.serial_table`). Errors are
    :class:`~ibert_tvm.errors.IBertTVMError` naming the file (or the bad choice).
    """
    from .runtime import CompiledModel

    # every check of out/ before TVM is even loaded
    return Model(CompiledModel(path, device=device, serial_thresholds=serial_thresholds))


def _progress(show: bool, total: int):
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # a board without tqdm: no bar
        return None
    return lambda it: tqdm(it, total=total, desc="batches", unit="batch", leave=False)


def _split_pairs(texts, pairs) -> tuple[list[str], list[str] | None, bool]:
    """(texts, pairs, single): a str is one text; a list of 2-item tuples/lists is sentence pairs."""
    single = isinstance(texts, str)
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if pairs is None and texts and all(isinstance(t, (tuple, list)) for t in texts):
        if not all(len(t) == 2 for t in texts):
            raise IBertTVMError("a sentence pair must have exactly two texts")
        texts, pairs = [t[0] for t in texts], [t[1] for t in texts]
    elif pairs is not None:
        pairs = [pairs] if isinstance(pairs, str) else list(pairs)
    return texts, pairs, single


class Model:
    """A compiled model ready to use: :func:`load` makes one.

    ``texts`` may be a string (the result then has no batch axis, as in sentence-transformers), a
    list of strings, or a list of ``(text, text)`` sentence pairs; ``pairs=`` gives the second
    texts separately. Every method is thread-safe (one model may serve many threads).
    """

    def __init__(self, compiled: CompiledModel):
        self.compiled = compiled
        m = compiled.manifest
        self.head: str = m["head"]
        self.max_seq_length: int = m["max_seq"]
        self.labels: list[str] = list(m.get("labels") or [])
        self.target: str = m["target"]
        self.scale: float = compiled.output_scale
        # the model dir's sentence-transformers config (recorded by calibrate): how the embedding
        # pools (mean, cls, max; compiled in) and whether a Normalize module follows
        self.pooling: str | None = m.get("pooling")
        self.normalize: bool = bool(m.get("normalize", False))

    @property
    def manifest(self) -> dict:
        return self.compiled.manifest

    @property
    def tokenizer(self):
        return self.compiled.tokenizer

    def __repr__(self) -> str:
        return (f"ibert_tvm.Model({str(self.compiled.dir)!r}, head={self.head!r}, target={self.target!r}, "
                f"max_seq_length={self.max_seq_length})")

    def _require(self, method: str) -> None:
        served = HEAD_METHODS.get(self.head, ())
        if method not in served:
            instead = f"; use {_USE_INSTEAD[self.head]}" if self.head in _USE_INSTEAD else ""
            raise IBertTVMError(f"{method}() does not serve this model's head {self.head!r}{instead}")

    def _run(self, texts, pairs, batch_size, truncate, show_progress_bar) -> tuple[np.ndarray, bool]:
        from .batching import length_sorted_batches

        texts, pairs, single = _split_pairs(texts, pairs)
        if not texts:
            raise IBertTVMError("no text given")
        length_sorted_batches([], batch_size)  # checks batch_size before any work
        n_batches = -(-len(texts) // batch_size)
        q = self.compiled.run_text(texts, pairs, batch_size=batch_size, truncate=truncate,
                                   progress=_progress(show_progress_bar, n_batches))
        return q, single

    def encode_int(self, texts, pairs: Sequence[str] | None = None, *, batch_size: int = DEFAULT_BATCH_SIZE,
                   truncate: bool = False, show_progress_bar: bool = False) -> tuple[np.ndarray, float]:
        """The model's int32 outputs (``[N, H]`` embeddings or ``[N, labels]`` logits) and their
        scale: ``real = q * scale``. Rows in input order, each identical to that text alone."""
        self._require("encode_int")
        q, single = self._run(texts, pairs, batch_size, truncate, show_progress_bar)
        return (q[0] if single else q), self.scale

    def encode(self, texts, pairs: Sequence[str] | None = None, *, batch_size: int = DEFAULT_BATCH_SIZE,
               normalize_embeddings: bool = False, truncate: bool = False, show_progress_bar: bool = False,
               convert_to_numpy: bool = True):
        """Embeddings as float32 ``[N, H]`` (``[H]`` for one string): ``q * scale`` computed in
        float64 and rounded once to float32; with ``normalize_embeddings``, or when the model dir's
        sentence-transformers config ends in a Normalize module (``self.normalize``; as
        sentence-transformers does), each row is divided by its L2 norm instead (the scale cancels;
        an all-zero row stays zero).
        ``convert_to_numpy=False`` returns a list of 1-D arrays. A text over the model's maximum
        sequence length is an error unless ``truncate``."""
        self._require("encode")
        q, single = self._run(texts, pairs, batch_size, truncate, show_progress_bar)
        e = dequantize(q, self.scale, normalize=normalize_embeddings or self.normalize)
        if single:
            return e[0]
        return e if convert_to_numpy else list(e)

    def predict(self, texts, pairs: Sequence[str] | None = None, *, batch_size: int = DEFAULT_BATCH_SIZE,
                truncate: bool = False, show_progress_bar: bool = False):
        """Sequence classification: the label of each text (pair), the manifest's label of the
        largest integer logit (the first on a tie; ``LABEL_<i>`` when the manifest names none);
        regression (one label): the score. Token classification: a label per token. QA (pairs of
        question, context): the ``(start, end)`` token span of the best answer (:func:`best_span`).
        One string (pair) -> one result."""
        import numpy as np

        self._require("predict")
        q, single = self._run(texts, pairs, batch_size, truncate, show_progress_bar)
        if self.head in ("token_classifier", "qa"):
            t, p, _ = _split_pairs(texts, pairs)
            lengths = [len(ids) for ids, _ in self.compiled.tokenizer.encode(t, p, truncate=truncate)]
            if self.head == "qa":
                out = [best_span(q[i, :n]) for i, n in enumerate(lengths)]
            else:
                names = self.labels or [f"LABEL_{i}" for i in range(q.shape[2])]
                out = [[names[int(k)] for k in np.argmax(q[i, :n], axis=1)] for i, n in enumerate(lengths)]
            return out[0] if single else out
        if q.shape[1] == 1:  # a regression head (num_labels 1): the score, dequantized at the boundary
            scores = (q[:, 0].astype(np.float64) * self.scale).tolist()
            return scores[0] if single else scores
        names = self.labels or [f"LABEL_{i}" for i in range(q.shape[1])]
        labels = [names[int(k)] for k in np.argmax(q, axis=1)]
        return labels[0] if single else labels


def token_head_lines(manifest: dict, texts, out, lengths) -> list[str]:
    """Human-readable lines for a per-token head's output ``[N, seq, labels]`` (``run`` and the
    board runner), row ``i`` having ``lengths[i]`` real tokens: the label of each token (token
    classification) or the answer span (QA)."""
    import numpy as np

    labels = manifest.get("labels") or [f"LABEL_{i}" for i in range(out.shape[2])]
    lines = []
    for t, row, n in zip(texts, out, lengths):
        if manifest["head"] == "qa":
            s, e = best_span(row[:n])
            lines.append(f"{t!r}: answer span tokens {s}..{e} (start logit {row[s, 0]}, end logit {row[e, 1]})")
        else:
            lines.append(f"{t!r}: " + " ".join(labels[int(k)] for k in np.argmax(row[:n], axis=1)))
    return lines


def best_span(logits, max_tokens: int = MAX_ANSWER_TOKENS) -> tuple[int, int]:
    """``(start, end)`` token indices (inclusive) of the best answer in one pair's ``[n, 2]`` integer
    start/end logits: the largest ``start + end`` with ``start <= end < start + max_tokens``, the
    first on a tie. Integer sums only (int64): no float, as the caller's span decision should be."""
    import numpy as np

    return span_rule(*(np.asarray(logits[:, k], dtype=np.int64) for k in (0, 1)), max_tokens)


def span_rule(s, e, max_tokens: int = MAX_ANSWER_TOKENS) -> tuple[int, int]:
    """The rule of :func:`best_span` on start/end score vectors of any one dtype (the integer model's
    int64 sums; the FP32 reference's floats, ``token_tasks.qa.best_span_float``)."""
    import numpy as np

    n = len(s)
    best, span = None, (0, 0)
    for i in range(n):
        j = i + int(np.argmax(e[i : min(n, i + max_tokens)]))
        if best is None or s[i] + e[j] > best:
            best, span = s[i] + e[j], (i, j)
    return span


def dequantize(q: np.ndarray, scale: float, *, normalize: bool = False) -> np.ndarray:
    """int32 rows -> float32 rows: ``q * scale`` (or ``q / ||q||``), in float64, rounded once."""
    import numpy as np

    x = np.asarray(q).astype(np.float64)
    if normalize:
        norm = np.sqrt(np.sum(x * x, axis=-1, keepdims=True))
        x = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    else:
        x = x * float(scale)
    return x.astype(np.float32)


def model_id(compiled: CompiledModel) -> str:
    """A name for the model: the manifest's identity (source hash + scheme), else the directory's name."""
    info = compiled.manifest.get("model")
    ident = info.get("identity") if isinstance(info, dict) else None
    return ident if isinstance(ident, str) and ident else Path(compiled.dir).resolve().name
