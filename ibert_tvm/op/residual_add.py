"""Residual add into the wide LayerNorm domain.

``y = sat_w(Ra(a) + Rb(b))`` where ``a`` is a linear's int32 accumulator (per-output-channel
scale ``S_x * S_w[c]``), ``b`` the int8 residual input (scale ``S_b``), and both are
requantized to the residual scale ``S_res`` (``Ra``: per-channel dyadic, ``Rb``: per-tensor),
each saturated to ``out_bits`` (24 by default) and the sum saturated again. Output int32
holding ``out_bits``-wide values: exactly the input domain ``IntLayerNorm`` proves its bounds on.
Widest intermediate: int64 (the two ``x * m`` products).
"""

from __future__ import annotations

import numpy as np

from ._common import check_bits, check_int_array, check_te_dtype, i64, signed_range
from .requantize import Requantize


class ResidualAdd:
    def __init__(self, ratio_a, ratio_b, *, out_bits: int = 24):
        self.out_bits = check_bits("out_bits", out_bits, 8, 31)
        self.ra = Requantize(ratio_a, in_bits=32, out_bits=self.out_bits, out_dtype="int32")
        self.rb = Requantize(ratio_b, in_bits=8, out_bits=self.out_bits, out_dtype="int32")
        if np.ndim(ratio_b) != 0:
            raise ValueError("ratio_b (the residual input) must be per-tensor")
        self.qmin, self.qmax = signed_range(self.out_bits)

    def params(self):
        return self.ra.params()

    def numpy(self, a, b) -> np.ndarray:
        check_int_array("a", a, ("int32",))
        check_int_array("b", b, ("int8",))
        y = self.ra.numpy(a).astype(np.int64) + self.rb.numpy(b).astype(np.int64)
        return np.clip(y, self.qmin, self.qmax).astype(np.int32)

    def te(self, a, b, m=None, s=None):
        """a: [..., C] int32; b: [..., C] int8; m, s: [C] int32 when ``ratio_a`` is per-channel."""
        from tvm import te, tirx

        check_te_dtype("a", a, ("int32",))
        check_te_dtype("b", b, ("int8",))
        ra, rb = self.ra, self.rb
        lo, hi = i64(self.qmin), i64(self.qmax)

        def sat(v):
            return tirx.max(tirx.min(v, hi), lo)

        def body(*idx):
            c = idx[-1]
            if ra.per_channel:
                sh = s[c].astype("int64")
                va = (a(*idx).astype("int64") * m[c].astype("int64") + (i64(1) << (sh - i64(1)))) >> sh
            else:
                va = (a(*idx).astype("int64") * i64(ra.m) + i64(1 << (ra.s - 1))) >> i64(ra.s)
            vb = (b(*idx).astype("int64") * i64(rb.m) + i64(1 << (rb.s - 1))) >> i64(rb.s)
            return sat(sat(va) + sat(vb)).astype("int32")

        return te.compute(a.shape, body, name="residual_add")
