"""Masked mean pooling (sentence-transformers' mean of token embeddings).

``y[b, h] = round(2^8 * sum_t mask[b,t] x[b,t,h] / max(1, sum_t mask[b,t]))`` (half up),
int32 with scale ``S_x / 2^8``: 8 extra fractional bits keep the mean's precision. ``x`` int8
``[B, S, H]``, ``mask`` ``[B, S]``. Sums are int64 (|sum| <= S * 128). A row with no tokens
gives 0.
"""

from __future__ import annotations

import numpy as np

from ._common import check_int_array, check_te_dtype, i64

FRAC_BITS = 8


def mean_pool_np(x, mask) -> np.ndarray:
    x = check_int_array("x", x, ("int8",)).astype(np.int64)
    mask = check_int_array("mask", mask, ("int32", "int64", "int8")).astype(np.int64)
    keep = (mask != 0).astype(np.int64)
    s = (x * keep[:, :, None]).sum(axis=1)
    n = np.maximum(keep.sum(axis=1, keepdims=True), 1)
    return ((2 * (s << FRAC_BITS) + n) // (2 * n)).astype(np.int32)


def mean_pool_te(x, mask):
    from tvm import te, tirx

    check_te_dtype("x", x, ("int8",))
    check_te_dtype("mask", mask, ("int32", "int64", "int8"))
    B, S, H = x.shape
    t = te.reduce_axis((0, S), name="t")
    keep = lambda b, tt: tirx.Select(mask[b, tt] != tirx.const(0, str(mask.dtype)), i64(1), i64(0))  # noqa: E731
    total = te.compute((B, H), lambda b, h: te.sum(x[b, t, h].astype("int64") * keep(b, t), axis=t), name="pool_sum")
    t2 = te.reduce_axis((0, S), name="t2")
    count = te.compute((B,), lambda b: te.sum(keep(b, t2), axis=t2), name="pool_count")
    return te.compute(
        (B, H),
        lambda b, h: tirx.floordiv(
            i64(2) * (total[b, h] << i64(FRAC_BITS)) + tirx.max(count[b], i64(1)), i64(2) * tirx.max(count[b], i64(1))
        ).astype("int32"),
        name="mean_pool",
    )
