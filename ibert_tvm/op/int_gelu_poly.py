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
Proven widths, with ``B_n = |D_n|``, ``P_k = B_{k+1} * z_max``, ``B_k = |D_k| + ceil(P_k / 2^sh_k)``
(or ``P_k << -sh_k``): every ``P_k`` and ``|out| <= 2^(in_bits-1) << E_0 + B_0`` fit int64. ``F``
is the largest precision (<= F_MAX) for which, besides, every Horner multiplicand ``B_1 .. B_n``
fits int32 (``z_max < 2^20`` always does) and the proven error of Horner's roundings
(``horner_error``: each ``D_k`` rounds by 1/2 and each floor by < 1 unit of ``acc_k``, and an error
in ``acc_{k+1}`` reaches ``acc_k`` times ``z_max / 2^sh_k``) is at most NARROW_ERROR = 1/32 of the
fit's L-inf: then each ``acc * z`` is a 32 x 32 -> 64-bit product (``narrow``; on AVX-512 one
``vpmuldq`` per 8 lanes instead of ``vpmullq``'s three uops; the integers are the same as an int64
product's). That gives ``F`` = 28-30 for degrees 4-6 on every scale a BERT layer has (degree 4:
``horner_error`` ~5e-7, against the fit's 2.1e-3 and an int8 output LSB of ~5e-4). Degrees 7-8
would need ``F`` ~26, where the bound (~4e-4, 1e-3) exceeds their fit's error, so they stay wide,
as do scales below ~1e-8 (``E_0`` capped): ``F`` is then the largest for which the int64 proofs
alone hold (36 unless ``in_bits`` is large), with 64 x 64-bit products (``horner_error`` ~4e-9 for
degree 4, ~1e-6 for degree 8); scales whose best ``F`` is below F_MIN are refused as too fine.

What the code generator sees: LLVM picks ``vpmuldq`` where its sign-bit analysis proves both
operands 32-bit, and that analysis stops six nodes deep, so ``expr`` writes the last multiplicand
``acc_1`` (and the fused requantization's input) as ``sign_extend_32(v) = (v << 32) >> 32``, the
identity on the values the proof bounds; it proves the first steps' operands on its own. (A
``trunc``/``sext`` pair instead was turned into the same shifts by LLVM, or kept as
``vpmovqd``/``vpmovzxdq`` instructions, and was no faster than the wide plan.) MiniLM's FFN-in +
GELU kernel on x86-amx: 32 ``vpmullq`` and 64 ``vpmuldq`` (wide plan: 80 and 16; i-GELU: 32 and 16),
and the model's CPU time moved from 1.05-1.06x of i-GELU's to 1.02-1.03x (MiniLM) and 1.00-1.02x
(BERT-Base; ``bench/ab_outs.py --threads 1 --clock cpu``).

The fused form (``numpy_q`` / ``te_q``, with ``out_scale_q``) requantizes ``out`` to the int8
activation through the dyadic ``Requantize`` (per-channel or not), after two static steps:

    q'  = min(q, C_q)     C_q = max(T_q, ceil((2^out_bits * max(S_q) + B_0 S_out) / S))
    out' = GELU plan of q' (as above) >> pre_shift

The clip changes no output: for ``q > C_q`` both ``q`` and ``C_q`` are beyond twice the largest
representable activation (minus the bump's bound ``B_0``) of every channel, so both saturate to
``qmax`` (``Requantize`` is monotone), and ``C_q >= T_q`` leaves ``z`` unchanged. It bounds
``|out'|`` by ``(C_q << E_0) + B_0``, ~2^(out_bits + 1) times the largest output scale (where
``C_q`` is inside the input domain; else ``out_bound`` stands). If ``pre_shift`` can bring that
bound to 30 bits (31 with a negative value's floor) while it floors less than
2^-NARROW_REQUANT_LOSS of the finest channel's output LSB (``requant_narrow``; the Horner floors
cost about as much, the fit ~2^5 LSBs), the requantization's ``out' * m`` is a 32 x 32 -> 64-bit
product (BERT's int16 GELU inputs, ``S`` ~3e-4 and ``S_q`` ~0.06 / 127: ~2^-14, without the clip
binding; wider inputs need the clip). Otherwise the pre-shift keeps ``int_gelu.REQUANT_IN_BITS``
bits, as ``IntGELU``'s does.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ._common import INT32_MAX, INT64_MAX, check_bits, check_scale, check_scales, i64, prove_fits, sign_extend_32
from .int_gelu import NARROW_REQUANT_BITS, FusedRequantGELU

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
NARROW_REQUANT_LOSS = 12  # a narrow requantization's pre-shift floors < 2^-12 of an output LSB
NARROW_ERROR = 1 / 32  # a narrow plan's Horner floors may add at most this share of the fit's L-inf
F_NARROW_MIN = 24  # below this, the int32 multiplicands are not worth their precision: wide products
E_MAX = 48  # at most this many output fraction bits below S


class _Precision(NamedTuple):
    """The constants and proven bounds of one precision ``F`` (:meth:`IntGELUPoly._plan_f`)."""

    f: int
    e0: int
    d: list  # D_0 .. D_n
    shifts: list  # sh_0 .. sh_{n-1}
    acc_bounds: list  # B_0 .. B_n
    prod_bounds: list  # P_0 .. P_{n-1}
    out_bound: int

    @property
    def fits_int64(self) -> bool:
        return max(max(self.prod_bounds), self.out_bound) <= INT64_MAX

    @property
    def int32_multiplicands(self) -> bool:
        return max(self.acc_bounds[1:], default=0) <= INT32_MAX


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
        fits = [p for p in (self._plan_f(f, c, s_z) for f in range(F_MAX, F_MIN - 1, -1)) if p.fits_int64]
        narrow = [p for p in fits if p.f >= F_NARROW_MIN and p.int32_multiplicands
                  and self._horner_error(p.shifts, p.e0) <= LINF[self.degree] * NARROW_ERROR]
        if not fits:
            raise ValueError(f"scale={scale!r} with in_bits={in_bits} is too fine for the GELU polynomial: "
                             f"fewer than {F_MIN} fraction bits fit int64")
        f, e0, d, shifts, bounds, prods, out_bound = (narrow or fits)[0]
        self.narrow = bool(narrow)
        self.frac_bits, self.e0, self.d, self.shifts = f, e0, d, shifts
        self.horner_error = self._horner_error(shifts, e0)
        self.acc_bounds, self.prod_bounds = bounds, prods
        for k, p in enumerate(prods):
            prove_fits(f"GELU polynomial Horner product {k}", p)
            if self.narrow:
                prove_fits(f"GELU polynomial Horner multiplicand {k + 1}", bounds[k + 1], "int32")
        self.out_bound = out_bound
        prove_fits("GELU polynomial output (relu << E_0) - acc", self.out_bound)
        self.out_scale = self.scale / (1 << e0)
        self._plan_clip(out_scale_q, out_bits)
        self._plan_requant(out_scale_q, out_bits)

    def _horner_error(self, shifts, e0) -> float:
        """Proven bound on |acc_0 - p(z S_z) / S_out| in GELU units: each D_k rounds by <= 1/2 and
        each right shift floors by < 1 (in acc_k units); an error in acc_{k+1} reaches acc_k times
        ``z_max / 2^sh_k``."""
        err = 0.5
        for k in range(self.degree - 1, -1, -1):
            err = err * self.z_max / 2.0 ** shifts[k] + (1.0 if shifts[k] > 0 else 0.0) + (0.5 if k else 0.0)
        return err * self.scale / 2.0**e0

    def _plan_f(self, f, c, s_z) -> _Precision:
        """The constants and proven bounds at precision ``f`` (fraction bits)."""
        e0 = min(max(f + math.floor(math.log2(self.scale)), 0), E_MAX)
        e = [e0 + math.floor(-k * math.log2(s_z)) for k in range(self.degree + 1)]
        d = [round(ck * s_z**k / self.scale * 2.0 ** e[k]) if ck else 0 for k, ck in enumerate(c)]
        shifts = [e[k + 1] - e[k] for k in range(self.degree)]
        bounds, prods = self._bounds(d, shifts)
        out_bound = ((1 << (self.in_bits - 1)) << e0) + bounds[0]
        return _Precision(f, e0, d, shifts, bounds, prods, out_bound)

    def _plan_clip(self, out_scale_q, out_bits):
        """``clip_q`` (C_q of the docstring, or None) and ``requant_bound``, the proven |out'| before
        the pre-shift; ``requant_narrow`` when the pre-shift may take that to 31 bits."""
        self.clip_q, self.requant_bound, self.requant_narrow = None, self.out_bound, False
        if out_scale_q is None:
            return
        s_q = (check_scales("out_scale_q", out_scale_q) if np.ndim(out_scale_q) > 0
               else check_scale("out_scale_q", out_scale_q))
        sat = float(np.max(s_q)) * 2.0**out_bits + self.acc_bounds[0] * self.out_scale
        c_q = max(self.t_q, math.ceil(sat / self.scale))
        if c_q < (1 << (self.in_bits - 1)) - 1:
            self.clip_q = c_q
            self.requant_bound = (c_q << self.e0) + self.acc_bounds[0]
        # narrow if the pre-shift to NARROW_REQUANT_BITS costs at most 2^-NARROW_REQUANT_LOSS of the
        # finest channel's output LSB
        pre = max(0, self.requant_bound.bit_length() - NARROW_REQUANT_BITS)
        self.requant_narrow = (out_bits <= 16
                               and (1 << pre) * self.out_scale <= 2.0**-NARROW_REQUANT_LOSS * float(np.min(s_q)))

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
            v = (sign_extend_32(acc) if self.narrow and k == 0 else acc) * z
            v = v >> i64(s) if s > 0 else (v << i64(-s) if s < 0 else v)
            acc = v + i64(self.d[k]) if self.d[k] else v
        return (tirx.max(q, i64(0)) << i64(self.e0)) - acc
