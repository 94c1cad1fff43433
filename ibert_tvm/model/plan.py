"""The integer BERT, as op plans with every scale folded into integer constants.

A :class:`ModelPlan` is built once from a :class:`~ibert_tvm.quantization.QuantizedModel`.
It is the single source of truth for both executors:

* the numpy golden executor (``golden.py``) calls each plan's ``numpy``;
* the compiled model (``passes/lower_to_integer.py`` on the imported graph) calls each plan's ``te``.

``arrays`` holds every run-time integer tensor under the parameter name the Relax model uses
(HF-like: ``encoder.layer.0.attention.self.query.weight``, ``... .m`` / ``.s`` for a linear's
per-channel requantization, ``... LayerNorm.g`` / ``.beta_q``). A linear with low-bit weights
(``qm.weight_bits(prefix) < 8``, Q-BERT) holds ``<prefix>.weight_packed`` (uint8
``[N, row_bytes(K, bits)]``, :mod:`ibert_tvm.op.packed_weights`) instead of ``<prefix>.weight``:
the compiled model stores and reads the packed bytes and unpacks them in its kernels.

Dataflow of one layer (``S_*`` are static scales from calibration)::

    h (int8, S_h)
     -> q/k/v = requant(h W^T + b)                    int8   S_q, S_k, S_v
     -> scores = q k^T                                int32  S_q S_k / sqrt(d)   (folded)
        (+ table[bucket[j - i]]: MPNet's relative position bias in the scores' units, same scale)
     -> p = i-softmax(scores, mask)                   uint8  2^-8   (uint16 2^-b: softmax_bits b > 8)
     -> ctx = requant(p v)                            int8   S_ctx  (p v: int32, proven with p's row sum)
     -> r1 = sat24(requant(ctx Wo^T + b) + requant(h)) int32  S_res1
     -> a = i-layernorm(r1)                           int8   S_ln1
     -> g = requant16(a Wi^T + b)                     int16  S_inter
     -> f = requant(i-gelu(g))                        int8   S_gelu  (scheme gelu polyN: relu - p_N)
     -> r2 = sat24(requant(f Wo2^T + b) + requant(a)) int32  S_res2
     -> h' = i-layernorm(r2)                          int8   S_ln2
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..op.embedding import EmbeddingSum
from ..op.int_gelu import IntGELU
from ..op.int_gelu_poly import IntGELUPoly
from ..op.int_layernorm import IntLayerNorm
from ..op.int_matmul import check_accumulator
from ..op.int_relu import IntReLU
from ..op.int_softmax import IntSoftmax
from ..op.int_tanh import IntTanh
from ..op.pooling import FRAC_BITS
from ..op.rel_pos_bias import RelativePositionBias

TOKEN_HEADS = ("token_classifier", "qa")  # heads with [batch, seq, labels] outputs
from ..op.packed_weights import check_weight_bits, row_bytes
from ..op.requantize import Requantize
from ..op.residual_add import ResidualAdd
from ..errors import IBertTVMError


def gelu_plan(cfg, s_in, s_out):
    """The scheme's integer GELU (``cfg.gelu``): I-BERT's i-GELU, or relu minus a degree-N polynomial."""
    if cfg.gelu_degree():
        return IntGELUPoly(s_in, in_bits=cfg.gelu_in_bits, out_scale_q=s_out, degree=cfg.gelu_degree())
    return IntGELU(s_in, in_bits=cfg.gelu_in_bits, out_scale_q=s_out)


POOL_BITS = 22  # fractional bits of the pooled embedding below the largest channel scale


@dataclass
class LinearPlan:
    """A linear ``x W^T + b`` whose int32 output is requantized per channel by ``requant``.

    ``bits < 8``: the weight is a run-time uint8 ``<name>.weight_packed`` [N, row_bytes(K, bits)]
    (unpacked in the kernel; the golden executor unpacks it with ``unpack_np``); else the int8
    ``<name>.weight`` [N, K]. ``in_features`` is K."""

    name: str  # parameter prefix
    requant: object  # Requantize or ResidualAdd (both carry per-channel m, s)
    bits: int = 8
    in_features: int = 0

    @property
    def packed(self) -> bool:
        return self.bits < 8

    @property
    def weight_name(self) -> str:
        return f"{self.name}.weight_packed" if self.packed else f"{self.name}.weight"

    def arrays(self, qm) -> dict[str, np.ndarray]:
        if self.packed:
            w = np.asarray(qm.packed_weight(self.name))
            want = (int(qm.tensor(f"{self.name}.weight").shape[0]), row_bytes(self.in_features, self.bits))
            if w.dtype != np.uint8 or w.shape != want:
                raise IBertTVMError(f"{self.name}: packed {self.bits}-bit weight is {w.dtype} {list(w.shape)}, "
                                    f"expected uint8 {list(want)}")
        else:
            w = qm.tensor(f"{self.name}.weight")
        out = {self.weight_name: w, f"{self.name}.bias": qm.tensor(f"{self.name}.bias")}
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
    gelu: IntGELU | IntGELUPoly
    out: LinearPlan  # requant = ResidualAdd
    ln2: IntLayerNorm
    rel_bias: RelativePositionBias | None = None  # MPNet: added to the scores before i-softmax
    qkv: LinearPlan | None = None  # q, k and v as one [3H, H] linear (fused_qkv); None: not fusable


def fused_qkv(prefix: str, q: LinearPlan, k: LinearPlan, v: LinearPlan, qm) -> tuple[LinearPlan | None, dict]:
    """``(plan, arrays)`` of the query, key and value linears as one linear ``<prefix>attention.self.qkv``:
    the three int8 weights stacked along the output channels ``[q; k; v]`` (``[3H, K]``), their int32
    biases and per-channel requantizations (:meth:`Requantize.concat`) concatenated the same way.
    Output channel ``c`` of the fused linear is channel ``c`` of ``q`` (``c < H``), ``c - H`` of ``k``,
    ``c - 2H`` of ``v``, with that linear's weight row, bias and ``(m, s)``: every output integer is the
    same as the separate linear's (a dot product over the same ``K`` inputs and weights, the same
    requantization), so the lowering slices ``q``, ``k`` and ``v`` out of one GEMM (one kernel launch
    instead of three, one pass over the input). ``(None, {})`` when the three do not fit one kernel:
    a packed low-bit weight, different input widths, or a residual requantization."""
    parts = (q, k, v)
    if any(p.packed for p in parts) or len({p.in_features for p in parts}) != 1 \
            or not all(isinstance(p.requant, Requantize) for p in parts):
        return None, {}
    ws = [np.asarray(qm.tensor(f"{p.name}.weight")) for p in parts]
    bs = [np.asarray(qm.tensor(f"{p.name}.bias")) for p in parts]
    if len({w.dtype for w in ws}) != 1 or len({b.dtype for b in bs}) != 1:
        return None, {}
    channels = [w.shape[0] for w in ws]
    try:
        rq = Requantize.concat([p.requant for p in parts], channels)
    except ValueError:
        return None, {}
    lp = LinearPlan(prefix + "attention.self.qkv", rq, bits=8, in_features=q.in_features)
    arrays = {lp.weight_name: np.concatenate(ws), f"{lp.name}.bias": np.concatenate(bs)}
    arrays.update({f"{lp.name}.{key}": val for key, val in rq.params().items()})
    return lp, arrays


class ModelPlan:
    def __init__(self, qm):
        """``qm``: a :class:`~ibert_tvm.quantization.artifact.QuantizedModel` (its scales, tensors, dims
        and config; not imported here, so that ``model`` stays below ``quantization``)."""
        self.qm = qm
        d = qm.dims
        self.family, self.head = d["family"], d["head"]
        self.pooling = d.get("pooling", "mean")  # embedding head: op/pooling.POOLINGS (artifacts before it: mean)
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

        linears: dict[str, LinearPlan] = {}
        self.fused: dict[str, LinearPlan] = {}  # linears made of others (fused_qkv): packed by arrays_for too

        def linear(name, requant):
            k = int(qm.tensor(name + ".weight").shape[1])
            lp = LinearPlan(name, requant, bits=check_weight_bits(qm.weight_bits(name)), in_features=k)
            arrays.update(lp.arrays(qm))
            linears[name] = lp
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
        self.token_types = int(d["type_vocab"]) > 0  # DistilBERT has no token-type table (type_vocab 0)
        self.embeddings = EmbeddingSum(
            sc("embeddings.word") / s_sum, sc("embeddings.position") / s_sum,
            sc("embeddings.token_type") / s_sum if self.token_types else None, out_bits=rb
        )
        arrays["embeddings.word_embeddings.weight"] = qm.tensor("embeddings.word")
        arrays["embeddings.position_embeddings.weight"] = qm.tensor("embeddings.position")
        if self.token_types:
            arrays["embeddings.token_type_embeddings.weight"] = qm.tensor("embeddings.token_type")
        s_h = sc("embeddings.ln")
        self.emb_ln = ln("embeddings.LayerNorm", s_h)
        # factorized embeddings (dims.embedding_size: ALBERT, ELECTRA): E-wide tables and LayerNorm, then
        # one more int8 linear E -> H, requantized per channel to the first layer's input scale
        self.project = None
        if "embedding_size" in d:
            n = "embeddings.project"
            self.project = linear(n, Requantize(lin_in(n, s_h) * sc(n + ".weight") / sc(n), in_bits=32, out_bits=8))
            s_h = sc(n)
        # dims.shared_layers (ALBERT): one LayerPlan, its tensors under encoder.layer.0, applied n_layers times
        self.shared_layers = bool(d.get("shared_layers"))

        # MPNet's relative position bias: one float table, quantized per layer to its scores' scale
        self.rel_buckets = int(d.get("rel_buckets", 0))
        if self.rel_buckets:
            rel_w, rel_bucket = qm.tensor("encoder.relative_attention_bias"), qm.tensor("encoder.relative_attention_bucket")
            arrays["encoder.relative_attention_bucket"] = rel_bucket
        self.layers: list[LayerPlan] = []
        for i in range(1 if self.shared_layers else self.n_layers):
            p, hp = f"layer{i}.", f"encoder.layer.{i}."
            s_q, s_k, s_v, s_ctx = sc(p + "q"), sc(p + "k"), sc(p + "v"), sc(p + "ctx")

            def rq(name, s_in, s_out, bits=8):
                return Requantize(lin_in(name, s_in) * sc(name + ".weight") / s_out, in_bits=32, out_bits=bits)

            q = linear(hp + "attention.self.query", rq(hp + "attention.self.query", s_h, s_q))
            k = linear(hp + "attention.self.key", rq(hp + "attention.self.key", s_h, s_k))
            v = linear(hp + "attention.self.value", rq(hp + "attention.self.value", s_h, s_v))
            softmax = IntSoftmax(s_q * s_k / math.sqrt(self.head_dim), max_len=self.max_seq,
                                 out_bits=cfg.softmax_bits_for_layer(i, self.n_layers))
            # P V's int32 accumulator: |sum_j p[j] v[j]| <= 128 * (p's row sum bound), not max_seq * 255 * 128
            # (which a uint16 p would exceed)
            check_accumulator(self.max_seq, softmax.out_dtype, "int8", row_sum=softmax.row_sum_bound)
            rel = None
            if self.rel_buckets:  # |q k^T| <= d * 128 * 128 (int8 operands)
                rel = RelativePositionBias(rel_w, softmax.exp.scale, rel_bucket, score_bound=self.head_dim << 14)
                arrays[hp + "attention.self.position_bias"] = rel.table
            ctx = Requantize(softmax.out_scale * s_v / s_ctx, in_bits=32, out_bits=8)
            s_r1 = sc(p + "res1")
            n = hp + "attention.output.dense"
            attn_out = linear(n, ResidualAdd(lin_in(n, s_ctx) * sc(n + ".weight") / s_r1, s_h / s_r1, out_bits=rb))
            s_a = sc(p + "ln1")
            ln1 = ln(hp + "attention.output.LayerNorm", s_a)
            s_i = sc(p + "inter")
            inter = linear(hp + "intermediate.dense", rq(hp + "intermediate.dense", s_a, s_i, cfg.gelu_in_bits))
            s_g = sc(p + "gelu")
            gelu = gelu_plan(cfg, s_i, s_g)
            arrays.update({f"{hp}intermediate.act.{k}": v for k, v in gelu.params().items()})
            s_r2 = sc(p + "res2")
            n = hp + "output.dense"
            out = linear(n, ResidualAdd(lin_in(n, s_g) * sc(n + ".weight") / s_r2, s_a / s_r2, out_bits=rb))
            s_h = sc(p + "ln2")
            ln2 = ln(hp + "output.LayerNorm", s_h)
            qkv, qkv_arrays = fused_qkv(hp, q, k, v, qm)
            arrays.update(qkv_arrays)
            if qkv is not None:
                self.fused[qkv.name] = qkv
            self.layers.append(LayerPlan(hp, q, k, v, softmax, ctx, attn_out, ln1, inter, gelu, out, ln2, rel, qkv))
        if self.shared_layers:  # the same plan (and tensors) at every application
            self.layers = self.layers * self.n_layers

        # Pooling (mean, cls or max: same output convention) keeps FRAC_BITS extra bits of the int8
        # tokens with scale s_h (per channel); mean pooling sums them;
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
        self.head_act = d.get("head_act", "tanh") if self.head == "classifier" else None
        if self.head == "classifier" and self.head_act == "tanh":  # BERT's pooler, RoBERTa's classifier
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
        elif self.head == "classifier" and self.head_act == "relu":  # DistilBERT: requantize to ReLU's output scale
            s_relu, s_log = sc("head.relu"), sc("head.logits")
            self.head_dense = linear(
                "head.dense", Requantize(lin_in("head.dense", s_h) * sc("head.dense.weight") / s_relu, in_bits=32, out_bits=8))
            self.relu = IntReLU()
            self.head_out = linear(
                "head.out",
                Requantize(lin_in("head.out", s_relu) * sc("head.out.weight") / s_log, in_bits=32, out_bits=cfg.logits_bits),
            )
            self.out_scale = s_log
        elif self.head == "classifier" and self.head_act == "gelu":  # ELECTRA: i-GELU as in the encoder's FFN
            s_pre, s_log = sc("head.pre_gelu"), sc("head.logits")
            self.head_dense = linear(
                "head.dense",
                Requantize(lin_in("head.dense", s_h) * sc("head.dense.weight") / s_pre, in_bits=32, out_bits=cfg.gelu_in_bits),
            )
            s_g = sc("head.gelu")
            self.head_gelu = gelu_plan(cfg, s_pre, s_g)
            arrays.update({f"head.act.{k}": v for k, v in self.head_gelu.params().items()})
            self.head_out = linear(
                "head.out",
                Requantize(lin_in("head.out", s_g) * sc("head.out.weight") / s_log, in_bits=32, out_bits=cfg.logits_bits),
            )
            self.out_scale = s_log
        elif self.head == "classifier":
            raise IBertTVMError(f"dims.head_act {self.head_act!r}: the classifier's activation must be tanh, relu or gelu")
        elif self.head in TOKEN_HEADS:  # one linear on every token: [B, S, labels] logits
            s_log = sc("head.logits")
            self.head_out = linear(
                "head.out",
                Requantize(lin_in("head.out", s_h) * sc("head.out.weight") / s_log, in_bits=32, out_bits=cfg.logits_bits),
            )
            self.out_scale = s_log
        self.arrays = arrays
        self.linears = linears

    def linear_names(self) -> list[str]:
        """Parameter prefixes of every linear (weight or packed weight, + bias in ``arrays``)."""
        return sorted(self.linears)

    def arrays_for(self, strategy) -> dict[str, np.ndarray]:
        """``arrays`` with every linear's weight/bias replaced by the strategy's tensors
        (``strategy.pack`` for int8 weights, ``strategy.pack_packed`` for packed low-bit ones)."""
        if strategy.name == "generic":
            return self.arrays
        out = dict(self.arrays)
        for name, lp in sorted({**self.linears, **self.fused}.items()):
            w, b = out.pop(lp.weight_name), out.pop(name + ".bias")
            packed = strategy.pack_packed(w, b, lp.bits, lp.in_features) if lp.packed else strategy.pack(w, b)
            out.update({f"{name}.{k}": v for k, v in packed.items()})
        return out

    def weight_bits(self) -> dict[str, int]:
        """Linear prefix -> weight bits, for the packed (< 8-bit) linears."""
        return {n: lp.bits for n, lp in sorted(self.linears.items()) if lp.packed}

    @property
    def output_name(self) -> str:
        return "embedding" if self.head == "embedding" else "logits"
