"""i-tanh for the pooler / classification head, built on i-exp.

``tanh(x) = sign(x) * (1 - exp(-2|x|)) / (1 + exp(-2|x|))``. With ``e = i-exp(-2|q|)`` at
the input scale ``S`` and ``one = i-exp(0)`` (its integer for 1.0):

    t   = floor(((one - e) * 2N + (one + e)) / (2 * (one + e)))   # round half up, N = 2^(b-1) - 1
    out = sign(q) * t                                           # scale 1 / N

``0 <= e <= one`` makes ``0 <= t <= N`` by construction: no clamp. (A clamp ``min(t, N)`` after
this division, whose divisor contains the i-exp expression, is folded to the constant ``N`` by
TVM 0.27's simplifier: a miscompile pinned by a strict xfail in ``tests/op/test_int_tanh.py``;
hand-built divisors without the i-exp subexpression compile correctly.) Widths: ``e, one <= c ~ 2.79 / S^2`` (IntExp proves it); the
numerator is < 4N * c: int64. Output: signed ``out_bits`` (int8 by default), scale ``1/N``.
"""

from __future__ import annotations

import numpy as np

from ._common import check_bits, check_int_array, check_te_dtype, i64, prove_fits
from .int_exp import IntExp


class IntTanh:
    def __init__(self, scale, *, in_bits: int = 16, out_bits: int = 8):
        self.in_bits = check_bits("in_bits", in_bits, 2, 32)
        self.out_bits = check_bits("out_bits", out_bits, 2, 16)
        self.exp = IntExp(scale)
        self.levels = (1 << (self.out_bits - 1)) - 1  # N: tanh = +-1 maps to +-N
        prove_fits("i-tanh numerator", 4 * self.levels * self.exp.one)
        self.out_scale = 1.0 / self.levels
        self.out_dtype = "int8" if self.out_bits <= 8 else "int16"

    def numpy(self, q) -> np.ndarray:
        q = check_int_array("q", q, ("int8", "int16", "int32")).astype(np.int64)
        e = self.exp.numpy(-2 * np.abs(q))
        one = np.int64(self.exp.one)
        t = ((one - e) * (2 * self.levels) + (one + e)) // (2 * (one + e))
        return (np.sign(q) * t).astype(self.out_dtype)

    def te(self, q):
        from tvm import te, tirx

        check_te_dtype("q", q, ("int8", "int16", "int32"))
        one = i64(self.exp.one)

        def body(*i):
            v = q(*i).astype("int64")
            e = self.exp.expr(i64(-2) * tirx.max(v, -v))
            t = tirx.floordiv((one - e) * i64(2 * self.levels) + (one + e), i64(2) * (one + e))
            sign = tirx.Select(v > i64(0), i64(1), tirx.Select(v < i64(0), i64(-1), i64(0)))
            return (sign * t).astype(self.out_dtype)

        return te.compute(q.shape, body, name="int_tanh")
