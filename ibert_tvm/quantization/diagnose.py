"""Which quantization points lose the most? A one-at-a-time ablation in the FP32 model.

For each *kind* of quantization point (``q``, ``ctx``, ``ln1``, ``gelu``, ``res2``, ...
aggregated over layers), the FP32 model runs with only that kind rounded to its calibrated
integer grid (symmetric, the same scale and saturation the integer model uses), and the
sentence embeddings are compared with FP32 by cosine. Weights (per-channel int8) are a kind of
their own. This is a float *simulation* for diagnosis only; the deployed model is the integer one.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from .artifact import QuantizedModel
from .calibrate import quantization_points, quantize_weight, torch_inputs

_BITS = {"sum": "residual_bits", "res1": "residual_bits", "res2": "residual_bits", "inter": "gelu_in_bits",
         "pre_tanh": "tanh_in_bits", "logits": "logits_bits"}


def _kind(name: str) -> str:
    return re.sub(r"^layer\d+\.", "", name).replace("embeddings.", "emb.")


_LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
            "intermediate.dense", "output.dense")


def encoder_linears(ckpt) -> list[tuple[str, object]]:
    """(BERT-named path, module) of every encoder linear, through ``ckpt.module`` (the architecture's
    name map: DistilBERT, ALBERT, MPNet ... as well as BERT), plus an embedding projection if any."""
    out = []
    layers = 1 if ckpt.shared_layers else int(ckpt.config.num_hidden_layers)
    for i in range(layers):
        for n in _LINEARS:
            path = f"encoder.layer.{i}.{n}"
            out.append((path, ckpt.module(path)))
    try:
        out.append(("embeddings.project", ckpt.module("embeddings.project")))
    except Exception:  # IBertTVMError: no factorized embeddings
        pass
    return out


class _rounded_softmax:
    """Within the block, every last-axis softmax of the float model's attention returns its
    probabilities rounded to multiples of 2^-bits (as the integer i-softmax's output), clamped to
    [0, (2^bits - 1) 2^-bits]. The attention runs in its eager form (SDPA has no softmax to patch)."""

    def __init__(self, ckpt, bits: int):
        self.ckpt, self.bits = ckpt, bits

    def __enter__(self):
        import torch.nn.functional as F

        from ..frontend.importer import _eager_attention as eager_attention

        self._eager = eager_attention(self.ckpt.model)
        self._eager.__enter__()
        self._orig = F.softmax
        orig, n = F.softmax, float(1 << self.bits)

        def softmax(x, dim=None, *a, **k):
            y = orig(x, dim, *a, **k)
            if y.ndim == 4 and dim in (-1, 3):
                import torch

                y = torch.clamp(torch.floor(y * n + 0.5), 0, n - 1) / n
            return y

        F.softmax = softmax
        return self

    def __exit__(self, *exc):
        import torch.nn.functional as F

        F.softmax = self._orig
        self._eager.__exit__(*exc)
        return False


def ablate(ckpt, qm: QuantizedModel, sentences: Sequence[str], *, batch_size: int = 25,
           softmax_bits: Sequence[int] = (8,)) -> list[tuple[str, float, float]]:
    """-> [(kind, mean cosine, min cosine)] sorted from most to least lossy. Besides the
    calibrated points and the weights, ``softmax out (uint8)`` rounds the attention probabilities
    to the i-softmax output grid (2^-8; ``softmax_bits`` adds other widths for comparison)."""
    import torch

    from ..support.tokenize import Tokenizer

    d = qm.dims
    tok = Tokenizer(qm.tokenizer_json, d["max_seq"], d["family"], d["pad_id"])
    batches = [tok(list(sentences[i : i + batch_size])) for i in range(0, len(sentences), batch_size)]

    def embed():
        outs = []
        with torch.no_grad():
            for enc in batches:
                r = ckpt.model(**torch_inputs(enc))
                hs = (r.last_hidden_state if hasattr(r, "last_hidden_state") else r.hidden_states[-1]).numpy()
                m = enc["attention_mask"][:, :, None]
                outs.append((hs * m).sum(1) / m.sum(1))
        return np.concatenate(outs).astype(np.float64)

    def cos(a, b):
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    ref = embed()
    points = [p for p in quantization_points(ckpt) if p[0] in qm.scales and not p[0].startswith("head.")]
    kinds = sorted({_kind(n) for n, _, _ in points})
    results = []
    for kind in kinds:
        handles = []
        for name, mod, where in points:
            if _kind(name) != kind:
                continue
            scale = qm.scale(name)
            if np.ndim(scale) > 0:  # per-channel (last axis)
                scale = torch.tensor(scale, dtype=torch.float32)
            bits = getattr(qm.config, _BITS.get(name.split(".")[-1], "act_bits"))
            hi = (1 << (bits - 1)) - 1

            def fq(t, s=scale, hi=hi):
                return torch.clamp(torch.round(t / s), -hi - 1, hi) * s

            if where == "in":
                handles.append(mod.register_forward_pre_hook(lambda m, a, f=fq: (f(a[0]), *a[1:])))
            else:
                handles.append(mod.register_forward_hook(lambda m, a, o, f=fq: (f(o[0]), *o[1:]) if isinstance(o, tuple) else f(o)))
        try:
            c = cos(embed(), ref)
        finally:
            for h in handles:
                h.remove()
        results.append((kind, float(c.mean()), float(c.min())))
    # the softmax output: the integer model's i-softmax gives uint8 probabilities with scale 2^-8
    for bits in softmax_bits:
        with _rounded_softmax(ckpt, bits):
            c = cos(embed(), ref)
        results.append((f"softmax out (uint{bits}, 2^-{bits})", float(c.mean()), float(c.min())))
    # weights only: every encoder linear, found through the architecture's name map
    saved = {}
    with torch.no_grad():
        for name, lin in encoder_linears(ckpt):
            w = lin.weight
            saved[name] = w.detach().clone()
            q, s = quantize_weight(w.numpy())
            w.copy_(torch.from_numpy((q.astype(np.float64) * s[:, None]).astype(np.float32)))
    try:
        c = cos(embed(), ref)
    finally:
        with torch.no_grad():
            lins = dict(encoder_linears(ckpt))
            for name, v in saved.items():
                lins[name].weight.copy_(v)
    results.append(("weights (int8 per-channel)", float(c.mean()), float(c.min())))
    return sorted(results, key=lambda r: r[1])


def format_table(rows) -> str:
    lines = ["| quantized alone | mean cosine vs FP32 | min |", "|---|---|---|"]
    lines += [f"| {k} | {m:.4f} | {n:.4f} |" for k, m, n in rows]
    return "\n".join(lines)


def saturation(ckpt, qm: QuantizedModel, sentences: Sequence[str], *, batch_size: int = 16) -> dict[str, dict]:
    """How often each quantization point's FP32 values fall outside its calibrated integer range.

    For every point the float model's values at real tokens are divided by the point's scale (per
    channel where it has one) and compared with the largest integer of its width. Returns, per
    point: ``values``, ``saturated`` (count), ``tokens`` / ``tokens_saturated`` (a token counts if
    any of its channels saturates), ``sentences_saturated``, ``by_position`` (saturated values at
    ``cls`` = the first token, ``sep`` = the last real token, ``inner`` = the rest), and per channel
    ``channel_saturated`` (count) and ``channel_ratio`` (max |x| / range). A value saturates when it
    rounds past the largest integer: ``|x| / scale > 2^(b-1) - 1/2`` (ratio > 1 + 1/(2^b - 2)).
    """
    import torch

    from ..support.tokenize import Tokenizer

    d = qm.dims
    tok = Tokenizer(qm.tokenizer_json, d["max_seq"], d["family"], d["pad_id"])
    points = [p for p in quantization_points(ckpt) if p[0] in qm.scales and not p[0].startswith("head.")]
    out: dict[str, dict] = {}
    state: dict = {}

    def hook(name):
        scale = np.asarray(qm.scale(name), dtype=np.float64)
        bits = getattr(qm.config, _BITS.get(name.split(".")[-1], "act_bits"))
        hi = (1 << (bits - 1)) - 1
        lim = scale * hi
        sat_at = (hi + 0.5) / hi  # rounds to hi + 1: clipped

        def grab(t):
            x = t.detach().double().numpy()
            m = state["mask"].astype(bool)
            if x.ndim != 3:
                return
            r = np.abs(x) / lim  # [B, S, C]
            sat = (r > sat_at) & m[:, :, None]
            o = out.setdefault(name, dict(values=0, saturated=0, tokens=0, tokens_saturated=0, sentences_saturated=0,
                                          by_position=dict(cls=0, sep=0, inner=0),
                                          channel_saturated=np.zeros(x.shape[-1], np.int64),
                                          channel_ratio=np.zeros(x.shape[-1])))
            o["values"] += int(m.sum()) * x.shape[-1]
            o["saturated"] += int(sat.sum())
            o["tokens"] += int(m.sum())
            tok_sat = sat.any(-1)
            o["tokens_saturated"] += int(tok_sat.sum())
            o["sentences_saturated"] += int(tok_sat.any(-1).sum())
            last = m.sum(1) - 1
            per_tok = sat.sum(-1)  # [B, S]
            cls = int(per_tok[:, 0].sum())
            sep = int(per_tok[np.arange(len(last)), last].sum())
            o["by_position"]["cls"] += cls
            o["by_position"]["sep"] += sep
            o["by_position"]["inner"] += int(per_tok.sum()) - cls - sep
            o["channel_saturated"] += sat.sum((0, 1))
            o["channel_ratio"] = np.maximum(o["channel_ratio"], np.where(m[:, :, None], r, 0).max((0, 1)))
        return grab

    handles = []
    for name, mod, where in points:
        g = hook(name)
        if where == "in":
            handles.append(mod.register_forward_pre_hook(lambda m, a, g=g: g(a[0])))
        else:
            handles.append(mod.register_forward_hook(lambda m, a, o, g=g: g(o[0] if isinstance(o, tuple) else o)))
    try:
        with torch.no_grad():
            for i in range(0, len(sentences), batch_size):
                enc = tok(list(sentences[i : i + batch_size]), truncate=True)
                state["mask"] = enc["attention_mask"]
                ckpt.model(**torch_inputs(enc))
    finally:
        for h in handles:
            h.remove()
    return out


def saturation_table(sat: dict[str, dict], *, top: int = 20) -> str:
    """The points with the most saturated values (share of values and of tokens)."""
    rows = sorted(sat.items(), key=lambda kv: -kv[1]["saturated"])[:top]
    lines = ["| point | saturated values | share of values | tokens hit | sentences hit | cls/sep/inner | "
             "channels hit | worst channel (max \\|x\\|/range) |", "|---|---:|---:|---:|---:|---|---:|---|"]
    for name, o in rows:
        ch = o["channel_saturated"]
        worst = int(np.argmax(o["channel_ratio"]))
        bp = o["by_position"]
        lines.append(f"| {name} | {o['saturated']} | {o['saturated'] / max(o['values'], 1):.2e} | "
                     f"{o['tokens_saturated'] / max(o['tokens'], 1):.1%} | {o['sentences_saturated']} | "
                     f"{bp['cls']}/{bp['sep']}/{bp['inner']} | {int((ch > 0).sum())} | "
                     f"{worst} ({o['channel_ratio'][worst]:.1f}x) |")
    return "\n".join(lines)


def fake_quant_cosines(ckpt, qm: QuantizedModel, sentences: Sequence[str], *, batch_size: int = 32,
                       kinds: Sequence[str] | None = None) -> np.ndarray:
    """Per-sentence cosine to FP32 with every activation point (or those of ``kinds``) rounded to
    its calibrated grid at once, in the float model (weights stay float). A fast screen for scale
    choices; the figures that count come from the integer model (golden or compiled)."""
    import torch

    from ..support.tokenize import Tokenizer

    d = qm.dims
    tok = Tokenizer(qm.tokenizer_json, d["max_seq"], d["family"], d["pad_id"])
    points = [p for p in quantization_points(ckpt) if p[0] in qm.scales and not p[0].startswith("head.")]
    if kinds is not None:
        points = [p for p in points if _kind(p[0]) in kinds]

    def embed():
        outs = []
        with torch.no_grad():
            for i in range(0, len(sentences), batch_size):
                enc = tok(list(sentences[i : i + batch_size]), truncate=True)
                hs = ckpt.model(**torch_inputs(enc)).last_hidden_state.double().numpy()
                m = enc["attention_mask"][:, :, None]
                outs.append((hs * m).sum(1) / m.sum(1))
        return np.concatenate(outs)

    ref = embed()
    handles = []
    for name, mod, where in points:
        scale = qm.scale(name)
        scale = torch.tensor(scale, dtype=torch.float32) if np.ndim(scale) > 0 else float(scale)
        hi = (1 << (getattr(qm.config, _BITS.get(name.split(".")[-1], "act_bits")) - 1)) - 1

        def fq(t, s=scale, hi=hi):
            return torch.clamp(torch.round(t / s), -hi - 1, hi) * s

        if where == "in":
            handles.append(mod.register_forward_pre_hook(lambda m, a, f=fq: (f(a[0]), *a[1:])))
        else:
            handles.append(mod.register_forward_hook(
                lambda m, a, o, f=fq: (f(o[0]), *o[1:]) if isinstance(o, tuple) else f(o)))
    try:
        got = embed()
    finally:
        for h in handles:
            h.remove()
    return (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
