"""Graph point names -> the scale names the op plans read (``layer{i}.q``, ``embeddings.ln``...).

Today's hand-built path names its calibration points ``embeddings.sum``, ``embeddings.ln``,
``layer{i}.{q,k,v,ctx,res1,ln1,inter,gelu,res2,ln2}``, ``embeddings.project`` (the E -> H linear of
factorized embeddings), ``head.pre_tanh`` and ``head.logits``
(``head.relu`` for DistilBERT's ReLU head, ``head.pre_gelu`` / ``head.gelu`` for ELECTRA's GELU head).
:func:`legacy_name` gives the one a graph point
(:class:`~ibert_tvm.passes.find_quantization_points.QuantizationPoint`) stands for, from its
aliases (the HF module paths of BERT/RoBERTa/I-BERT, under any prefix such as ``bert.``) and,
for the head, from its kind. Calibration stores each point's scale under this name
(``frontend.points``); it goes when the op plans are built from the graph itself (issue 12).

Points with no name today map to None: the embedding gathers (scale from the table), the
attention scores and probabilities (derived and fixed scales), the tanh output (1/127) and the
linear outputs summed into a residual (requantized straight into the sum).
"""

from __future__ import annotations

import re

from ..errors import IBertTVMError

_LAYER = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.(.+)$")
_LAYER_ROLES = {
    "attention.self.query:out": "q",
    "attention.self.key:out": "k",
    "attention.self.value:out": "v",
    "attention.output.dense:in": "ctx",
    "attention.output.LayerNorm:in": "res1",
    "attention.output.LayerNorm:out": "ln1",
    "intermediate.dense:out": "inter",
    "output.dense:in": "gelu",
    "output.LayerNorm:in": "res2",
    "output.LayerNorm:out": "ln2",
}
_EMBEDDINGS = re.compile(r"(?:^|\.)embeddings\.LayerNorm:(in|out)$")
# factorized embeddings (ALBERT, ELECTRA with embedding_size != hidden_size): the E -> H linear
_PROJECT = re.compile(r"(?:^|\.)embeddings\.project:out$")
_HEAD_KINDS = {"tanh_in": "head.pre_tanh", "logits": "head.logits", "relu_out": "head.relu"}
# a GELU outside the encoder layers: ELECTRA's classifier (dense -> GELU -> out_proj)
_HEAD_GELU = {"gelu_in": "head.pre_gelu", "act_channel": "head.gelu"}


def _alias_name(alias: str) -> str | None:
    m = _LAYER.search(alias)
    if m and m.group(2) in _LAYER_ROLES:
        return f"layer{m.group(1)}.{_LAYER_ROLES[m.group(2)]}"
    m = _EMBEDDINGS.search(alias)
    if m:
        return "embeddings.sum" if m.group(1) == "in" else "embeddings.ln"
    if _PROJECT.search(alias):
        return "embeddings.project"
    return None


def legacy_name(point) -> str | None:
    """Today's name of ``point``, or None; ``IBertTVMError`` if its aliases name two points."""
    found = {n for a in point.aliases if (n := _alias_name(a)) is not None}
    if point.kind in _HEAD_KINDS:
        found.add(_HEAD_KINDS[point.kind])
    if not found and point.kind in _HEAD_GELU and _next_to_gelu(point):
        found.add(_HEAD_GELU[point.kind])
    if len(found) > 1:
        raise IBertTVMError(f"graph point {point.name} stands for several of today's points: {sorted(found)}")
    return found.pop() if found else None


def _next_to_gelu(point) -> bool:
    """Whether ``point`` is a GELU's input or output (its kind says so for the input; an
    ``act_channel`` with no LayerNorm alias is a GELU output)."""
    return point.kind == "gelu_in" or not any(a.rsplit(":", 1)[0].endswith("LayerNorm") for a in point.aliases)


def legacy_names(points) -> dict:
    """``{today's name: point}`` over ``points``; ``IBertTVMError`` when two points claim one name.
    The later applications of a shared module's point (``point.application > 0``) are not listed:
    they have the scale of application 0."""
    out: dict = {}
    for p in points:
        if p.application:
            continue
        n = legacy_name(p)
        if n is None:
            continue
        if n in out:
            raise IBertTVMError(f"graph points {out[n].name} and {p.name} both stand for today's {n}")
        out[n] = p
    return out
