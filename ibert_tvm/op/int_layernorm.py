"""i-LayerNorm: integer mean, variance, Newton integer square root (I-BERT section 3.6).

Input ``x`` int32 ``[..., H]`` holding signed ``in_bits``-wide values (the wide residual sum,
24-bit by default). LayerNorm is invariant to the input scale, so only ``gamma``, ``beta`` and
the output scale enter the constants (``eps`` is dropped: ``var`` is an integer sum, and an
all-equal row gives ``y = 0`` and the output ``beta``).

    mean = floor((2 * sum(x) + H) / (2H))                 # round half up
    y    = x - mean                                       # |y| <= 2^in_bits
    var  = sum(y^2)                                       # int64, <= H * 2^(2 in_bits) < 2^62
    std  = isqrt(var)                                     # Newton, int_sqrt.py
    f    = floor(2^P / max(std, 1))                       # one division per row, P = 60
    n    = (y * f) >> (P - F)                             # y / sigma with scale sqrt(H) / 2^F
    acc  = n * g + beta_q                                 # g = round(gamma / S_g), 16-bit
    out  = requantize(acc, sqrt(H) / 2^F * S_g / S_out)   # int8

``|y| <= sqrt(var) < std + 1`` (Cauchy-Schwarz), so ``|y * f| <= 2^(P+1)`` and
``|n| <= 2^(F+1)``. ``F = 20`` keeps y/sigma to ~3e-5. ``S_g = max|gamma| / (2^15 - 1)``.
The widest intermediates are ``y * f`` and ``var`` (int64); the plan proves both.
"""

from __future__ import annotations

import math

import numpy as np

from ._common import check_bits, check_int_array, check_scale, check_te_dtype, i64, prove_fits, sign_extend_32
from .int_sqrt import isqrt_expr, isqrt_np
from .requantize import Requantize

P = 60
F = 20
GAMMA_BITS = 16


def _static(dim):
    """A TE shape entry as an int, or None if it is symbolic."""
    try:
        return int(dim)
    except TypeError:
        return None


class IntLayerNorm:
    """Plan for i-LayerNorm over the last axis (``H`` = ``len(gamma)``)."""

    def __init__(self, gamma, beta, *, out_scale, in_bits: int = 24, out_bits: int = 8):
        gamma = np.asarray(gamma, dtype=np.float64)
        beta = np.asarray(beta, dtype=np.float64)
        if gamma.ndim != 1 or gamma.size == 0 or beta.shape != gamma.shape:
            raise ValueError(
                f"gamma and beta must be non-empty 1-D arrays of equal length, got {gamma.shape}, {beta.shape}"
            )
        if not (np.isfinite(gamma).all() and np.isfinite(beta).all()):
            raise ValueError("gamma and beta must be finite")
        self.hidden = H = gamma.shape[0]
        self.in_bits = check_bits("in_bits", in_bits, 2, 32)
        out_scale = check_scale("out_scale", out_scale)
        prove_fits("layernorm variance sum", H * (1 << (2 * self.in_bits)))
        gmax = float(np.abs(gamma).max()) or 1.0
        self.gamma_scale = gmax / ((1 << (GAMMA_BITS - 1)) - 1)
        self.norm_scale = math.sqrt(H) / (1 << F)
        self.g = np.round(gamma / self.gamma_scale).astype(np.int32)  # float only at compile time
        beta_q = np.round(beta / (self.norm_scale * self.gamma_scale))
        prove_fits("layernorm beta", int(np.abs(beta_q).max(initial=0)))
        self.beta_q = beta_q.astype(np.int64)
        acc_bound = (1 << (F + 1)) * (1 << (GAMMA_BITS - 1)) + int(np.abs(self.beta_q).max(initial=0))
        prove_fits("layernorm affine", acc_bound)
        self.requant = Requantize(
            self.norm_scale * self.gamma_scale / out_scale, in_bits=acc_bound.bit_length() + 1, out_bits=out_bits
        )
        self.out_scale = out_scale

    def params(self) -> dict[str, np.ndarray]:
        """Run-time integer tensors: gamma (int32 [H]) and beta (int64 [H])."""
        return {"g": self.g, "beta_q": self.beta_q}

    # -- numpy reference ------------------------------------------------------------------
    def normalize_np(self, x) -> np.ndarray:
        """``n = (x - mean) / sigma`` in fixed point (scale ``norm_scale``), int64."""
        x = check_int_array("x", x, ("int32",)).astype(np.int64)
        if x.shape[-1] != self.hidden:
            raise ValueError(f"x has {x.shape[-1]} features, plan has {self.hidden}")
        lo = -(1 << (self.in_bits - 1))
        if x.size and (int(x.min()) < lo or int(x.max()) > -lo - 1):
            raise ValueError(f"x exceeds the declared {self.in_bits}-bit input domain")
        H = self.hidden
        mean = (2 * x.sum(axis=-1, keepdims=True) + H) // (2 * H)
        y = x - mean
        var = (y * y).sum(axis=-1, keepdims=True)
        std = isqrt_np(var)
        f = (np.int64(1) << P) // np.maximum(std, 1)
        return (y * f) >> (P - F)

    def numpy(self, x) -> np.ndarray:
        n = self.normalize_np(x)
        return self.requant.numpy(n * self.g.astype(np.int64) + self.beta_q)

    # -- TVM tensor expression ------------------------------------------------------------
    def te(self, x, g, beta_q):
        """x: [..., H] int32; g: [H] int32; beta_q: [H] int64 -> [..., H] int8."""
        from tvm import te, tirx

        check_te_dtype("x", x, ("int32",))
        check_te_dtype("g", g, ("int32",))
        check_te_dtype("beta_q", beta_q, ("int64",))
        H = self.hidden
        # The reductions run over range(H) and read g[c], beta_q[c]: a mismatched extent would
        # read out of bounds silently, so the static shapes must agree with the plan.
        if len(x.shape) < 1 or _static(x.shape[-1]) != H:
            raise ValueError(f"x must be [..., {H}], got shape {list(x.shape)}")
        for name, t in (("g", g), ("beta_q", beta_q)):
            if len(t.shape) != 1 or _static(t.shape[0]) != H:
                raise ValueError(f"{name} must have shape [{H}], got {list(t.shape)}")
        lead = x.shape[:-1]
        k = te.reduce_axis((0, H), name="k")
        total = te.compute(lead, lambda *i: te.sum(x(*i, k).astype("int64"), axis=k), name="ln_sum")
        mean = te.compute(
            lead, lambda *i: tirx.floordiv(i64(2) * total(*i) + i64(H), i64(2 * H)), name="ln_mean"
        )
        k2 = te.reduce_axis((0, H), name="k2")

        narrow_y = self.in_bits <= 30  # |y| <= 2^in_bits < 2^31: y * y as 32 x 32 -> 64 bits

        def sq(*i):
            y = x(*i, k2).astype("int64") - mean(*i)
            if narrow_y:
                y = sign_extend_32(y)
            return te.sum(y * y, axis=k2)

        var = te.compute(lead, sq, name="ln_var")
        factor = te.compute(
            lead,
            lambda *i: tirx.floordiv(i64(1 << P), tirx.max(isqrt_expr(var(*i)), i64(1))),
            name="ln_factor",
        )
        r = self.requant
        lo, hi = i64(r.qmin), i64(r.qmax)

        def out(*idx):
            *i, c = idx
            y = x(*idx).astype("int64") - mean(*i)
            n = (y * factor(*i)) >> i64(P - F)
            acc = sign_extend_32(n) * g[c].astype("int64") + beta_q[c]  # |n| <= 2^(F+1), g 16-bit
            v = (acc * i64(r.m) + i64(1 << (r.s - 1))) >> i64(r.s)
            return tirx.max(tirx.min(v, hi), lo).astype(r.out_dtype)

        return te.compute(x.shape, out, name="int_layernorm")
