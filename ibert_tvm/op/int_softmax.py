"""i-Softmax with the attention mask applied in the integer domain.

Input: attention scores ``x`` int32 ``[B, ..., L]`` with static scale ``S`` (for ``Q K^T`` the
``1/sqrt(d)`` factor is folded into ``S`` at compile time) and ``mask`` int ``[B, L]`` (1 = keep,
0 = padding, HF's ``attention_mask``). Output: ``uint8`` ``[B, ..., L]`` with scale ``2^-8``.

    rowmax = max_{j: mask[j]} x[j]             # masked entries never win the max
    e[j]   = mask[j] ? i-exp(x[j] - rowmax) >> t : 0  # int64, in [0, c >> t]
    sum    = sum_j e[j]                         # int64, <= max_len * (c >> t) <= 2^62 (proven)
    f      = floor(2^K / max(sum, 1))           # one integer division per row, K = 62
    y[j]   = min((e[j] * f + 2^(K-9)) >> (K-8), 255)

``e * f <= 2^62`` because ``e <= sum``. ``y`` can reach 256 when one logit dominates, hence the
clamp. An all-masked row gives all zeros. The widest intermediate is ``e * f`` (int64).

Rounding and precision: ``y`` rounds ``e * f / 2^(K-8)`` half up. Because ``f`` is floored,
that value is below the exact ``2^8 e / sum`` by less than ``e / 2^(K-8)`` LSB. The static
pre-shift ``t`` (0 unless the scale is tiny: ``S < ~2e-7`` for 8-bit outputs, ``~3e-6`` for 16) keeps
``c >> t <= 2^(K-8-8)``, so the deficit is < 2^-8 LSB: ``y`` is the round-half-up of the exact
ratio except within 2^-8 LSB of a tie (exact ties, e.g. an all-equal row of 512, round down).
It also keeps ``max_len * (c >> t) <= 2^62`` so that ``f >= 1``. (Without it, small scales gave
``f`` with few significant bits, or ``f = 0`` and an all-zero row once the sum passed 2^62.)

Wider outputs (``out_bits`` 9..16: uint16, scale ``2^-out_bits``; the plan takes them from the
scheme's ``softmax_bits`` / ``layer_softmax_bits``): everything above holds with 8 replaced by
``b = out_bits``.

Row sum bound (:attr:`IntSoftmax.row_sum_bound`, what ``P V``'s int32 accumulator is proven
with): with ``s = K - b``, ``sum_j y[j] <= sum_j (e[j] f + 2^(s-1)) / 2^s
= f * sum / 2^s + n / 2 <= 2^K / 2^s + n / 2 = 2^b + n / 2`` (``n`` kept entries, ``f * sum <=
2^K`` because ``f = floor(2^K / sum)``; the clamp only lowers terms). So a row sums to at most
``2^b + floor(max_len / 2)`` (and to at most ``max_len * (2^b - 1)``), and ``|sum_j y[j] v[j]|
<= 128 * row_sum_bound`` for int8 ``v``: with ``b = 16`` and ``max_len = 512``, 8,421,376 < 2^31,
where the per-element bound ``512 * 65535 * 128`` would exceed int32.
"""

from __future__ import annotations

import numpy as np

from ._common import check_bits, check_int_array, check_te_dtype, i64, prove_fits
from .int_exp import IntExp

# TE stage (= TIR block) names of IntSoftmax.te, in order, which schedules match on
SOFTMAX_BLOCKS = ("softmax_max", "softmax_exp", "softmax_sum", "softmax_factor", "softmax_out")
MAX_BLOCK, EXP_BLOCK, SUM_BLOCK, FACTOR_BLOCK, OUT_BLOCK = SOFTMAX_BLOCKS

K = 62
_INT32_MIN = -(1 << 31)


def _static(d):
    """A TE shape entry as an int, or None if it is symbolic."""
    try:
        return int(d)
    except TypeError:
        return None


class IntSoftmax:
    """Plan for i-Softmax over the last axis; ``max_len`` bounds the row length."""

    def __init__(self, scale, *, max_len: int = 512, out_bits: int = 8):
        self.exp = IntExp(scale)
        self.out_bits = check_bits("out_bits", out_bits, 2, 16)
        if int(max_len) < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.max_len = int(max_len)
        self.out_dtype = "uint8" if self.out_bits <= 8 else "uint16"
        self.qmax = (1 << self.out_bits) - 1
        self.out_scale = 2.0**-self.out_bits
        self.shift = K - self.out_bits
        c = self.exp.c
        # Pre-shift of the exp values: c >> t <= 2^(shift-8) (f's floor costs < 2^-8 LSB) and
        # max_len * (c >> t) <= 2^62 (the row sum fits, f >= 1).
        self.pre_shift = max(0, c.bit_length() - (self.shift - 8), (self.max_len * c).bit_length() - K)
        self.e_max = c >> self.pre_shift
        if self.pre_shift and self.e_max < 1 << (self.out_bits + 8):
            raise ValueError(
                f"max_len={max_len} is too long for {self.out_bits}-bit softmax outputs: the exp values "
                f"would keep only {self.e_max.bit_length()} bits"
            )
        prove_fits("softmax row sum", self.max_len * self.e_max)
        if self.max_len * self.e_max > 1 << K:
            raise ValueError("softmax row sum bound exceeds 2^62")  # unreachable by construction
        # sum_j y[j] over one row (module doc): the bound P V's accumulator is proven with
        self.row_sum_bound = min((1 << self.out_bits) + self.max_len // 2, self.max_len * self.qmax)

    def numpy(self, x, mask) -> np.ndarray:
        x = check_int_array("x", x, ("int32",)).astype(np.int64)
        mask = check_int_array("mask", mask, ("int8", "int32", "int64", "bool", "uint8"))
        if x.ndim < 2:
            raise ValueError(f"x must be [B, ..., L], got shape {x.shape}")
        if mask.ndim != 2 or mask.shape[0] != x.shape[0] or mask.shape[1] != x.shape[-1]:
            raise ValueError(f"mask must be [B, L] = [{x.shape[0]}, {x.shape[-1]}], got {mask.shape}")
        if x.shape[-1] > self.max_len:
            raise ValueError(f"row length {x.shape[-1]} exceeds max_len {self.max_len}")
        keep = (mask != 0).reshape(mask.shape[0], *([1] * (x.ndim - 2)), mask.shape[1])
        keep = np.broadcast_to(keep, x.shape)
        rowmax = np.where(keep, x, _INT32_MIN).max(axis=-1, keepdims=True)
        xt = np.where(keep, x - rowmax, 0)
        e = np.where(keep, self.exp.numpy(xt) >> self.pre_shift, 0)
        total = e.sum(axis=-1, keepdims=True)
        f = (np.int64(1) << K) // np.maximum(total, 1)
        y = (e * f + (np.int64(1) << (self.shift - 1))) >> self.shift
        return np.minimum(y, self.qmax).astype(self.out_dtype)

    def te(self, x, mask):
        from tvm import te, tirx

        check_te_dtype("x", x, ("int32",))
        check_te_dtype("mask", mask, ("int8", "int32", "int64", "bool", "uint8"))
        lead, L = x.shape[:-1], x.shape[-1]
        if len(x.shape) < 2:
            raise ValueError(f"x must be [B, ..., L], got shape {list(x.shape)}")
        if len(mask.shape) != 2:
            raise ValueError(f"mask must be [B, L], got shape {list(mask.shape)}")
        for what, a, b in (("B", x.shape[0], mask.shape[0]), ("L", L, mask.shape[1])):
            da, db = _static(a), _static(b)
            if da is not None and db is not None and da != db:
                raise ValueError(f"mask must be [B, L] like x: {what} is {da} in x, {db} in mask")
        if _static(L) is not None and _static(L) > self.max_len:
            raise ValueError(f"row length {_static(L)} exceeds max_len {self.max_len}")

        def keep(idx):
            m = mask[idx[0], idx[-1]]
            if str(mask.dtype) == "bool":  # (bool != false lowers to an invalid LLVM fcmp on i1)
                return m
            return m != tirx.const(0, str(mask.dtype))

        j = te.reduce_axis((0, L), name="j")
        rowmax = te.compute(
            lead,
            lambda *i: te.max(
                tirx.Select(keep((*i, j)), x(*i, j), tirx.const(_INT32_MIN, "int32")), axis=j
            ),
            name=MAX_BLOCK,
        )

        def exp_body(*idx):
            xt = x(*idx).astype("int64") - rowmax(*idx[:-1]).astype("int64")
            ex = self.exp.expr(tirx.min(xt, i64(0)))
            if self.pre_shift:
                ex = ex >> i64(self.pre_shift)
            return tirx.Select(keep(idx), ex, i64(0))

        e = te.compute(x.shape, exp_body, name=EXP_BLOCK)
        j2 = te.reduce_axis((0, L), name="j2")
        total = te.compute(lead, lambda *i: te.sum(e(*i, j2), axis=j2), name=SUM_BLOCK)
        f = te.compute(
            lead, lambda *i: tirx.floordiv(i64(1 << K), tirx.max(total(*i), i64(1))), name=FACTOR_BLOCK
        )

        def out_body(*idx):
            y = (e(*idx) * f(*idx[:-1]) + i64(1 << (self.shift - 1))) >> i64(self.shift)
            return tirx.min(y, i64(self.qmax)).astype(self.out_dtype)

        return te.compute(x.shape, out_body, name=OUT_BLOCK)
