"""Integer matrix products: int8 x int8 -> int32 (+ int32 bias), and the attention products.

* ``linear``: ``y[..., n] = sum_k x[..., k] * w[n, k] + bias[n]`` with ``x`` int8 (or uint8),
  ``w`` int8 ``[N, K]`` (PyTorch ``nn.Linear`` layout), ``bias`` int32 ``[N]``, ``y`` int32.
* ``batch_matmul``: ``[..., M, K] x [..., N, K]^T -> [..., M, N]`` int32 (attention scores
  ``Q K^T``; and ``P V`` with ``V`` passed pre-transposed).

Widths: each product is at most ``|x|max * 128`` and the sum of ``K`` of them plus the bias must
stay inside int32. ``check_accumulator`` proves that for the static ``K`` (or the maximum
sequence length for ``P V``); int8 x int8 allows K <= 65535 with |bias| <= 2^30. ``P V`` with a
uint16 ``P`` (i-softmax with ``out_bits`` > 8) is proven with the softmax's row sum bound
(``row_sum``: ``sum_k |a[..., k]|``, :attr:`~ibert_tvm.op.int_softmax.IntSoftmax.row_sum_bound`)
instead of ``K * max|a|``: ``|acc| <= row_sum * 128``.
"""

from __future__ import annotations

import numpy as np

from ._common import INT32_MAX, check_int_array, check_te_dtype

_X_DTYPES = ("int8", "uint8")
_P_DTYPES = ("int8", "uint8", "uint16")  # batch_matmul's A given a row_sum: uint16 for a wide softmax output
_W_DTYPES = ("int8",)
_MAG = {"int8": 128, "uint8": 255, "uint16": 65535}
BIAS_BOUND = 1 << 30  # |bias| a linear accepts (quantization clips to it)
# TE stage (= TIR block) names, which schedules match on
LINEAR_ACC_BLOCK, LINEAR_BIAS_BLOCK = "linear_acc", "linear_bias"  # linear_te: x W^T, then + b
BATCH_MATMUL_BLOCK = "batch_matmul"  # batch_matmul_te: the attention products


def check_accumulator(k: int, x_dtype: str = "int8", w_dtype: str = "int8", bias_bound: int = 0, *,
                      row_sum: int | None = None) -> None:
    """Prove ``k`` products plus a bias fit int32; raise ``ValueError`` otherwise. ``row_sum``: a
    proven bound on ``sum_k |x[..., k]|`` (a softmax row), used instead of ``k * max|x|``."""
    total = int(k) * _MAG[x_dtype] if row_sum is None else min(int(row_sum), int(k) * _MAG[x_dtype])
    bound = total * _MAG[w_dtype] + int(bias_bound)
    if bound > INT32_MAX:
        rows = "" if row_sum is None else f" with rows summing to <= {row_sum}"
        raise ValueError(
            f"an int32 accumulator over K={k} {x_dtype}x{w_dtype} products{rows} (+bias <= {bias_bound}) "
            f"can reach {bound} > 2^31-1"
        )


def _dim(d):
    """A TE shape entry as an int, or None if it is symbolic."""
    try:
        return int(d)
    except TypeError:
        return None


def _check_same(what: str, a, b) -> None:
    """Raise if two (possibly symbolic) extents are both static and differ."""
    da, db = _dim(a), _dim(b)
    if da is not None and db is not None and da != db:
        raise ValueError(f"{what}: {da} != {db}")


# -- numpy reference ----------------------------------------------------------------------
def linear_np(x, w, bias=None) -> np.ndarray:
    x = check_int_array("x", x, _X_DTYPES)
    w = check_int_array("w", w, _W_DTYPES)
    if w.ndim != 2:
        raise ValueError(f"w must be [N, K], got shape {w.shape}")
    if x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"x has K={x.shape[-1] if x.ndim else None}, w has K={w.shape[1]}")
    check_accumulator(w.shape[1], x.dtype.name, "int8", BIAS_BOUND if bias is not None else 0)
    y = np.matmul(x.astype(np.int64), w.astype(np.int64).T)
    if bias is not None:
        bias = check_int_array("bias", bias, ("int32",))
        if bias.shape != (w.shape[0],):
            raise ValueError(f"bias must have shape [{w.shape[0]}], got {bias.shape}")
        if np.abs(bias.astype(np.int64)).max(initial=0) > BIAS_BOUND:
            raise ValueError("|bias| must be <= 2^30")
        y = y + bias.astype(np.int64)
    return y.astype(np.int32)


def batch_matmul_np(a, b, *, row_sum: int | None = None) -> np.ndarray:
    """``a`` [..., M, K] int8/uint8, ``b`` [..., N, K] int8 -> [..., M, N] int32. ``row_sum`` (see
    :func:`check_accumulator`; checked against ``a``) also admits a uint16 ``a`` (a wide softmax output)."""
    a = check_int_array("a", a, _X_DTYPES if row_sum is None else _P_DTYPES)
    b = check_int_array("b", b, _W_DTYPES)
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-1]:
        raise ValueError(f"a [..., M, K] and b [..., N, K] must share K, got {a.shape} and {b.shape}")
    check_accumulator(a.shape[-1], a.dtype.name, "int8", row_sum=row_sum)
    if row_sum is not None and a.size and np.abs(a.astype(np.int64)).sum(axis=-1).max() > row_sum:
        raise ValueError(f"a row of a sums to {np.abs(a.astype(np.int64)).sum(axis=-1).max()} > the proven {row_sum}")
    return np.matmul(a.astype(np.int64), np.swapaxes(b.astype(np.int64), -1, -2)).astype(np.int32)


# -- TVM tensor expressions -----------------------------------------------------------------
def linear_te(x, w, bias=None):
    """x: [..., K] int8/uint8, w: [N, K] int8, bias: [N] int32 -> [..., N] int32."""
    from tvm import te

    check_te_dtype("x", x, _X_DTYPES)
    check_te_dtype("w", w, _W_DTYPES)
    if len(w.shape) != 2:
        raise ValueError(f"w must be [N, K], got shape {list(w.shape)}")
    _check_same("x and w must share K", x.shape[-1], w.shape[1])
    k_dim = int(w.shape[1])
    check_accumulator(k_dim, str(x.dtype), "int8", BIAS_BOUND if bias is not None else 0)
    k = te.reduce_axis((0, k_dim), name="k")

    def mac(*idx):
        *lead, n = idx
        return te.sum(x(*lead, k).astype("int32") * w[n, k].astype("int32"), axis=k)

    acc = te.compute((*x.shape[:-1], w.shape[0]), mac, name=LINEAR_ACC_BLOCK)
    if bias is None:
        return acc
    check_te_dtype("bias", bias, ("int32",))
    if len(bias.shape) != 1:
        raise ValueError(f"bias must be [N], got shape {list(bias.shape)}")
    _check_same("bias must have N entries", bias.shape[0], w.shape[0])
    return te.compute(acc.shape, lambda *idx: acc(*idx) + bias[idx[-1]], name=LINEAR_BIAS_BLOCK)


def batch_matmul_te(a, b, *, max_k: int | None = None, row_sum: int | None = None):
    """a: [..., M, K] int8/uint8, b: [..., N, K] int8 -> [..., M, N] int32.

    ``K`` may be symbolic (``P V`` sums over the sequence); then ``max_k`` bounds it. ``row_sum``:
    a proven bound on ``sum_k |a[..., k]|`` (:func:`check_accumulator`), which also admits a uint16
    ``a`` (a wide softmax output).
    """
    from tvm import te, tirx

    check_te_dtype("a", a, _X_DTYPES if row_sum is None else _P_DTYPES)
    check_te_dtype("b", b, _W_DTYPES)
    if len(a.shape) < 2 or len(a.shape) != len(b.shape):
        raise ValueError(f"a [..., M, K] and b [..., N, K] need the same rank >= 2, got {list(a.shape)}, {list(b.shape)}")
    _check_same("a and b must share K", a.shape[-1], b.shape[-1])
    for da, db in zip(a.shape[:-2], b.shape[:-2]):
        _check_same("a and b must share the batch dimensions", da, db)
    k_extent = a.shape[-1]
    if isinstance(k_extent, tirx.IntImm):
        check_accumulator(int(k_extent), str(a.dtype), "int8", row_sum=row_sum)
    elif max_k is None:
        raise ValueError("a symbolic reduction length needs max_k to prove the int32 bound")
    else:
        check_accumulator(max_k, str(a.dtype), "int8", row_sum=row_sum)
    k = te.reduce_axis((0, k_extent), name="k")

    def mac(*idx):
        *lead, i, j = idx
        return te.sum(a(*lead, i, k).astype("int32") * b(*lead, j, k).astype("int32"), axis=k)

    return te.compute((*a.shape[:-1], b.shape[-2]), mac, name=BATCH_MATMUL_BLOCK)
