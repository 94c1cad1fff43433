"""i-exp: integer-only ``exp(x)`` for ``x <= 0`` (I-BERT section 3.5, Algorithm 2).

With ``x = -ln2 * z + p``, ``z`` a non-negative integer and ``p`` in (-ln2, 0]:
``exp(x) = 2^-z * exp(p)``, and ``exp(p)`` on that short interval is a 2nd-order polynomial

    L(p) = A * ((p + B) * p + C),   A = 0.35815147, B = 0.96963238 / A, C = 1 / A

(the coefficients of ``transformers``' IntSoftmax; L(0) = 1 exactly, max error 1.9e-3 on
(-ln2, 0]). In integers, for input ``x_int`` with static scale ``S``:

    x0   = floor(-ln2 / S)                  # the integer for -ln2 (negative)
    x    = max(x_int, CLAMP * x0)           # exp(-30 ln2) ~ 1e-9: flush the far tail
    z    = floor(x / x0)                    # >= 0
    r    = x - x0 * z                       # in (x0, 0]: the integer for p
    b    = floor(B / S);  c = floor(C / S^2)
    e    = ((r + b) * r + c) >> z           # scale A * S^2

The shift is a right shift (``transformers`` shifts left by 30 - z and reaches ~2^51; we
keep ``e <= c`` instead). Widths: ``(r + b) * r`` is in [-b * |x0|, 0] and ``e`` in [0, c]
with ``c ~ 2.79 / S^2``; int64 throughout, and the plan proves ``c`` (times the row length,
for softmax sums) fits.
"""

from __future__ import annotations

import math

import numpy as np

from ._common import check_int_array, check_scale, check_te_dtype, i64, prove_fits, width_for

A = 0.35815147  # L(p) = A p^2 + 0.96963238 p + 1.0 (transformers IntSoftmax coefficients)
B = 0.96963238 / A
C = 1.0 / A
CLAMP = 30  # z <= 30: exp values below 2^-30 are flushed (I-BERT's constant)
LN2 = math.log(2.0)


class IntExp:
    """Plan for i-exp of a non-positive integer tensor with scale ``scale``.

    Input: int32/int64 ``x <= 0`` (any magnitude; clamped). Output: int64 ``e`` in [0, c] with
    scale ``out_scale = A * scale^2``; ``one = c`` is the integer for exp(0) = 1.
    """

    def __init__(self, scale):
        self.scale = check_scale("scale", scale)
        if not self.scale < LN2 / 2:  # (the check used to be x0 > -2, which let scales up to ln2 through)
            raise ValueError(f"scale={scale!r} is too coarse for i-exp (needs scale < ln2/2)")
        x0 = math.floor(-LN2 / self.scale)
        self.x0 = x0
        self.b = math.floor(B / self.scale)
        self.c = math.floor(C / self.scale**2)
        prove_fits("i-exp polynomial", self.b * (-x0) + self.c)
        self.out_scale = A * self.scale**2
        self.one = self.c
        self.dtype = width_for(self.c)

    def numpy(self, x) -> np.ndarray:
        x = check_int_array("x", x, ("int32", "int64")).astype(np.int64)
        if x.size and int(x.max()) > 0:
            raise ValueError("i-exp input must be <= 0 (subtract the row maximum first)")
        x = np.maximum(x, CLAMP * self.x0)
        z = x // self.x0
        r = x - self.x0 * z
        return ((r + self.b) * r + self.c) >> z

    def expr(self, x):
        """TIR expression for one int64 element ``x <= 0``."""
        from tvm import tirx

        x = tirx.max(x, i64(CLAMP * self.x0))
        z = tirx.floordiv(x, i64(self.x0))
        r = x - i64(self.x0) * z
        return ((r + i64(self.b)) * r + i64(self.c)) >> z

    def te(self, x):
        from tvm import te

        check_te_dtype("x", x, ("int32", "int64"))
        return te.compute(x.shape, lambda *i: self.expr(x(*i).astype("int64")), name="int_exp")
