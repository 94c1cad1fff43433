"""A closer integer-only GELU: ReLU minus a fitted polynomial bump (issue 15, fifth pass).

I-BERT's i-GELU (``int_gelu.py``) approximates ``erf`` by a clipped quadratic and multiplies it by
``x``: its L-inf error vs GELU is ~0.018. This op writes GELU as

    GELU(x) = relu(x) - h(|x|),      h(t) = t * (1 - Phi(t)) = t/2 * erfc(t / sqrt 2) >= 0

(for x < 0: x Phi(x) = -|x| (1 - Phi(|x|))). ``h`` is a smooth bump (h(0) = 0, max 0.170 at
t = 0.75, h(4) = 1.3e-4), so a polynomial ``p(t) = sum_{k=1..n} c_k t^k`` on ``[0, T]``, held at
``p(T)`` beyond, approximates it with an error that is not multiplied by ``x``. The ``c_k`` are
minimax fits (linear programme on a dense grid, ``p(0) = 0`` so GELU(0) = 0 exactly, the far
field ``t > T`` included); ``POLYS`` lists them with their measured L-inf error vs GELU (float):

    degree 4: 2.07e-3    5: 1.65e-3    6: 6.90e-4    7: 1.29e-4    8: 1.11e-4     (i-GELU: 1.8e-2)

Integer evaluation for input ``q`` (signed ``in_bits``, static scale ``S``), all compile-time
constants computed here from ``S``:

    T_q = floor(T / S)                 # clip point in input LSBs
    r   = max(0, bits(T_q) - Z_BITS)   # drop low bits of t on very fine scales: z < 2^Z_BITS
    z   = min(|q|, T_q) >> r           # scale S_z = S 2^r (z * S_z <= |x|)
    E_0 = clamp(F + floor(log2 S), 0, E_MAX)         # output fraction bits: S_out = S 2^-E_0
    E_k = E_0 + floor(-k log2 S_z)                   # acc_k ~ 2^E_k / S * S_z^k * v_k(x)
    D_k = round(c_k S_z^k / S * 2^E_k)               # D_0 = 0 (c_0 = 0)
    acc = D_n;  acc = shift(acc * z, E_{k+1} - E_k) + D_k   for k = n-1 .. 0   (Horner)
    out = (max(q, 0) << E_0) - acc                   # GELU(x) / S_out, int64

``shift(v, s)`` is ``v >> s`` (arithmetic: floor) for ``s >= 0``, else ``v << -s`` (coarse
scales). ``v_k`` are Horner's partial sums of ``p`` in ``x``; ``acc_0 ~ p(z S_z) / S_out``.
``F`` is the largest precision (<= F_MAX) for which every intermediate is *proven* to fit int64:
with ``B_n = |D_n|``, ``P_k = B_{k+1} * z_max``, ``B_k = |D_k| + ceil(P_k / 2^sh_k)`` (or
``P_k << -sh_k``), the plan checks every ``P_k`` and ``|out| <= 2^(in_bits-1) << E_0 + B_0``
against int64; scales whose best ``F`` is below F_MIN are refused as too fine. Horner's floors
cost < (n + 1) 2^-F T^n / ... in GELU units: ~1e-7 at ``F = 34`` (measured in the tests).
The fused form requantizes ``out`` to the int8 activation exactly as ``IntGELU`` does: a static
pre-shift to at most ``int_gelu.REQUANT_IN_BITS`` bits, then the dyadic ``Requantize`` (per-channel or not).
"""

from __future__ import annotations

import math

import numpy as np

from ._common import INT64_MAX, check_bits, check_scale, i64, prove_fits
from .int_gelu import FusedRequantGELU

# degree -> (T, (c_1, ..., c_n)): p(t) = sum_k c_k t^k ~ t/2 erfc(t/sqrt 2) on [0, T] (minimax, see above)
POLYS = {
    4: (3.25, (0.5298458925239812, -0.5309974366702549, 0.1792821913728732, -0.02031017855003745)),
    5: (3.1, (0.5246523672032891, -0.511771306414095, 0.157728529349584, -0.01098949716077665,
              -0.0013655350599444942)),
    6: (3.4, (0.5102352181799192, -0.44471905566936876, 0.056661428321903025, 0.055362446503373006,
              -0.021109927052980194, 0.0021833982246467643)),
    7: (3.85, (0.4987416164363752, -0.382412696260355, -0.05679342080491236, 0.15087275428679542,
               -0.061904758197978596, 0.01077504196951041, -0.000708657143804589)),
    8: (3.9, (0.49696405681239736, -0.37277249705032395, -0.0760044722108496, 0.16986147561518544,
              -0.0722205347867172, 0.013909645723960634, -0.0012082064141415065, 3.2513099864662735e-05)),
}
LINF = {4: 2.07e-3, 5: 1.65e-3, 6: 6.90e-4, 7: 1.29e-4, 8: 1.11e-4}  # float fit vs GELU, all x
Z_BITS = 20  # the clipped |q| is cut to < 2^Z_BITS bits (resolution T / 2^20 ~ 4e-6 at worst)
F_MAX, F_MIN = 36, 16  # fraction bits of the Horner accumulator (relative to 1.0 in GELU units)
E_MAX = 48  # at most this many output fraction bits below S


def _shift(v: int, s: int) -> int:
    return v >> s if s >= 0 else v << -s


def _shift_bound(p: int, s: int) -> int:
    """Largest |shift(v, s)| for |v| <= p (floor of a negative value rounds away from zero)."""
    return -((-p) >> s) if s >= 0 else p << -s


class IntGELUPoly(FusedRequantGELU):
    """Plan for GELU = relu - p(|x|) of a signed ``in_bits`` integer with scale ``scale``.

    Same interface as :class:`~ibert_tvm.op.int_gelu.IntGELU`: ``numpy``/``te`` give the wide
    result (int64, scale ``out_scale``); with ``out_scale_q``, ``numpy_q``/``te_q`` requantize it
    to a signed ``out_bits`` activation (per-channel scales on the last axis: ``params()``).
    """

    def __init__(self, scale, *, in_bits: int = 16, out_scale_q=None, out_bits: int = 8, degree: int = 7):
        self.scale = check_scale("scale", scale)
        self.in_bits = check_bits("in_bits", in_bits, 2, 32)
        if not isinstance(degree, (int, np.integer)) or isinstance(degree, bool) or int(degree) not in POLYS:
            raise ValueError(f"degree must be one of {sorted(POLYS)}, got {degree!r}")
        self.degree = int(degree)
        self.T, self.coefs = POLYS[self.degree]
        self.t_q = math.floor(self.T / self.scale)  # clip point (0 on scales coarser than T)
        self.r = max(0, self.t_q.bit_length() - Z_BITS)
        self.z_max = self.t_q >> self.r
        s_z = self.scale * (1 << self.r)
        c = (0.0, *self.coefs)  # c_0 = 0: GELU(0) = 0 exactly
        for f in range(F_MAX, F_MIN - 1, -1):
            e0 = min(max(f + math.floor(math.log2(self.scale)), 0), E_MAX)
            e = [e0 + math.floor(-k * math.log2(s_z)) for k in range(self.degree + 1)]
            d = [round(ck * s_z**k / self.scale * 2.0 ** e[k]) if ck else 0 for k, ck in enumerate(c)]
            shifts = [e[k + 1] - e[k] for k in range(self.degree)]
            bounds, prods = self._bounds(d, shifts)
            out_bound = ((1 << (self.in_bits - 1)) << e0) + bounds[0]
            if max(max(prods), out_bound) <= INT64_MAX:
                break
        else:
            raise ValueError(f"scale={scale!r} with in_bits={in_bits} is too fine for the GELU polynomial: "
                             f"fewer than {F_MIN} fraction bits fit int64")
        self.frac_bits, self.e0, self.d, self.shifts = f, e0, d, shifts
        self.acc_bounds, self.prod_bounds = bounds, prods
        for k, p in enumerate(prods):
            prove_fits(f"GELU polynomial Horner product {k}", p)
        self.out_bound = out_bound
        prove_fits("GELU polynomial output (relu << E_0) - acc", self.out_bound)
        self.out_scale = self.scale / (1 << e0)
        self._plan_requant(out_scale_q, out_bits)

    def _bounds(self, d, shifts):
        """Proven |acc_k| bounds (index k) and |acc_{k+1} * z| product bounds (index k)."""
        n = self.degree
        acc = [0] * (n + 1)
        prods = [0] * n
        acc[n] = abs(d[n])
        for k in range(n - 1, -1, -1):
            prods[k] = acc[k + 1] * self.z_max
            acc[k] = abs(d[k]) + _shift_bound(prods[k], shifts[k])
        return acc, prods

    # -- numpy reference ------------------------------------------------------------------
    def numpy(self, q) -> np.ndarray:
        q = self._q_np(q)
        z = np.minimum(np.abs(q), self.t_q) >> self.r
        acc = np.full(q.shape, self.d[-1], dtype=np.int64)
        for k in range(self.degree - 1, -1, -1):
            v = acc * z
            s = self.shifts[k]
            acc = (v >> s if s >= 0 else v << -s) + self.d[k]
        return (np.maximum(q, 0) << self.e0) - acc

    # -- TVM tensor expression ------------------------------------------------------------
    def expr(self, q):
        """TIR expression for one element (``q`` an integer of at most ``in_bits`` bits; int64 result)."""
        from tvm import tirx

        q = q.astype("int64")
        z = tirx.min(tirx.max(q, -q), i64(self.t_q))
        if self.r:
            z = z >> i64(self.r)
        acc = i64(self.d[-1])
        for k in range(self.degree - 1, -1, -1):
            s = self.shifts[k]
            v = acc * z
            v = v >> i64(s) if s > 0 else (v << i64(-s) if s < 0 else v)
            acc = v + i64(self.d[k]) if self.d[k] else v
        return (tirx.max(q, i64(0)) << i64(self.e0)) - acc
