"""Post-training calibration: FP32 activation ranges -> static scales -> the quantized artifact.

The float model runs over sample sentences with hooks at every quantization point of the
integer graph (see ``ibert_tvm/model/plan.py`` for where each scale is used). Padding
positions are excluded from the statistics. Each layer's *own* output scale is recorded and
used by the next layer (the transformers/fairseq I-BERT feed every layer the embedding
scale, issue 26738).

Scales: symmetric, ``S = range / (2^(b-1) - 1)``; ``range`` is the max |x| (``minmax``) or
its ``percentile`` (``percentile``) for the per-tensor int8 activations that feed matmuls
(q, k, v, context); residual sums and the pre-GELU/pre-tanh values always use max |x| with
headroom (they are wide). With ``per_channel_acts`` (the default), the LayerNorm and GELU
outputs get one scale per channel from that channel's max |x|: ``percentile`` does not apply to
them (clipping BERT's outlier channels loses accuracy: see README, "Which tensors lose the most").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from ..errors import IBertTVMError
from ..support.tokenize import Tokenizer
from ..model.hf_loader import HFCheckpoint, load_tokenizer_json
from ..op.int_matmul import BIAS_BOUND
from .artifact import QuantizedModel
from ..op.packed_weights import qmax
from .config import QuantConfig

_RESERVOIR = 400_000  # abs values kept per point for percentiles


@dataclass
class RangeObserver:
    """Running max |x| and a bounded random sample of |x| for percentiles."""

    keep_samples: bool
    absmax: float = 0.0
    channel_absmax: np.ndarray | None = None  # max |x| per last-axis channel
    samples: list = field(default_factory=list)
    count: int = 0
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def update(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        ch = np.abs(x.reshape(-1, x.shape[-1])).max(axis=0).astype(np.float64)
        self.channel_absmax = ch if self.channel_absmax is None else np.maximum(self.channel_absmax, ch)
        a = np.abs(x.reshape(-1)).astype(np.float32)
        self.absmax = max(self.absmax, float(a.max()))
        if self.keep_samples:
            take = min(a.size, 20_000)
            self.samples.append(self.rng.choice(a, size=take, replace=False) if take < a.size else a)
            self.count += take
            if self.count > _RESERVOIR:
                allv = np.concatenate(self.samples)
                self.samples = [self.rng.choice(allv, size=_RESERVOIR // 2, replace=False)]
                self.count = _RESERVOIR // 2

    def range(self, percentile: float | None) -> float:
        if percentile is None or not self.samples:
            return self.absmax
        return float(np.percentile(np.concatenate(self.samples), percentile))


def quantization_points(ckpt: HFCheckpoint):
    """(name, module, kind) for every hook: kind 'in' = module input, 'out' = module output.

    The points are the graph's (``frontend.points.hook_points``: found on the imported model by
    ``find_quantization_points``, none listed by hand), resolved to ``ckpt.model``'s modules."""
    from ..frontend.points import hook_points

    return [(name, ckpt.model.get_submodule(path), side) for name, path, side in hook_points(ckpt)]


def head_modules(ckpt: HFCheckpoint):
    """(dense before tanh, output projection) of the classification head; (None, the per-token
    linear) of a token classification or QA head."""
    m = ckpt.model
    if ckpt.head == "token_classifier":
        return None, m.classifier
    if ckpt.head == "qa":
        return None, m.qa_outputs
    if hasattr(m, "pre_classifier"):  # DistilBERT: pre_classifier -> ReLU -> classifier
        return m.pre_classifier, m.classifier
    if ckpt.family == "bert" and not hasattr(m.classifier, "out_proj"):  # BERT's pooler (ELECTRA has RoBERTa's head)
        return ckpt.module("pooler.dense"), m.classifier  # by BERT's name (ALBERT's pooler is one Linear)
    return m.classifier.dense, m.classifier.out_proj


def collect_ranges(
    ckpt: HFCheckpoint,
    sentences: Sequence[str],
    *,
    batch_size: int = 16,
    keep_samples: bool = False,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> dict[str, RangeObserver]:
    """Run the float model over ``sentences``; observe every quantization point."""
    import torch

    if not sentences:
        raise IBertTVMError("calibration needs at least one sentence")
    tok = Tokenizer(load_tokenizer_json(ckpt.path), ckpt.max_positions, ckpt.family, ckpt.pad_token_id)
    obs = {name: RangeObserver(keep_samples) for name, _, _ in quantization_points(ckpt)}
    state = {"mask": None}

    def make_hook(name, kind):
        def grab(t):
            x = t.detach().float().numpy()
            m = state["mask"]
            if x.ndim == 3 and m is not None:  # [B, S, H]: keep real tokens only
                x = x[m.astype(bool)]
            obs[name].update(x)

        if kind == "in":
            return lambda mod, args: grab(args[0])
        return lambda mod, args, out: grab(out[0] if isinstance(out, tuple) else out)

    handles = []
    for name, mod, kind in quantization_points(ckpt):
        h = make_hook(name, kind)
        handles.append(mod.register_forward_pre_hook(h) if kind == "in" else mod.register_forward_hook(h))
    batches = [sentences[i : i + batch_size] for i in range(0, len(sentences), batch_size)]
    try:
        with torch.no_grad():
            for chunk in progress(batches) if progress else batches:
                enc = tok(chunk)
                state["mask"] = enc["attention_mask"]
                ckpt.model(**torch_inputs(enc))
    finally:
        for h in handles:
            h.remove()
    return obs


def torch_inputs(enc: dict) -> dict:
    """Tokenizer output -> the keyword tensors a Hugging Face model takes (int64)."""
    import torch

    return {k: torch.from_numpy(v.astype(np.int64)) for k, v in enc.items()}


def _sym_scale(r: float, bits: int, what: str) -> float:
    if not np.isfinite(r) or r <= 0:
        raise IBertTVMError(f"calibration saw no non-zero values at {what}; use more or longer sentences")
    return float(r) / ((1 << (bits - 1)) - 1)


SILENT_CHANNEL_FLOOR = 1e-4  # an (almost) silent channel's range: this fraction of its point's max |x|


def channel_scales(o: RangeObserver, bits: int, what: str, *, headroom: float = 1.0,
                   floor: float = SILENT_CHANNEL_FLOOR) -> np.ndarray:
    """One point's per-channel symmetric scales ``[C]``:
    ``max(headroom * channel max |x|, floor * max |x|) / (2^(bits-1) - 1)``."""
    _sym_scale(o.absmax, bits, what)  # raises if the point saw nothing
    return np.maximum(o.channel_absmax * headroom, o.absmax * floor) / ((1 << (bits - 1)) - 1)


def check_groups(groups, rows: int, what: str = "weight") -> int:
    """``groups`` as a weight-group count valid for ``rows`` output rows (0 = a scale per row,
    1 = per tensor, G = G groups of consecutive rows), else ``IBertTVMError``."""
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 0:
        raise IBertTVMError(f"weight groups must be an integer >= 0 (0 = per output row), got {groups!r}")
    if groups > 1 and rows % groups:
        raise IBertTVMError(f"weight_groups={groups} does not divide the {rows} output rows of {what}; "
                            f"pick a divisor of {rows} (0 = one scale per row, 1 = per tensor)")
    return int(groups)


def quantize_weight(w: np.ndarray, bits: int = 8, groups: int = 0, what: str = "weight") -> tuple[np.ndarray, np.ndarray]:
    """Symmetric ``bits``-bit weights: ``w[n, :] ~= q[n, :] * s[n]``, ``|q| <= 2^(bits-1) - 1``.

    ``groups``: 0 = a scale per output row; G >= 1 = G groups of consecutive rows sharing the
    scale of their largest magnitude (1 = per tensor). ``s`` is returned per row either way.
    """
    qm = qmax(bits)
    n = w.shape[0]
    groups = check_groups(groups, n, what)
    if groups == 0:
        amax = np.abs(w).max(axis=1).astype(np.float64)
    else:
        amax = np.repeat(np.abs(w).reshape(groups, -1).max(axis=1).astype(np.float64), n // groups)
    s = np.where(amax > 0, amax / qm, 1.0)
    q = np.clip(np.round(w / s[:, None]), -qm, qm).astype(np.int8)
    return q, s


def quantize_bias(b: np.ndarray, s_in: float, s_w: np.ndarray) -> np.ndarray:
    q = np.round(b.astype(np.float64) / (s_in * s_w))
    return np.clip(q, -BIAS_BOUND, BIAS_BOUND).astype(np.int32)


def quantize_table(w: np.ndarray) -> tuple[np.ndarray, float]:
    s = float(np.abs(w).max()) / 127.0 or 1.0
    return np.clip(np.round(w / s), -127, 127).astype(np.int8), s


def build_quantized(ckpt: HFCheckpoint, obs: dict[str, RangeObserver], config: QuantConfig) -> QuantizedModel:
    """Scales from observed ranges + integer weights -> :class:`QuantizedModel`."""
    pct = config.percentile if config.calibration == "percentile" else None
    cfg = ckpt.config
    scales: dict = {}
    tensors: dict[str, np.ndarray] = {}
    packed: dict[str, int] = {}  # linear prefix -> weight bits, for the packed (< 8-bit) ones

    def act(name):  # int8 activation feeding a matmul
        s = _sym_scale(obs[name].range(pct), config.act_bits, name)
        scales[name] = s
        return s

    def act_pc(name):  # int8 activation with per-channel scales (LayerNorm / GELU outputs)
        if not config.per_channel_acts:
            return act(name)
        gelu = name.endswith(".gelu")
        s = channel_scales(obs[name], config.act_bits, name,
                           headroom=config.gelu_channel_headroom if gelu else config.ln_channel_headroom,
                           floor=config.gelu_channel_floor if gelu else config.ln_channel_floor)
        scales[name] = s.tolist()
        return s

    def wide(name, bits, headroom):
        s = _sym_scale(obs[name].absmax * headroom, bits, name)
        scales[name] = s
        return s

    def np_(t):
        return t.detach().float().numpy()

    def linear(prefix, mod, s_in, bits=8, groups=0):
        """Per-channel input scales are folded into the weight: W diag(s) x_int; input scale 1."""
        w = np_(mod.weight).astype(np.float64)
        if np.ndim(s_in) > 0:
            w = w * np.asarray(s_in)[None, :]
            s_in = 1.0
        q, s_w = quantize_weight(w, bits, groups, prefix + ".weight")
        if bits < 8:
            packed[prefix] = bits
        tensors[prefix + ".weight"] = q
        tensors[prefix + ".bias"] = quantize_bias(np_(mod.bias), s_in, s_w)
        scales[prefix + ".weight"] = s_w.tolist()
        scales[prefix + ".input"] = float(s_in)

    def layernorm(prefix, mod):
        tensors[prefix + ".gamma"] = np_(mod.weight).astype(np.float32)
        tensors[prefix + ".beta"] = np_(mod.bias).astype(np.float32)

    mod = ckpt.module  # modules by BERT's names (an architecture's own names through its name map)
    tables = ("word", "position") + (("token_type",) if _has_module(ckpt, "embeddings.token_type_embeddings") else ())
    for key in tables:
        q, s = quantize_table(np_(mod(f"embeddings.{key}_embeddings").weight))
        tensors[f"embeddings.{key}"] = q
        scales[f"embeddings.{key}"] = s
    wide("embeddings.sum", config.residual_bits, config.residual_headroom)
    layernorm("embeddings.LayerNorm", mod("embeddings.LayerNorm"))
    s_h = act_pc("embeddings.ln")
    num_layers = int(cfg.num_hidden_layers)
    shared = ckpt.shared_layers  # ALBERT: one layer applied num_layers times (its hooks saw every application)
    project = _has_module(ckpt, "embeddings.project")  # factorized embeddings: E -> H after the LayerNorm
    if shared and not project:  # the first application's input would have the embedding LayerNorm's scale
        raise IBertTVMError(f"{ckpt.architecture}: a shared layer is lowered only after an embedding projection")
    if project:
        if shared:  # the shared layer's input is the projection (application 0) or its own ln2 (the rest):
            # one scale for both, so that every application folds the same scale into the same weights
            obs["embeddings.project"] = obs["layer0.ln2"] = _merged(obs["embeddings.project"], obs["layer0.ln2"])
        linear("embeddings.project", mod("embeddings.project"), s_h)
        s_h = act_pc("embeddings.project")
    for i in range(1 if shared else num_layers):
        p, hp = f"layer{i}.", f"encoder.layer.{i}."
        wq = dict(bits=config.bits_for_layer(i, num_layers), groups=config.weight_groups)
        for n in ("q", "k", "v"):
            act(p + n)
        for n in ("query", "key", "value"):
            linear(hp + f"attention.self.{n}", mod(hp + f"attention.self.{n}"), s_h, **wq)
        s_ctx = act(p + "ctx")
        linear(hp + "attention.output.dense", mod(hp + "attention.output.dense"), s_ctx, **wq)
        wide(p + "res1", config.residual_bits, config.residual_headroom)
        layernorm(hp + "attention.output.LayerNorm", mod(hp + "attention.output.LayerNorm"))
        s_a = act_pc(p + "ln1")
        linear(hp + "intermediate.dense", mod(hp + "intermediate.dense"), s_a, **wq)
        wide(p + "inter", config.gelu_in_bits, config.gelu_headroom)
        s_g = act_pc(p + "gelu")
        linear(hp + "output.dense", mod(hp + "output.dense"), s_g, **wq)
        wide(p + "res2", config.residual_bits, config.residual_headroom)
        layernorm(hp + "output.LayerNorm", mod(hp + "output.LayerNorm"))
        s_h = act_pc(p + "ln2")
    rel = relative_position_bias(ckpt)
    if rel is not None:  # MPNet: one float table for every layer, quantized per layer by the plan
        tensors["encoder.relative_attention_bias"], tensors["encoder.relative_attention_bucket"] = rel
    labels: list[str] = []
    head_act = None
    if ckpt.head == "classifier":
        dense, out = head_modules(ckpt)
        # the head's activation, as the graph shows it (its points: head.pre_tanh / head.relu / head.pre_gelu)
        acts = [a for a, n in (("tanh", "head.pre_tanh"), ("relu", "head.relu"), ("gelu", "head.pre_gelu")) if n in obs]
        if len(acts) != 1:
            raise IBertTVMError(f"{ckpt.architecture}: the classification head's activation is not one of tanh, "
                                f"ReLU, GELU (graph points: {sorted(n for n in obs if n.startswith('head.'))})")
        head_act = acts[0]
        linear("head.dense", dense, s_h)
        if head_act == "tanh":
            wide("head.pre_tanh", config.tanh_in_bits, config.gelu_headroom)
            linear("head.out", out, 1.0 / 127.0)  # i-tanh output scale is 1/127 (int8)
        elif head_act == "relu":  # dense requantized straight to the ReLU output's scale (op/int_relu.py)
            linear("head.out", out, act("head.relu"))
        else:  # GELU as in the encoder's FFN: wide input, per-channel int8 output folded into head.out
            wide("head.pre_gelu", config.gelu_in_bits, config.gelu_headroom)
            linear("head.out", out, act_pc("head.gelu"))
        wide("head.logits", config.logits_bits, 2.0)
        labels = ckpt.labels
    elif ckpt.head in ("token_classifier", "qa"):
        linear("head.out", head_modules(ckpt)[1], s_h)  # per-token: s_h per channel, folded into W
        wide("head.logits", config.logits_bits, 2.0)
        labels = ckpt.labels
    dims = dict(
        family=ckpt.family,
        head=ckpt.head,
        hidden=int(cfg.hidden_size),
        heads=int(cfg.num_attention_heads),
        layers=int(cfg.num_hidden_layers),
        intermediate=int(tensors["encoder.layer.0.intermediate.dense.weight"].shape[0]),
        vocab=int(cfg.vocab_size),
        type_vocab=int(tensors["embeddings.token_type"].shape[0]) if "token_type" in tables else 0,
        max_positions=int(cfg.max_position_embeddings),
        max_seq=int(ckpt.max_positions),
        pad_id=int(ckpt.pad_token_id),
        num_labels=len(labels),
    )
    if project:  # the embedding tables' width E (the encoder's is hidden)
        dims.update(embedding_size=int(tensors["embeddings.word"].shape[1]))
    if shared:
        dims.update(shared_layers=True)
    if rel is not None:
        dims.update(rel_buckets=int(rel[0].shape[0]))
    if ckpt.head == "embedding":  # the model dir's sentence-transformers Pooling / Normalize
        dims.update(pooling=ckpt.pooling, normalize=bool(ckpt.normalize))
    if head_act not in (None, "tanh"):  # absent = tanh (artifacts from before other heads)
        dims.update(head_act=head_act)
    source = dict(path=str(ckpt.path), architecture=ckpt.architecture, model_hash=ckpt.model_hash)
    return QuantizedModel(config, dims, scales, tensors, source, load_tokenizer_json(ckpt.path), labels,
                          weight_bits_map=packed)


def _merged(a: RangeObserver, b: RangeObserver) -> RangeObserver:
    """One observer holding what ``a`` and ``b`` saw (max |x|, per channel, and their samples)."""
    return RangeObserver(a.keep_samples or b.keep_samples, max(a.absmax, b.absmax),
                         np.maximum(a.channel_absmax, b.channel_absmax), [*a.samples, *b.samples], a.count + b.count)
def relative_position_bias(ckpt: HFCheckpoint) -> tuple[np.ndarray, np.ndarray] | None:
    """MPNet's relative position bias: ``(W, bucket)``, or None for a model without one.

    ``W`` is ``encoder.relative_attention_bias.weight`` (float32 ``[num_buckets, heads]``);
    ``bucket`` (int32 ``[2L - 1]``, ``L`` = the longest sequence) the bucket HF's own
    ``compute_position_bias`` gives relative position ``r = j - i``, at ``r + L - 1``: read from the
    embedding's input while it runs (its float ``log``/``divide`` run here, in torch, once), and
    checked to depend on ``j - i`` only. The compiled model gathers these integers
    (``op/rel_pos_bias.py``)."""
    import torch

    if not _has_module(ckpt, "encoder.relative_attention_bias"):
        return None
    emb, enc = ckpt.module("encoder.relative_attention_bias"), ckpt.module("encoder")
    L = int(ckpt.max_positions)
    seen = []
    handle = emb.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            enc.compute_position_bias(torch.zeros(1, L, 1))
    finally:
        handle.remove()
    if len(seen) != 1 or tuple(seen[0].shape) != (L, L):
        raise IBertTVMError(f"{ckpt.architecture}: compute_position_bias did not look up one [{L}, {L}] bucket matrix")
    full = seen[0].numpy().astype(np.int64)
    bucket = np.concatenate([full[::-1, 0], full[0, 1:]])  # r = -(L-1) .. L-1
    pos = np.arange(L)
    if not np.array_equal(full, bucket[pos[None, :] - pos[:, None] + L - 1]):
        raise IBertTVMError(f"{ckpt.architecture}: the relative position buckets depend on more than j - i")
    w = emb.weight.detach().float().numpy().astype(np.float32)
    if bucket.min() < 0 or bucket.max() >= w.shape[0]:
        raise IBertTVMError(f"{ckpt.architecture}: relative position buckets reach {bucket.max()}, the bias table "
                            f"has {w.shape[0]} rows")
    return w, bucket.astype(np.int32)


def _has_module(ckpt: HFCheckpoint, path: str) -> bool:
    try:
        ckpt.module(path)
    except IBertTVMError:
        return False
    return True


def check_weight_config(ckpt: HFCheckpoint, config: QuantConfig) -> None:
    """Before any work: the weight groups divide every encoder matrix's rows and the per-layer
    bits match the layer count (``IBertTVMError`` naming the problem otherwise)."""
    cfg = ckpt.config
    layers = int(cfg.num_hidden_layers)
    if config.layer_weight_bits and len(config.layer_weight_bits) != layers:
        raise IBertTVMError(f"layer_weight_bits has {len(config.layer_weight_bits)} entries, the model has {layers} "
                            "encoder layers")
    if ckpt.shared_layers and len(set(config.layer_weight_bits or ())) > 1:
        raise IBertTVMError(f"layer_weight_bits {list(config.layer_weight_bits)}: {ckpt.architecture} applies one "
                            "layer's weights in every layer, so they have one bit width")
    lsb = config.layer_softmax_bits
    if lsb and len(lsb) != layers:
        raise IBertTVMError(f"layer_softmax_bits has {len(lsb)} entries, the model has {layers} encoder layers")
    if ckpt.shared_layers and len(set(lsb)) > 1:
        raise IBertTVMError(f"layer_softmax_bits {list(lsb)}: {ckpt.architecture} applies one layer in every "
                            "layer, so its softmax has one output width")
    g = config.weight_groups
    inter = int(getattr(cfg, "intermediate_size", None) or cfg.hidden_dim)  # DistilBertConfig: hidden_dim
    for rows, what in ((int(cfg.hidden_size), "hidden"), (inter, "intermediate")):
        if g > 1 and rows % g:
            raise IBertTVMError(f"weight_groups={g} does not divide the {rows} output rows of the {what}-sized "
                                f"encoder matrices; pick a divisor of {math.gcd(int(cfg.hidden_size), inter)} "
                                "(0 = one scale per row, 1 = per tensor)")


def calibrate(
    ckpt: HFCheckpoint,
    sentences: Sequence[str],
    config: QuantConfig | None = None,
    *,
    batch_size: int = 16,
    progress=None,
) -> QuantizedModel:
    config = config or QuantConfig()
    check_weight_config(ckpt, config)
    obs = collect_ranges(
        ckpt, sentences, batch_size=batch_size, keep_samples=config.calibration == "percentile", progress=progress
    )
    return build_quantized(ckpt, obs, config)
