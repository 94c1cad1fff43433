"""i-Softmax with the attention mask applied in the integer domain.

Input: attention scores ``x`` int32 ``[B, ..., L]`` with static scale ``S`` (for ``Q K^T`` the
``1/sqrt(d)`` factor is folded into ``S`` at compile time) and ``mask`` int ``[B, L]`` (1 = keep,
0 = padding, HF's ``attention_mask``). Output: ``uint8`` ``[B, ..., L]`` with scale ``2^-8``.

    rowmax = max_{j: mask[j]} x[j]             # masked entries never win the max
    e[j]   = mask[j] ? i-exp(x[j] - rowmax) : 0  # int64, in [0, c]
    sum    = sum_j e[j]                         # int64, <= L * c  (proven < 2^62)
    f      = floor(2^K / max(sum, 1))           # one integer division per row, K = 62
    y[j]   = min((e[j] * f + 2^(K-9)) >> (K-8), 255)

``e * f <= 2^62`` because ``e <= sum``; the rounding is half up; ``y`` can reach 256 when one
logit dominates, hence the clamp. An all-masked row gives all zeros. The widest intermediate
is ``e * f`` (int64).
"""

from __future__ import annotations

import numpy as np

from ._common import check_bits, check_int_array, check_te_dtype, i64, prove_fits
from .int_exp import IntExp

K = 62
_INT32_MIN = -(1 << 31)


class IntSoftmax:
    """Plan for i-Softmax over the last axis; ``max_len`` bounds the row length."""

    def __init__(self, scale, *, max_len: int = 512, out_bits: int = 8):
        self.exp = IntExp(scale)
        self.out_bits = check_bits("out_bits", out_bits, 2, 16)
        if int(max_len) < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.max_len = int(max_len)
        prove_fits("softmax row sum", self.max_len * self.exp.c)
        self.out_dtype = "uint8" if self.out_bits <= 8 else "uint16"
        self.qmax = (1 << self.out_bits) - 1
        self.out_scale = 2.0**-self.out_bits
        self.shift = K - self.out_bits

    def numpy(self, x, mask) -> np.ndarray:
        x = check_int_array("x", x, ("int32",)).astype(np.int64)
        mask = check_int_array("mask", mask, ("int8", "int32", "int64", "bool", "uint8"))
        if mask.ndim != 2 or mask.shape[0] != x.shape[0] or mask.shape[1] != x.shape[-1]:
            raise ValueError(f"mask must be [B, L] = [{x.shape[0]}, {x.shape[-1]}], got {mask.shape}")
        if x.shape[-1] > self.max_len:
            raise ValueError(f"row length {x.shape[-1]} exceeds max_len {self.max_len}")
        keep = (mask != 0).reshape(mask.shape[0], *([1] * (x.ndim - 2)), mask.shape[1])
        keep = np.broadcast_to(keep, x.shape)
        rowmax = np.where(keep, x, _INT32_MIN).max(axis=-1, keepdims=True)
        xt = np.where(keep, x - rowmax, 0)
        e = np.where(keep, self.exp.numpy(xt), 0)
        total = e.sum(axis=-1, keepdims=True)
        f = (np.int64(1) << K) // np.maximum(total, 1)
        y = (e * f + (np.int64(1) << (self.shift - 1))) >> self.shift
        return np.minimum(y, self.qmax).astype(self.out_dtype)

    def te(self, x, mask):
        from tvm import te, tirx

        check_te_dtype("x", x, ("int32",))
        check_te_dtype("mask", mask, ("int8", "int32", "int64", "bool", "uint8"))
        lead, L = x.shape[:-1], x.shape[-1]

        def keep(idx):
            return mask[idx[0], idx[-1]] != tirx.const(0, str(mask.dtype))

        j = te.reduce_axis((0, L), name="j")
        rowmax = te.compute(
            lead,
            lambda *i: te.max(
                tirx.Select(keep((*i, j)), x(*i, j), tirx.const(_INT32_MIN, "int32")), axis=j
            ),
            name="softmax_max",
        )

        def exp_body(*idx):
            xt = x(*idx).astype("int64") - rowmax(*idx[:-1]).astype("int64")
            return tirx.Select(keep(idx), self.exp.expr(tirx.min(xt, i64(0))), i64(0))

        e = te.compute(x.shape, exp_body, name="softmax_exp")
        j2 = te.reduce_axis((0, L), name="j2")
        total = te.compute(lead, lambda *i: te.sum(e(*i, j2), axis=j2), name="softmax_sum")
        f = te.compute(
            lead, lambda *i: tirx.floordiv(i64(1 << K), tirx.max(total(*i), i64(1))), name="softmax_factor"
        )

        def out_body(*idx):
            y = (e(*idx) * f(*idx[:-1]) + i64(1 << (self.shift - 1))) >> i64(self.shift)
            return tirx.min(y, i64(self.qmax)).astype(self.out_dtype)

        return te.compute(x.shape, out_body, name="softmax_out")
