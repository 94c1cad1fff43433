"""i-GELU: integer-only GELU (I-BERT section 3.4, Algorithm 2).

``GELU(x) = x/2 * (1 + erf(x / sqrt 2))`` with ``erf`` replaced by the polynomial

    L(u) = sign(u) * (a * (min(|u|, -b) + b)^2 + 1),   a = -0.2888, b = -1.769   (paper eq. 8)

(L-inf error of i-GELU vs GELU 0.018 in the paper). For input ``q`` with static scale ``S``
(``u = x / sqrt 2`` has scale ``S_e = S / sqrt 2``):

    b_q = floor(b / S_e)                      # negative
    c_q = floor((1 / a) / S_e^2)              # negative: the erf polynomial divided by a
    y   = sign(q) * ((min(|q|, -b_q) + b_q)^2 + c_q)          # erf(u) / (a S_e^2)
    y   = y >> t                              # t drops excess bits: |y| keeps <= 24 bits
    S_y = a * S_e^2 * 2^t                     # negative
    one = floor(1 / S_y)                      # the integer for 1.0 (negative)
    out = -(q * (y + one))                    # scale S_out = -S * S_y / 2 > 0

(The structure and the floors are those of ``transformers``' ``IntGELU``; the final negation
makes the scale positive, and ``t`` is chosen from the scale instead of a fixed 14.)
Widths: ``(min(|q|,-b_q) + b_q)^2 <= b_q^2 < |c_q|`` so ``|y| <= |c_q|``; after the shift
``|y + one| < 2^25``, so ``|out| < 2^(in_bits - 1 + 25)``: int64, proven by the plan.
The plan also proves ``max(b_q^2, |c_q|) < 2^63`` (scales below ~8.7e-10 are rejected).
Where it also proves every step before the product fits int32 (``in_bits <= 31``,
``max(b_q^2, |c_q|) < 2^31``, ``|y + one| < 2^31``: BERT-sized int16 inputs, ``b_q`` around
-2e4), ``erf_dtype`` is int32: the erf term takes 16 vector lanes instead of 8 and ``q * (y + one)``
is a 32 x 32 -> 64-bit product (the same integers; FFN-in + i-GELU kernels 0.75-0.82x CPU time
on x86 at 1,024 rows).
The fused form requantizes ``out`` straight to an int8 activation: ``requant(out >> p)``, where
the static pre-shift ``p`` leaves at most 40 bits so that the dyadic multiplier keeps >= 22
mantissa bits (the floor costs < 2^-40 of the largest output, in output LSBs).
"""

from __future__ import annotations

import math

import numpy as np

from ._common import (INT32_MAX, check_bits, check_int_array, check_scale, check_scales, check_te_dtype, i64, prove_fits,
                      sign_extend_32)
from .requantize import Requantize

COEF_A = -0.2888  # paper eq. (8)
COEF_B = -1.769
KEEP_BITS = 24  # bits of the erf term kept after the shift t
REQUANT_IN_BITS = 40  # the fused requantization sees at most this many bits of ``out``
NARROW_REQUANT_BITS = 30  # ... or this many where it is narrow (31 with a negative value's floor)


class FusedRequantGELU:
    """What every integer GELU plan shares (this i-GELU, ``int_gelu_poly.IntGELUPoly``): the
    numpy input check, the fused requantization to the int8 activation planned from the proven
    ``out_bound`` / ``out_scale``, and the TE bodies around the plan's one-element ``expr``."""

    #: a plan may clip ``q`` from above before its fused requantization (an input at which every
    #: channel saturates anyway) and so bound ``out`` more tightly: ``int_gelu_poly`` does
    clip_q = None
    requant_bound = None  # the proven |out| the requantization sees before its pre-shift
    requant_narrow = False  # pre-shift it to 31 bits: the requantization multiply is 32 x 32 -> 64

    def _plan_requant(self, out_scale_q, out_bits: int) -> None:
        self.requant = None
        self.pre_shift = 0
        if out_scale_q is not None:
            bound = self.out_bound if self.requant_bound is None else self.requant_bound
            # Requantize forms ``x * m`` in int64, so the wider its input, the fewer mantissa bits
            # ``m`` gets (a 57-bit ``out`` from 32-bit ``q`` would leave ~6 bits, ~1% ratio error).
            # Drop the excess low bits first: ``out >> pre_shift`` keeps <= REQUANT_IN_BITS bits,
            # and the floor costs < 2^pre_shift * out_scale / out_scale_q output LSBs (~2^-40 of
            # the largest output), far below the rounding of the int8 result. A narrow plan keeps
            # 31 bits (|out >> pre_shift| <= bound >> pre_shift + 1, the floor of a negative value).
            keep = NARROW_REQUANT_BITS if self.requant_narrow else REQUANT_IN_BITS
            self.pre_shift = max(0, bound.bit_length() - keep)
            if np.ndim(out_scale_q) > 0:  # per-channel activation scales (last axis)
                ratio = self.out_scale * (1 << self.pre_shift) / check_scales("out_scale_q", out_scale_q)
            else:
                ratio = self.out_scale * (1 << self.pre_shift) / check_scale("out_scale_q", out_scale_q)
            in_bound = bound >> self.pre_shift
            if self.requant_narrow:
                in_bound = -((-bound) >> self.pre_shift)
                prove_fits("GELU output before its requantization", in_bound, "int32")
            self.requant = Requantize(ratio, in_bits=in_bound.bit_length() + 1, out_bits=out_bits)

    def _q_np(self, q) -> np.ndarray:
        """``q`` as int64, checked against the declared ``in_bits`` input domain."""
        q = check_int_array("q", q, ("int8", "int16", "int32")).astype(np.int64)
        lo = -(1 << (self.in_bits - 1))
        if q.size and (int(q.min()) < lo or int(q.max()) > -lo - 1):
            raise ValueError(f"q exceeds the declared {self.in_bits}-bit input domain")
        return q

    def _need_requant(self):
        if self.requant is None:
            raise ValueError("out_scale_q was not given: this plan has no fused requantization")
        return self.requant

    def numpy_q(self, q) -> np.ndarray:
        r = self._need_requant()
        if self.clip_q is not None:
            q = np.minimum(self._q_np(q), self.clip_q).astype(np.int32)  # in_bits <= 32
        return r.numpy(self.numpy(q) >> self.pre_shift)

    def te(self, q):
        from tvm import te

        check_te_dtype("q", q, ("int8", "int16", "int32"))
        return te.compute(q.shape, lambda *i: self.expr(q(*i)), name="int_gelu")

    def params(self) -> dict[str, np.ndarray]:
        """Run-time tensors of a per-channel fused requantization (``m``, ``s`` [C] int32)."""
        return self.requant.params() if self.requant is not None else {}

    def te_q(self, q, m=None, s=None):
        """Fused GELU + requantization to the int8 activation (one kernel).

        With per-channel output scales, ``m``/``s`` are the int32 [C] tensors of ``params()``.
        """
        from tvm import te, tirx

        check_te_dtype("q", q, ("int8", "int16", "int32"))
        r = self._need_requant()

        def body(*i):
            x = q(*i) if self.clip_q is None else tirx.min(q(*i).astype("int64"), i64(self.clip_q))
            wide = self.expr(x) >> i64(self.pre_shift)
            if self.requant_narrow:  # proven to fit int32: the multiply by m is 32 x 32 -> 64
                wide = sign_extend_32(wide)
            return r.expr(wide, i[-1], m, s).astype(r.out_dtype)

        return te.compute(q.shape, body, name="int_gelu_q")


class IntGELU(FusedRequantGELU):
    """Plan for i-GELU of a signed ``in_bits`` integer with scale ``scale``.

    ``numpy``/``te`` give the wide result (int64, scale ``out_scale``). With ``out_scale_q`` set,
    ``numpy_q``/``te_q`` also requantize it to a signed ``out_bits`` activation.
    """

    def __init__(self, scale, *, in_bits: int = 16, out_scale_q=None, out_bits: int = 8):
        self.scale = check_scale("scale", scale)
        self.in_bits = check_bits("in_bits", in_bits, 2, 32)
        s_e = self.scale / math.sqrt(2.0)
        self.b_q = math.floor(COEF_B / s_e)
        self.c_q = math.floor((1.0 / COEF_A) / s_e**2)
        if self.b_q >= 0 or self.c_q >= 0:
            raise ValueError(f"scale={scale!r} is too coarse for i-GELU")
        # |(min(|q|,-b_q) + b_q)^2 + c_q| <= max(b_q^2, -c_q): both are int64 constants/products.
        prove_fits(f"i-GELU erf polynomial (scale={scale!r} is too fine)", max(self.b_q**2, -self.c_q))
        self.t = max(0, (-self.c_q).bit_length() - KEEP_BITS)
        s_y = COEF_A * s_e**2 * (1 << self.t)
        self.one = math.floor(1.0 / s_y)
        self.out_scale = -self.scale * s_y / 2.0
        q_max = 1 << (self.in_bits - 1)
        inner = (-self.c_q >> self.t) + 1 + (-self.one)
        self.out_bound = q_max * inner
        prove_fits("i-GELU product q * (y + one)", self.out_bound)
        # The erf term in int32 (16 vector lanes where int64 gives 8, and ``q * (y + one)`` as a
        # 32 x 32 -> 64-bit product) when every intermediate before that product is proven to
        # fit: |q| <= 2^(in_bits-1) (and -q too), (min(|q|,-b_q) + b_q)^2 <= b_q^2, the erf
        # polynomial in [c_q, b_q^2 + c_q], y after the shift, and y + one. The integers are the
        # same in either width (nothing wraps in either); only the vector width differs.
        self.erf_dtype = "int32" if (
            self.in_bits <= 31
            and max(self.b_q**2, -self.c_q, self.b_q**2 + self.c_q) <= INT32_MAX
            and (max(-self.c_q, self.b_q**2 + self.c_q) >> self.t) + 1 + abs(self.one) <= INT32_MAX
        ) else "int64"
        self._plan_requant(out_scale_q, out_bits)

    # -- numpy reference ------------------------------------------------------------------
    def numpy(self, q) -> np.ndarray:
        q = self._q_np(q)
        a = np.minimum(np.abs(q), -self.b_q)
        y = np.sign(q) * ((a + self.b_q) ** 2 + self.c_q)
        y = y >> self.t
        return -(q * (y + self.one))

    # -- TVM tensor expression ------------------------------------------------------------
    def expr(self, q):
        """TIR expression for one element (``q`` an integer of at most ``in_bits`` bits; the
        result is int64). The erf term is computed in :attr:`erf_dtype` (see ``__init__``)."""
        from tvm import tirx

        dt = self.erf_dtype
        c = lambda v: tirx.const(int(v), dt)  # noqa: E731
        qn = q.astype(dt)
        a = tirx.min(tirx.max(qn, -qn), c(-self.b_q))
        sq = (a + c(self.b_q)) * (a + c(self.b_q)) + c(self.c_q)
        y = tirx.Select(qn > c(0), sq, tirx.Select(qn < c(0), -sq, c(0))) >> c(self.t)  # sign(q) * sq
        return -(q.astype("int64") * (y + c(self.one)).astype("int64"))
