"""Pooling of the token embeddings, as sentence-transformers' ``Pooling`` module does it.

Every pooling returns int32 ``[B, H]`` with scale ``S_x / 2^FRAC_BITS`` (``x`` int8 ``[B, S, H]``
with per-channel scale ``S_x``, ``mask`` ``[B, S]``), so the same pooled requantization follows
any of them; a row with no tokens gives 0.

* ``mean``: ``y[b, h] = round(2^8 * sum_t mask[b,t] x[b,t,h] / max(1, sum_t mask[b,t]))``
  (half up): 8 extra fractional bits keep the mean's precision. Sums are int64
  (``|sum| <= S * 128``).
* ``cls``: ``y[b, h] = x[b, 0, h] * 2^8`` (the first token, ``[CLS]`` / ``<s>``; |y| <= 2^15).
* ``max``: ``y[b, h] = max_{t: mask[b,t] != 0} x[b, t, h] * 2^8`` (|y| <= 2^15).

``POOLINGS`` maps each mode name to its ``(numpy, te)`` pair; :func:`float_pool` is the float
reference of the same modes (what sentence-transformers computes on FP32 token embeddings).
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


def _keep_np(mask) -> np.ndarray:
    mask = check_int_array("mask", mask, ("int32", "int64", "int8")).astype(np.int64)
    return mask != 0


def cls_pool_np(x, mask) -> np.ndarray:
    x = check_int_array("x", x, ("int8",)).astype(np.int64)
    any_token = _keep_np(mask).any(axis=1)
    return np.where(any_token[:, None], x[:, 0, :] << FRAC_BITS, 0).astype(np.int32)


def cls_pool_te(x, mask):
    from tvm import te, tirx

    check_te_dtype("x", x, ("int8",))
    check_te_dtype("mask", mask, ("int32", "int64", "int8"))
    B, S, H = x.shape
    t = te.reduce_axis((0, S), name="t")
    zero = tirx.const(0, str(mask.dtype))
    count = te.compute((B,), lambda b: te.sum(tirx.Select(mask[b, t] != zero, i64(1), i64(0)), axis=t), name="pool_count")
    return te.compute(
        (B, H),
        lambda b, h: tirx.Select(count[b] > i64(0), x[b, 0, h].astype("int32") << tirx.const(FRAC_BITS, "int32"),
                                 tirx.const(0, "int32")),
        name="cls_pool",
    )


def max_pool_np(x, mask) -> np.ndarray:
    x = check_int_array("x", x, ("int8",)).astype(np.int64)
    keep = _keep_np(mask)
    m = np.where(keep[:, :, None], x, -128).max(axis=1)
    return np.where(keep.any(axis=1)[:, None], m << FRAC_BITS, 0).astype(np.int32)


def max_pool_te(x, mask):
    from tvm import te, tirx

    check_te_dtype("x", x, ("int8",))
    check_te_dtype("mask", mask, ("int32", "int64", "int8"))
    B, S, H = x.shape
    zero = tirx.const(0, str(mask.dtype))
    t = te.reduce_axis((0, S), name="t")
    count = te.compute((B,), lambda b: te.sum(tirx.Select(mask[b, t] != zero, i64(1), i64(0)), axis=t), name="pool_count")
    t2 = te.reduce_axis((0, S), name="t2")
    m = te.compute(
        (B, H),
        lambda b, h: te.max(tirx.Select(mask[b, t2] != zero, x[b, t2, h].astype("int32"), tirx.const(-128, "int32")),
                            axis=t2),
        name="pool_max",
    )
    return te.compute(
        (B, H),
        lambda b, h: tirx.Select(count[b] > i64(0), m[b, h] << tirx.const(FRAC_BITS, "int32"), tirx.const(0, "int32")),
        name="max_pool",
    )


POOLINGS = {
    "mean": (mean_pool_np, mean_pool_te),
    "cls": (cls_pool_np, cls_pool_te),
    "max": (max_pool_np, max_pool_te),
}


def float_pool(mode: str, x, mask) -> np.ndarray:
    """sentence-transformers' pooling of float tokens ``x [B, S, H]`` over ``mask [B, S]``, float64
    (a row with no tokens gives 0, as the integer ops do)."""
    x = np.asarray(x, dtype=np.float64)
    keep = (np.asarray(mask) != 0)[:, :, None]
    some = keep.any(axis=1)
    if mode == "mean":
        return (x * keep).sum(axis=1) / np.maximum(keep.sum(axis=1), 1)
    if mode == "cls":
        return np.where(some, x[:, 0, :], 0.0)
    if mode == "max":
        return np.where(some, np.where(keep, x, -np.inf).max(axis=1), 0.0)
    raise ValueError(f"unknown pooling {mode!r}; known: {', '.join(POOLINGS)}")
