"""The integer BERT, as op plans with every scale folded into integer constants.

A :class:`ModelPlan` is built once from a :class:`~ibert_tvm.quantization.QuantizedModel`.
It is the single source of truth for both executors:

* the numpy golden executor (``golden.py``) calls each plan's ``numpy``;
* the Relax model (``ibert_model.py``) calls each plan's ``te``.

``arrays`` holds every run-time integer tensor under the parameter name the Relax model uses
(HF-like: ``encoder.layer.0.attention.self.query.weight``, ``... .m`` / ``.s`` for a linear's
per-channel requantization, ``... LayerNorm.g`` / ``.beta_q``).

Dataflow of one layer (``S_*`` are static scales from calibration)::

    h (int8, S_h)
     -> q/k/v = requant(h W^T + b)                    int8   S_q, S_k, S_v
     -> scores = q k^T                                int32  S_q S_k / sqrt(d)   (folded)
     -> p = i-softmax(scores, mask)                   uint8  2^-8
     -> ctx = requant(p v)                            int8   S_ctx
     -> r1 = sat24(requant(ctx Wo^T + b) + requant(h)) int32  S_res1
     -> a = i-layernorm(r1)                           int8   S_ln1
     -> g = requant16(a Wi^T + b)                     int16  S_inter
     -> f = requant(i-gelu(g))                        int8   S_gelu
     -> r2 = sat24(requant(f Wo2^T + b) + requant(a)) int32  S_res2
     -> h' = i-layernorm(r2)                          int8   S_ln2
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..op.embedding import EmbeddingSum
from ..op.int_gelu import IntGELU
from ..op.int_layernorm import IntLayerNorm
from ..op.int_softmax import IntSoftmax
from ..op.int_tanh import IntTanh
from ..op.pooling import FRAC_BITS
from ..op.requantize import Requantize
from ..op.residual_add import ResidualAdd
from ..quantization.artifact import QuantizedModel


POOL_BITS = 22  # fractional bits of the pooled embedding below the largest channel scale


@dataclass
class LinearPlan:
    """A linear ``x W^T + b`` whose int32 output is requantized per channel by ``requant``."""

    name: str  # parameter prefix
    requant: object  # Requantize or ResidualAdd (both carry per-channel m, s)

    def arrays(self, qm: QuantizedModel) -> dict[str, np.ndarray]:
        out = {f"{self.name}.weight": qm.tensor(f"{self.name}.weight"), f"{self.name}.bias": qm.tensor(f"{self.name}.bias")}
        out.update({f"{self.name}.{k}": v for k, v in self.requant.params().items()})
        return out


@dataclass
class LayerPlan:
    prefix: str
    q: LinearPlan
    k: LinearPlan
    v: LinearPlan
    softmax: IntSoftmax
    ctx: Requantize
    attn_out: LinearPlan  # requant = ResidualAdd
    ln1: IntLayerNorm
    inter: LinearPlan  # requant to int16
    gelu: IntGELU
    out: LinearPlan  # requant = ResidualAdd
    ln2: IntLayerNorm


class ModelPlan:
    def __init__(self, qm: QuantizedModel):
        self.qm = qm
        d = qm.dims
        self.family, self.head = d["family"], d["head"]
        self.hidden, self.heads, self.n_layers = d["hidden"], d["heads"], d["layers"]
        self.head_dim = self.hidden // self.heads
        self.max_seq = d["max_seq"]
        self.pad_id = d["pad_id"]
        self.vocab = d["vocab"]
        cfg = qm.config
        rb = cfg.residual_bits
        sc = qm.scale
        arrays: dict[str, np.ndarray] = {}

        def ln(prefix, out_scale):
            gamma, beta = qm.tensor(prefix + ".gamma").astype(np.float64), qm.tensor(prefix + ".beta").astype(np.float64)
            if np.ndim(out_scale) > 0:  # per-channel output scales: fold 1/s into the affine
                gamma, beta, out_scale = gamma / out_scale, beta / out_scale, 1.0
            plan = IntLayerNorm(gamma, beta, out_scale=out_scale, in_bits=rb)
            arrays.update({f"{prefix}.{k}": v for k, v in plan.params().items()})
            return plan

        def linear(name, requant):
            lp = LinearPlan(name, requant)
            arrays.update(lp.arrays(qm))
            return lp

        def lin_in(name, s_in):
            """A linear's effective input scale: 1.0 when per-channel input scales were folded
            into its weight at calibration (recorded as ``<name>.input``), else ``s_in``."""
            if name + ".input" in qm.scales:
                return sc(name + ".input")
            if np.ndim(s_in) > 0:
                raise ValueError(f"{name}: per-channel input scales but no folded weight (missing {name}.input)")
            return s_in

        # embeddings
        s_sum = sc("embeddings.sum")
        self.embeddings = EmbeddingSum(
            sc("embeddings.word") / s_sum, sc("embeddings.position") / s_sum, sc("embeddings.token_type") / s_sum, out_bits=rb
        )
        arrays["embeddings.word_embeddings.weight"] = qm.tensor("embeddings.word")
        arrays["embeddings.position_embeddings.weight"] = qm.tensor("embeddings.position")
        arrays["embeddings.token_type_embeddings.weight"] = qm.tensor("embeddings.token_type")
        s_h = sc("embeddings.ln")
        self.emb_ln = ln("embeddings.LayerNorm", s_h)

        self.layers: list[LayerPlan] = []
        for i in range(self.n_layers):
            p, hp = f"layer{i}.", f"encoder.layer.{i}."
            s_q, s_k, s_v, s_ctx = sc(p + "q"), sc(p + "k"), sc(p + "v"), sc(p + "ctx")

            def rq(name, s_in, s_out, bits=8):
                return Requantize(lin_in(name, s_in) * sc(name + ".weight") / s_out, in_bits=32, out_bits=bits)

            q = linear(hp + "attention.self.query", rq(hp + "attention.self.query", s_h, s_q))
            k = linear(hp + "attention.self.key", rq(hp + "attention.self.key", s_h, s_k))
            v = linear(hp + "attention.self.value", rq(hp + "attention.self.value", s_h, s_v))
            softmax = IntSoftmax(s_q * s_k / math.sqrt(self.head_dim), max_len=self.max_seq)
            ctx = Requantize(softmax.out_scale * s_v / s_ctx, in_bits=32, out_bits=8)
            s_r1 = sc(p + "res1")
            n = hp + "attention.output.dense"
            attn_out = linear(n, ResidualAdd(lin_in(n, s_ctx) * sc(n + ".weight") / s_r1, s_h / s_r1, out_bits=rb))
            s_a = sc(p + "ln1")
            ln1 = ln(hp + "attention.output.LayerNorm", s_a)
            s_i = sc(p + "inter")
            inter = linear(hp + "intermediate.dense", rq(hp + "intermediate.dense", s_a, s_i, cfg.gelu_in_bits))
            s_g = sc(p + "gelu")
            gelu = IntGELU(s_i, in_bits=cfg.gelu_in_bits, out_scale_q=s_g)
            arrays.update({f"{hp}intermediate.act.{k}": v for k, v in gelu.params().items()})
            s_r2 = sc(p + "res2")
            n = hp + "output.dense"
            out = linear(n, ResidualAdd(lin_in(n, s_g) * sc(n + ".weight") / s_r2, s_a / s_r2, out_bits=rb))
            s_h = sc(p + "ln2")
            ln2 = ln(hp + "output.LayerNorm", s_h)
            self.layers.append(LayerPlan(hp, q, k, v, softmax, ctx, attn_out, ln1, inter, gelu, out, ln2))

        # Mean pooling sums int8 tokens with scale s_h (per channel) and keeps FRAC_BITS extra bits;
        # a per-channel s_h is then requantized to one output scale max(s_h) / 2^POOL_BITS:
        # |pooled| <= 128 * 2^FRAC_BITS and the ratio is <= 2^(POOL_BITS - FRAC_BITS), so the
        # result stays below 2^(7 + POOL_BITS) = 2^29 (int32, never saturates).
        self.pool = None
        if np.ndim(s_h) > 0:
            s_h = np.asarray(s_h, dtype=np.float64)
            self.out_scale = float(s_h.max()) / (1 << POOL_BITS)
            self.pool = Requantize(s_h / (1 << FRAC_BITS) / self.out_scale, in_bits=FRAC_BITS + 9, out_bits=32)
            arrays.update({f"pooler.{k}": v for k, v in self.pool.params().items()})
        else:
            self.out_scale = s_h / (1 << FRAC_BITS)
        if self.head == "classifier":
            s_pre, s_log = sc("head.pre_tanh"), sc("head.logits")
            self.head_dense = linear(
                "head.dense",
                Requantize(lin_in("head.dense", s_h) * sc("head.dense.weight") / s_pre, in_bits=32, out_bits=cfg.tanh_in_bits),
            )
            self.tanh = IntTanh(s_pre, in_bits=cfg.tanh_in_bits)
            self.head_out = linear(
                "head.out",
                Requantize(self.tanh.out_scale * sc("head.out.weight") / s_log, in_bits=32, out_bits=cfg.logits_bits),
            )
            self.out_scale = s_log
        self.arrays = arrays

    def linear_names(self) -> list[str]:
        """Parameter prefixes of every int8 linear (weight + bias in ``arrays``)."""
        return sorted(k[: -len(".m")] for k in self.arrays if k.endswith(".m") and k[:-2] + ".weight" in self.arrays)

    def arrays_for(self, strategy) -> dict[str, np.ndarray]:
        """``arrays`` with every linear's weight/bias replaced by ``strategy.pack``'s tensors."""
        if strategy.name == "generic":
            return self.arrays
        out = dict(self.arrays)
        for name in self.linear_names():
            w, b = out.pop(name + ".weight"), out.pop(name + ".bias")
            out.update({f"{name}.{k}": v for k, v in strategy.pack(w, b).items()})
        return out

    @property
    def output_name(self) -> str:
        return "logits" if self.head == "classifier" else "embedding"
