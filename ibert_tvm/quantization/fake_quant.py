"""A float64 fake-quant reference of the integer model, built from the artifact's scales alone.

Golden (``model/golden.py``) and the compiled module both read the integer constants that
``model/plan.py`` folds from the scales (dyadic multipliers, i-exp/i-GELU/i-LayerNorm constants,
``IntTanh.out_scale``...). A wrong scale there is invisible to every bit-exact test, because the
two executors agree with each other. This module is an independent interpretation of the same
dataflow: at every quantization point it **dequantizes** its integer inputs with the scales the
:class:`~ibert_tvm.quantization.artifact.QuantizedModel` records, applies the **float op**
(matmul, exact softmax with the additive mask, exact erf GELU, LayerNorm, tanh, mean) and
**quantizes** to that point's recorded scale and bit width (round half up, saturate). It never
imports ``model/`` (plan, golden, the op plans' constants); from ``op/`` it takes only the
mean-pooling output convention ``FRAC_BITS``.

Dataflow and node names (those of ``qm.scales``; ``model/golden_trace.trace_golden`` records
golden's values under the same names, in the same integer units)::

    embeddings.sum  = q_rb(  word*S_w + pos*S_p + type*S_t ,       S_sum)    [B,S,H]
    embeddings.ln   = q_8 (  LN(sum*S_sum) ,                       S_h)      per channel
    layer{i}.q/k/v  = q_8 (  h*S_h @ W^T + b ,                     S_q/k/v)
    layer{i}.p      = qu_8(  softmax(q k^T / sqrt(d) + mask) ,     2^-8)     [B,n,S,S] uint8
    layer{i}.ctx    = q_8 (  p v ,                                 S_ctx)
    layer{i}.res1   = q_rb(  ctx @ Wo^T + b + h ,                  S_res1)
    layer{i}.ln1    = q_8 (  LN(res1) ,                            S_ln1)    per channel
    layer{i}.inter  = q_gb(  ln1 @ Wi^T + b ,                      S_inter)  [B,S,I]
    layer{i}.gelu   = q_8 (  x/2 (1 + erf(x/sqrt 2)) ,             S_gelu)   per channel
    layer{i}.res2   = q_rb(  gelu @ Wo2^T + b + ln1 ,              S_res2)
    layer{i}.ln2    = q_8 (  LN(res2) ,                            S_ln2)    per channel
    pooled          = q_32(  masked mean / first / max of ln2 ,    S_ln2 / 2^FRAC_BITS)  [B,H]
    head.pre_tanh   = q_tb(  ln2[:, 0] @ Wd^T + b ,                S_pre)    [B,H]
    head.tanh       = q_8 (  tanh(pre) ,                           S_tanh = scales["head.out.input"])
    head.logits     = q_lb(  tanh @ Wout^T + b ,                   S_logits) [B,labels]

``q_b(v, S) = clip(floor(v / S + 1/2), -2^(b-1), 2^(b-1) - 1)`` with b from ``qm.config``
(act_bits, residual_bits, gelu_in_bits, tanh_in_bits, logits_bits); ``qu_8`` clips to [0, 255].
A linear's float weight is ``W_q * S_w[n]``, divided by the input point's per-channel scales
where calibration folded them into the weight; its float bias is ``b_q * S_w[n] * S_in`` with
``S_in = scales["<linear>.input"]`` (the scale the bias was quantized at). LayerNorm uses the
float ``gamma``/``beta`` of ``qm.tensors`` and ``eps = qm.dims["layer_norm_eps"]`` when recorded,
else 1e-12 (the integer i-LayerNorm drops eps; with 24-bit sums it does not matter).

Two modes. ``feed=None`` (*chained*): each node reads the reference's own upstream values, a
fake-quant model whose error against golden accumulates through the layers. ``feed=trace``
(*local*, the one the tests bound tightly): each node reads its inputs from ``feed`` (golden's
integer values, ``trace_golden``), so every node is compared in isolation, one op's rounding
and approximation away from golden.

What it can catch: any integer constant that ``plan.py`` (or an op plan) folds from the wrong
scale, a missing or extra factor (``1/sqrt(d)``, a ratio inverted, the wrong layer's scale, a
per-channel scale applied to the wrong axis), a hard-coded convention that disagrees with the
artifact (``IntTanh.out_scale`` vs the ``1/127`` calibration quantized ``head.out``'s bias at,
recorded as ``head.out.input``), and op approximations worse than the stated LSB bound.
What it cannot catch: a scale that is wrong in the artifact *and* used consistently everywhere
(calibrated from the wrong module or with too little headroom: both sides saturate or lose
precision alike), a bias quantized at a scale other than the recorded ``.input``, a wrong
integer weight or table, and errors smaller than the bound (about 1-3 LSB at a node).
"""

from __future__ import annotations

import math

import numpy as np

from ..op.pooling import FRAC_BITS, float_pool
from .artifact import QuantizedModel

SOFTMAX_OUT_BITS = 8  # i-softmax output: unsigned, scale 2^-8 (a convention, not a calibrated scale);
# the scheme's softmax_bits / layer_softmax_bits (QuantConfig.softmax_bits_for_layer) may widen it per layer

_erf = np.vectorize(math.erf, otypes=[np.float64])


def quantize(v: np.ndarray, scale, bits: int, *, unsigned: bool = False) -> np.ndarray:
    """float64 ``v`` -> int64 codes ``clip(floor(v / scale + 1/2))`` at ``bits`` (signed or unsigned);
    a per-channel ``scale`` (1-D) applies to the last axis."""
    lo, hi = (0, (1 << bits) - 1) if unsigned else (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    return np.clip(np.floor(np.asarray(v, np.float64) / np.asarray(scale, np.float64) + 0.5), lo, hi).astype(np.int64)


def dequantize(q: np.ndarray, scale) -> np.ndarray:
    """Integer codes -> float64 ``q * scale`` (per-channel ``scale`` on the last axis)."""
    return np.asarray(q, np.float64) * np.asarray(scale, np.float64)


def _heads(x: np.ndarray, n: int) -> np.ndarray:
    B, S, H = x.shape
    return x.reshape(B, S, n, H // n).transpose(0, 2, 1, 3)


class _Ref:
    def __init__(self, qm: QuantizedModel):
        self.qm = qm
        self.cfg = qm.config
        self.eps = float(qm.dims.get("layer_norm_eps", 1e-12))

    def s(self, name):
        return self.qm.scale(name)

    def linear(self, prefix: str, x: np.ndarray, s_x) -> np.ndarray:
        """float64 ``x_float @ W^T + b`` for integer ``x`` at scale ``s_x`` (scalar or per channel)."""
        qm = self.qm
        w = qm.tensor(prefix + ".weight").astype(np.float64) * np.asarray(self.s(prefix + ".weight"))[:, None]
        if np.ndim(s_x) > 0:  # calibration folded the per-channel input scales into the weight
            w = w / np.asarray(s_x)[None, :]
        s_in = self.s(prefix + ".input") if prefix + ".input" in qm.scales else (1.0 if np.ndim(s_x) else s_x)
        b = qm.tensor(prefix + ".bias").astype(np.float64) * np.asarray(self.s(prefix + ".weight")) * s_in
        return dequantize(x, s_x) @ w.T + b

    def layernorm(self, prefix: str, x: np.ndarray) -> np.ndarray:
        g = self.qm.tensor(prefix + ".gamma").astype(np.float64)
        b = self.qm.tensor(prefix + ".beta").astype(np.float64)
        mu = x.mean(axis=-1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.eps) * g + b


def fake_quant(qm: QuantizedModel, input_ids, attention_mask, token_type_ids, position_ids, *,
               feed: dict | None = None) -> dict[str, np.ndarray]:
    """Every node of the module docstring's dataflow, as int64 codes in golden's units.

    Inputs: int32 ``[B, S]`` as ``run_golden``. ``feed``: ``None`` (chained) or golden's node
    values (``trace_golden``; local mode: each node's inputs are read from it). Returns
    node name -> int64 array (shapes of the module docstring); padded rows are computed like
    the others and are meaningless in both executors."""
    r, cfg, d = _Ref(qm), qm.config, qm.dims
    s = r.s
    ab, rb = cfg.act_bits, cfg.residual_bits
    n_heads, hidden = int(d["heads"]), int(d["hidden"])
    mask = np.asarray(attention_mask) != 0
    out: dict[str, np.ndarray] = {}

    def src(name):
        return out[name] if feed is None else np.asarray(feed[name])

    T = qm.tensor
    emb = (dequantize(T("embeddings.word")[input_ids], s("embeddings.word"))
           + dequantize(T("embeddings.position")[position_ids], s("embeddings.position"))
           + dequantize(T("embeddings.token_type")[token_type_ids], s("embeddings.token_type")))
    out["embeddings.sum"] = quantize(emb, s("embeddings.sum"), rb)
    x = dequantize(src("embeddings.sum"), s("embeddings.sum"))
    out["embeddings.ln"] = quantize(r.layernorm("embeddings.LayerNorm", x), s("embeddings.ln"), ab)
    h_name = "embeddings.ln"
    for i in range(int(d["layers"])):
        p, hp = f"layer{i}.", f"encoder.layer.{i}."
        h, s_h = src(h_name), s(h_name)
        for n, lin in (("q", "attention.self.query"), ("k", "attention.self.key"), ("v", "attention.self.value")):
            out[p + n] = quantize(r.linear(hp + lin, h, s_h), s(p + n), ab)
        q = _heads(dequantize(src(p + "q"), s(p + "q")), n_heads)
        k = _heads(dequantize(src(p + "k"), s(p + "k")), n_heads)
        scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(hidden // n_heads)
        scores = np.where(mask[:, None, None, :], scores, -np.inf)
        e = np.exp(scores - scores.max(axis=-1, keepdims=True))
        prob = e / e.sum(axis=-1, keepdims=True)
        sb = cfg.softmax_bits_for_layer(i, int(d["layers"]))
        out[p + "p"] = quantize(prob, 2.0**-sb, sb, unsigned=True)
        v = _heads(dequantize(src(p + "v"), s(p + "v")), n_heads)
        ctx = dequantize(src(p + "p"), 2.0**-sb) @ v
        B, n, S, dh = ctx.shape
        out[p + "ctx"] = quantize(ctx.transpose(0, 2, 1, 3).reshape(B, S, n * dh), s(p + "ctx"), ab)
        r1 = r.linear(hp + "attention.output.dense", src(p + "ctx"), s(p + "ctx")) + dequantize(h, s_h)
        out[p + "res1"] = quantize(r1, s(p + "res1"), rb)
        ln1 = r.layernorm(hp + "attention.output.LayerNorm", dequantize(src(p + "res1"), s(p + "res1")))
        out[p + "ln1"] = quantize(ln1, s(p + "ln1"), ab)
        a, s_a = src(p + "ln1"), s(p + "ln1")
        out[p + "inter"] = quantize(r.linear(hp + "intermediate.dense", a, s_a), s(p + "inter"), cfg.gelu_in_bits)
        g = dequantize(src(p + "inter"), s(p + "inter"))
        out[p + "gelu"] = quantize(0.5 * g * (1.0 + _erf(g / math.sqrt(2.0))), s(p + "gelu"), ab)
        r2 = r.linear(hp + "output.dense", src(p + "gelu"), s(p + "gelu")) + dequantize(a, s_a)
        out[p + "res2"] = quantize(r2, s(p + "res2"), rb)
        ln2 = r.layernorm(hp + "output.LayerNorm", dequantize(src(p + "res2"), s(p + "res2")))
        out[p + "ln2"] = quantize(ln2, s(p + "ln2"), ab)
        h_name = p + "ln2"
    h, s_h = src(h_name), s(h_name)
    if d["head"] in ("token_classifier", "qa"):
        out["head.logits"] = quantize(r.linear("head.out", h, s_h), s("head.logits"), cfg.logits_bits)
        return out
    if d["head"] != "classifier":
        pooled = float_pool(d.get("pooling", "mean"), dequantize(h, s_h), mask)
        out["pooled"] = quantize(pooled, np.asarray(s_h) / (1 << FRAC_BITS), 32)
        return out
    out["head.pre_tanh"] = quantize(r.linear("head.dense", h[:, 0, :], s_h), s("head.pre_tanh"), cfg.tanh_in_bits)
    s_t = s("head.out.input") if "head.out.input" in qm.scales else 1.0 / ((1 << (ab - 1)) - 1)
    out["head.tanh"] = quantize(np.tanh(dequantize(src("head.pre_tanh"), s("head.pre_tanh"))), s_t, ab)
    out["head.logits"] = quantize(r.linear("head.out", src("head.tanh"), s_t), s("head.logits"), cfg.logits_bits)
    return out
