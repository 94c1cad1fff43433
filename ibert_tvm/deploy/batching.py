"""Many texts through a compiled model in bounded memory: length-sorted batches.

The model's activations grow with ``batch x longest row`` (attention with its square), so
one padded batch of all texts runs out of memory long before the texts do (200 rows of 512
tokens died with ``std::bad_alloc``). Texts are tokenized once, sorted by length (longest
first, stable), cut into batches of at most ``batch_size`` rows, each padded only to its own
longest row, and the outputs are put back in input order.

Every row's output depends on that row alone (padding is masked out of attention and
pooling, exactly, in integers), so the result is identical to running each text by itself;
``tests/deploy/test_batching.py`` checks that bit for bit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from ..errors import IBertTVMError

if TYPE_CHECKING:
    import numpy as np

DEFAULT_BATCH_SIZE = 32


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of at most ``batch_size``, longest rows first (ties in input order)."""
    import numpy as np  # lazy: the CLI imports this module for its defaults only

    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise IBertTVMError(f"batch_size must be a positive integer, got {batch_size!r}")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def run_batched(
    run_ids: Callable[[dict[str, np.ndarray]], np.ndarray],
    tokenizer,
    texts: Sequence[str],
    pairs: Sequence[str] | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    truncate: bool = False,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> np.ndarray:
    """``run_ids`` over ``texts`` (and ``pairs``) in length-sorted batches; rows in input order.
    Per-token outputs (token classification, QA) come back as ``[N, longest text, labels]``, each
    row zero past its own text's tokens.

    ``tokenizer`` is a :class:`~ibert_tvm.support.tokenize.Tokenizer`; ``progress`` wraps the
    iterable of batches (e.g. a tqdm bar).
    """
    import numpy as np

    encs = tokenizer.encode(texts, pairs, truncate=truncate)
    lengths = [len(ids) for ids, _ in encs]
    batches = length_sorted_batches(lengths, batch_size)
    out = None
    for idx in progress(batches) if progress is not None else batches:
        y = run_ids(tokenizer.pad([encs[i] for i in idx]))
        if y.ndim == 3:  # per-token outputs [b, seq of this batch, labels]: zero past each text's end
            if out is None:
                out = np.zeros((len(encs), max(lengths), y.shape[2]), dtype=y.dtype)
            for row, i in enumerate(idx):
                out[i, : lengths[i]] = y[row, : lengths[i]]
            continue
        if out is None:
            out = np.empty((len(encs), *y.shape[1:]), dtype=y.dtype)
        out[idx] = y
    return out
