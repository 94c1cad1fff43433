"""Dyadic requantization: ``y = sat((x * m + 2^(s-1)) >> s)``.

Changing the scale of an integer tensor from ``S_in`` to ``S_out`` multiplies it by the real
ratio ``r = S_in / S_out``. At compile time ``r`` becomes a dyadic number ``m / 2^s`` (integer
``m``, shift ``s``); at run time only an integer multiply, add and arithmetic shift remain.

Rounding rule (documented, and the same in numpy and TIR): **round half up**, i.e. toward
+infinity on ties: ``floor(x * m / 2^s + 1/2)``, computed as ``(x*m + 2^(s-1)) >> s`` with an
arithmetic (flooring) shift. The result saturates to a signed ``out_bits`` range.

Widths: ``x`` is int8/int16/int32 (or int64 with a declared bound ``in_bound``). ``m`` has at
most 31 bits and is chosen so that ``in_bound * m + 2^(s-1) < 2^63``: the product is formed in
int64 and never wraps. For int32 inputs (``in_bound = 2^31``) ``m`` gets the full 31 bits
(relative error of ``m / 2^s`` vs ``r`` <= 2^-31); wider inputs get fewer mantissa bits.

Conversion ``r -> (m, s)`` (``dyadic_from_ratio``): with ``r = f * 2^e``, ``f`` in [1/2, 1) (frexp),
``m = round_half_up(f * 2^p)`` for ``p`` mantissa bits and ``s = p - e``. When rounding carries
``m`` to ``2^p`` exactly, it is halved and ``s`` decremented (the case the transformers
reference does not handle). ``s`` must end up in [1, 62]; a ratio too small for that is
flushed toward ``m`` with fewer bits, a ratio too large raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ._common import (
    INT64_MAX,
    check_bits,
    check_int_array,
    check_scale,
    check_scales,
    check_te_dtype,
    i64,
    sign_extend_32,
    signed_range,
    storage_dtype,
)

_MAX_SHIFT = 62
_IN_DTYPES = ("int8", "uint8", "int16", "int32", "int64")


@dataclass(frozen=True)
class Dyadic:
    """The dyadic number ``m / 2^s`` (``m >= 0``, ``1 <= s <= 62``)."""

    m: int
    s: int

    @property
    def value(self) -> Fraction:
        return Fraction(self.m, 1 << self.s)


def mantissa_bits(in_bound: int) -> int:
    """Largest p <= 31 with ``in_bound * (2^p - 1) + 2^61 <= 2^63 - 1`` (no int64 wrap)."""
    if in_bound < 1:
        raise ValueError(f"in_bound must be >= 1, got {in_bound}")
    for p in range(31, 0, -1):
        if in_bound * ((1 << p) - 1) + (1 << (_MAX_SHIFT - 1)) <= INT64_MAX:
            return p
    raise ValueError(f"in_bound {in_bound} is too large to requantize in int64")


def dyadic_from_ratio(ratio, *, in_bound: int = 1 << 31, name: str = "ratio") -> Dyadic:
    """Convert a positive real scale ratio to ``Dyadic(m, s)`` with ``m / 2^s ~= ratio``.

    ``in_bound`` is the largest ``|x|`` the requantization will see; it caps the mantissa
    width so that ``x * m`` fits int64. Rounding of the mantissa is half up, on the exact
    binary value of the float64 ratio.
    """
    r = check_scale(name, ratio)
    p = mantissa_bits(in_bound)
    exact = Fraction(r)
    # frexp: r = f * 2^e with f in [1/2, 1)
    _, e = np.frexp(r)
    e = int(e)
    s = p - e
    m = _round_half_up(exact * (Fraction(1 << s) if s >= 0 else Fraction(1, 1 << -s)))
    if m == 1 << p:  # mantissa rounded up to 2^p: halve it, one less shift
        m >>= 1
        s -= 1
    if s < 1:
        raise ValueError(
            f"{name}={r!r} is too large to requantize an input bounded by {in_bound} "
            f"(needs a left shift; max supported ratio ~2^{p - 1})"
        )
    if s > _MAX_SHIFT:
        # Tiny ratio: keep s = 62 and round m at that precision (may become 0: output is 0).
        m = _round_half_up(exact * (1 << _MAX_SHIFT))
        s = _MAX_SHIFT
    return Dyadic(int(m), int(s))


def _static_eq(dim, n: int, allow_symbolic: bool = False) -> bool:
    """A TE shape entry equals ``n`` (a symbolic entry passes only if ``allow_symbolic``)."""
    try:
        return int(dim) == n
    except TypeError:
        return allow_symbolic


def _round_half_up(q: Fraction) -> int:
    return int((q + Fraction(1, 2)).__floor__())


class Requantize:
    """Plan for ``y = sat_out_bits((x * m + 2^(s-1)) >> s)``.

    Args:
        ratio: ``S_in / S_out``; a scalar (per-tensor) or a 1-D array (per-channel along the
            last axis of ``x``).
        in_bits: the input domain is signed ``in_bits`` wide (|x| <= 2^(in_bits-1)); up to 62.
        out_bits: saturate to signed ``out_bits`` (2..32); stored in the narrowest dtype
            (``out_dtype`` overrides, e.g. 24-bit values held in int32).

    Shapes/dtypes: ``x`` [..., C] int8/int16/int32/int64 -> [..., C] ``out_dtype``.
    Widest intermediate: int64 (``x * m``), proven not to wrap by ``mantissa_bits``.
    """

    def __init__(self, ratio, *, in_bits: int = 32, out_bits: int = 8, out_dtype: str | None = None):
        self.in_bits = check_bits("in_bits", in_bits, 2, 62)
        self.out_bits = check_bits("out_bits", out_bits, 2, 32)
        self.out_dtype = out_dtype or storage_dtype(self.out_bits)
        _widths = {"int8": 8, "int16": 16, "int32": 32, "int64": 64}
        if self.out_dtype not in _widths or _widths[self.out_dtype] < self.out_bits:
            raise ValueError(f"out_dtype {self.out_dtype!r} cannot hold signed {self.out_bits}-bit values")
        self.qmin, self.qmax = signed_range(self.out_bits)
        in_bound = 1 << (self.in_bits - 1)
        self.per_channel = np.ndim(ratio) > 0
        if self.per_channel:
            ratios = check_scales("ratio", ratio)
            ds = [dyadic_from_ratio(r, in_bound=in_bound, name=f"ratio[{i}]") for i, r in enumerate(ratios)]
            self.m = np.array([d.m for d in ds], dtype=np.int32)
            self.s = np.array([d.s for d in ds], dtype=np.int32)
        else:
            d = dyadic_from_ratio(ratio, in_bound=in_bound)
            self.m, self.s = d.m, d.s

    @property
    def channels(self) -> int | None:
        return len(self.m) if self.per_channel else None

    @classmethod
    def concat(cls, parts, channels) -> "Requantize":
        """One per-channel plan for the channel-wise concatenation of ``parts`` (``channels[i]``
        channels each): channel ``c`` of part ``i`` keeps that part's ``m`` and ``s``, so the
        integers are each part's (a per-tensor part's ``(m, s)`` repeated over its channels: the
        same rounding expression). The parts must agree on ``in_bits``, ``out_bits`` and
        ``out_dtype``; each ``m`` was proven against that ``in_bits`` when its part was made, and
        the concatenation does not change any channel's ``x * m``."""
        parts, channels = list(parts), [int(c) for c in channels]
        if not parts or len(parts) != len(channels):
            raise ValueError("concat needs one channel count per part")
        first = parts[0]
        for p in parts[1:]:
            if (p.in_bits, p.out_bits, p.out_dtype) != (first.in_bits, first.out_bits, first.out_dtype):
                raise ValueError("concat: the parts differ in in_bits, out_bits or out_dtype: "
                                 f"{(p.in_bits, p.out_bits, p.out_dtype)} vs {(first.in_bits, first.out_bits, first.out_dtype)}")
        ms, ss = [], []
        for p, c in zip(parts, channels):
            if p.per_channel and len(p.m) != c:
                raise ValueError(f"concat: a part has {len(p.m)} channels, expected {c}")
            ms.append(np.asarray(p.m, dtype=np.int32) if p.per_channel else np.full(c, p.m, dtype=np.int32))
            ss.append(np.asarray(p.s, dtype=np.int32) if p.per_channel else np.full(c, p.s, dtype=np.int32))
        out = cls.__new__(cls)
        out.in_bits, out.out_bits, out.out_dtype = first.in_bits, first.out_bits, first.out_dtype
        out.qmin, out.qmax = first.qmin, first.qmax
        out.per_channel = True
        out.m, out.s = np.concatenate(ms), np.concatenate(ss)
        return out

    # -- numpy reference ------------------------------------------------------------------
    def numpy(self, x) -> np.ndarray:
        x = check_int_array("x", x, _IN_DTYPES)
        lo, hi = signed_range(self.in_bits)
        if x.size and (int(x.min()) < lo or int(x.max()) > hi):
            raise ValueError(f"x exceeds the declared {self.in_bits}-bit input domain")
        if self.per_channel and x.shape[-1] != len(self.m):
            raise ValueError(f"x has {x.shape[-1]} channels, plan has {len(self.m)}")
        m = np.asarray(self.m, dtype=np.int64)
        s = np.asarray(self.s, dtype=np.int64)
        y = (x.astype(np.int64) * m + (np.int64(1) << (s - 1))) >> s
        return np.clip(y, self.qmin, self.qmax).astype(self.out_dtype)

    # -- TVM tensor expression ------------------------------------------------------------
    def te(self, x, m=None, s=None):
        """``x``: te.Tensor. Per-channel plans also take ``m``, ``s``: int32 te.Tensors [C]."""
        from tvm import te

        check_te_dtype("x", x, _IN_DTYPES)
        narrow = str(x.dtype) != "int64"

        def widen(v):
            # an int32 (or narrower) input, e.g. a linear's accumulator + bias: sign_extend_32 lets LLVM
            # see it, and m (int32), as 32-bit operands: x * m is one vpmuldq per 8 lanes, not a vpmullq
            # (3 uops); the same integers (the identity on int32 values)
            v = v.astype("int64")
            return sign_extend_32(v) if narrow else v

        if self.per_channel:
            if m is None or s is None:
                raise ValueError("a per-channel Requantize needs the m and s tensors")
            check_te_dtype("m", m, ("int32", "int64"))
            check_te_dtype("s", s, ("int32", "int64"))
            c = len(self.m)
            for name, t in (("m", m), ("s", s)):
                if len(t.shape) != 1 or not _static_eq(t.shape[0], c):
                    raise ValueError(f"{name} must have shape [{c}], got {list(t.shape)}")
            if not _static_eq(x.shape[-1], c, allow_symbolic=True):
                raise ValueError(f"x has {x.shape[-1]} channels, plan has {c}")

            def body(*idx):
                return self.expr(widen(x(*idx)), idx[-1], m, s).astype(self.out_dtype)

        else:

            def body(*idx):
                return self.expr(widen(x(*idx))).astype(self.out_dtype)

        return te.compute(x.shape, body, name="requantize")

    def expr(self, v, c=None, m=None, s=None):
        """TIR expression: the saturated requantization of one int64 element ``v`` (int64 result).

        Per-channel plans need the channel index ``c`` and the ``m``/``s`` tensors. Fused kernels
        (GELU, residual add, pooling) call this so the rounding rule is written once.
        """
        from tvm import tirx

        lo, hi = i64(self.qmin), i64(self.qmax)
        if self.per_channel:
            if c is None or m is None or s is None:
                raise ValueError("a per-channel Requantize needs the channel index and the m and s tensors")
            sh = s[c].astype("int64")
            v = (v * m[c].astype("int64") + (i64(1) << (sh - i64(1)))) >> sh
        else:
            v = (v * i64(self.m) + i64(1 << (self.s - 1))) >> i64(self.s)
        return tirx.max(tirx.min(v, hi), lo)

    def params(self) -> dict[str, np.ndarray]:
        """The integer tensors a per-channel plan needs at run time."""
        if not self.per_channel:
            return {}
        return {"m": self.m, "s": self.s}
