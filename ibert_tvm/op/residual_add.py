"""Residual add into the wide LayerNorm domain.

``y = sat_w(Ra(a) + Rb(b))`` where ``a`` is a linear's int32 accumulator (per-output-channel
scale ``S_x * S_w[c]``), ``b`` the int8 residual input (scale ``S_b``, per-tensor or
per-channel), and both are requantized to the residual scale ``S_res`` (dyadic),
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
        self.qmin, self.qmax = signed_range(self.out_bits)

    def params(self):
        """Run-time tensors: ``m``/``s`` for ``Ra`` and, when per-channel, ``mb``/``sb`` for ``Rb``."""
        out = dict(self.ra.params())
        out.update({k + "b": v for k, v in self.rb.params().items()})
        return out

    def numpy(self, a, b) -> np.ndarray:
        check_int_array("a", a, ("int32",))
        check_int_array("b", b, ("int8",))
        y = self.ra.numpy(a).astype(np.int64) + self.rb.numpy(b).astype(np.int64)
        return np.clip(y, self.qmin, self.qmax).astype(np.int32)

    def te(self, a, b, m=None, s=None, mb=None, sb=None):
        """a: [..., C] int32; b: [..., C] int8; m, s (and mb, sb): [C] int32 for per-channel ratios."""
        from tvm import te, tirx

        check_te_dtype("a", a, ("int32",))
        check_te_dtype("b", b, ("int8",))
        lo, hi = i64(self.qmin), i64(self.qmax)

        def body(*idx):
            c = idx[-1]
            va = self.ra.expr(a(*idx).astype("int64"), c, m, s)
            vb = self.rb.expr(b(*idx).astype("int64"), c, mb, sb)
            return tirx.max(tirx.min(va + vb, hi), lo).astype("int32")

        return te.compute(a.shape, body, name="residual_add")
