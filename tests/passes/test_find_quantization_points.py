"""FindQuantizationPoints on the imported tiny models.

(b) The points, mapped to today's names (``frontend.legacy_names``), are exactly the names of
today's ``calibrate.quantization_points(ckpt)``, each with the kind its scale needs there; every calibrated
point has a name today. The check fails when a point is missing, mis-mapped or of the wrong kind,
and the graph's structure, not a list, decides the points.
"""

from __future__ import annotations

import dataclasses

import pytest

from frontend_support import ARCHS, imported

# Today's point -> the kind of scale build_quantized gives it (act / act_pc / wide ...).
TODAY_KIND = {
    "q": "act", "k": "act", "v": "act", "ctx": "act", "res1": "residual", "ln1": "act_channel",
    "inter": "gelu_in", "gelu": "act_channel", "res2": "residual", "ln2": "act_channel",
    "embeddings.sum": "residual", "embeddings.ln": "act_channel", "head.pre_tanh": "tanh_in", "head.logits": "logits",
}


def check_against_today(points, ckpt) -> None:
    """(b): ``AssertionError`` naming what differs."""
    from ibert_tvm.frontend.legacy_names import legacy_names
    from ibert_tvm.quantization.calibrate import quantization_points

    named = legacy_names(points)
    want = {n for n, _, _ in quantization_points(ckpt)}
    missing, extra = sorted(want - set(named)), sorted(set(named) - want)
    assert not missing and not extra, f"missing {missing}, extra {extra}"
    for n, p in named.items():
        kind = TODAY_KIND[n.split(".", 1)[1] if n.startswith("layer") else n]
        assert p.kind == kind, f"{n} ({p.name}) is {p.kind}, today's scale is {kind}"
    unnamed = [p.name for p in points if p.calibrated and p not in named.values()]
    assert not unnamed, f"calibrated points with no name today: {unnamed}"


def _points(tiny_factory, arch):
    from ibert_tvm.passes.find_quantization_points import find_quantization_points

    im, mod = imported(str(tiny_factory(arch)))
    return im, mod, find_quantization_points(mod)


@pytest.mark.parametrize("arch", ARCHS)
def test_points_are_todays(tiny_factory, arch):
    im, _, points = _points(tiny_factory, arch)
    check_against_today(points, im.ckpt)


def test_points_named_from_the_graph(tiny_factory):
    """Layer 0 of BertModel, every point in binding order, with its graph name and kind."""
    _, _, points = _points(tiny_factory, "BertModel")
    p = "encoder.layer.0."
    got = [(q.name, q.kind) for q in points]
    assert got[:22] == [
        ("embeddings.word_embeddings:out", "embedding"),
        ("embeddings.token_type_embeddings:out", "embedding"),
        ("embeddings.position_embeddings:out", "embedding"),
        ("embeddings.LayerNorm:in", "residual"),
        ("embeddings.LayerNorm:out", "act_channel"),
        (p + "attention.self.query:out", "act"),
        (p + "attention.self.key:out", "act"),
        (p + "attention.self.value:out", "act"),
        (p + "attention.self:scores", "scores"),
        (p + "attention.self:probs", "probs"),
        (p + "attention.output.dense:in", "act"),
        (p + "attention.output.dense:out", "branch"),
        (p + "attention.output.LayerNorm:in", "residual"),
        (p + "attention.output.LayerNorm:out", "act_channel"),
        (p + "intermediate.dense:out", "gelu_in"),
        (p + "output.dense:in", "act_channel"),
        (p + "output.dense:out", "branch"),
        (p + "output.LayerNorm:in", "residual"),
        (p + "output.LayerNorm:out", "act_channel"),
        ("encoder.layer.1.attention.self.query:out", "act"),
        ("encoder.layer.1.attention.self.key:out", "act"),
        ("encoder.layer.1.attention.self.value:out", "act"),
    ]
    assert len(points) == 5 + 2 * 14
    ln_out = points[4]
    assert set(ln_out.aliases) == {"embeddings.LayerNorm:out"} | {
        f"{p}attention.self.{n}:in" for n in ("query", "key", "value")}
    assert str(ln_out.var.ty) == 'R.Tensor((batch, seq, 32), dtype="float32")'


@pytest.mark.parametrize("arch, head", [
    ("BertForSequenceClassification", ("bert.pooler.dense", "classifier")),
    ("RobertaForSequenceClassification", ("classifier.dense", "classifier.out_proj")),
])
def test_head_points(tiny_factory, arch, head):
    """The head's points carry the head's own module names; the last LayerNorm's output is
    also the dense's input (through the first-token ``take``)."""
    _, _, points = _points(tiny_factory, arch)
    dense, out = head
    assert [(q.name, q.kind) for q in points[-3:]] == [
        (f"{dense}:out", "tanh_in"), (f"{out}:in", "tanh_out"), (f"{out}:out", "logits")]
    assert f"{dense}:in" in points[-4].aliases and points[-4].name.endswith("layer.1.output.LayerNorm:out")


def test_check_fails_on_a_missing_mismapped_or_wrong_kind_point(tiny_factory):
    im, _, points = _points(tiny_factory, "BertModel")
    check_against_today(points, im.ckpt)
    by_name = {q.name: q for q in points}
    ctx = by_name["encoder.layer.1.attention.output.dense:in"]
    with pytest.raises(AssertionError, match=r"missing \['layer1.ctx'\]"):
        check_against_today([q for q in points if q is not ctx], im.ckpt)
    query = by_name["encoder.layer.0.attention.self.query:out"]
    renamed = dataclasses.replace(query, name="encoder.layer.0.attention.self.querx:out",
                                  aliases=("encoder.layer.0.attention.self.querx:out",))
    with pytest.raises(AssertionError, match=r"missing \['layer0.q'\]"):
        check_against_today([renamed if q is query else q for q in points], im.ckpt)
    res1 = by_name["encoder.layer.0.attention.output.LayerNorm:in"]
    wrong = dataclasses.replace(res1, kind="act")
    with pytest.raises(AssertionError, match=r"layer0.res1 .* is act, today's scale is residual"):
        check_against_today([wrong if q is res1 else q for q in points], im.ckpt)


def _replace_gelu(mod, make):
    """``mod`` with every ``nn.gelu(x)`` replaced by ``make(x)``."""
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    x = wildcard()
    out = mod.clone()
    out["main"] = rewrite_call(is_op("relax.nn.gelu")(x), lambda _call, m: make(m[x]), mod["main"])
    return out


def test_structure_decides_the_points(tiny_factory):
    """Without the GELU, ``intermediate.dense:out`` and ``output.dense:in`` are one tensor: it
    cannot be both today's ``inter`` and ``gelu``."""
    from ibert_tvm.errors import IBertTVMError
    from ibert_tvm.frontend.legacy_names import legacy_names
    from ibert_tvm.passes.find_quantization_points import find_quantization_points

    _, mod, _ = _points(tiny_factory, "BertModel")
    points = find_quantization_points(_replace_gelu(mod, lambda x: x))
    merged = {q.name: q for q in points}["encoder.layer.0.intermediate.dense:out"]
    assert merged.aliases == ("encoder.layer.0.intermediate.dense:out", "encoder.layer.0.output.dense:in")
    with pytest.raises(IBertTVMError, match=r"stands for several of today's points: \['layer0.gelu', 'layer0.inter'\]"):
        legacy_names(points)


def test_a_float_op_no_rule_places_is_an_error(tiny_factory):
    """A float op on an activation that no rule quantizes (here ``exp`` where the GELU was) is an
    error naming the op: it would be a float island in the integer model."""
    from tvm import relax

    from ibert_tvm.errors import IBertTVMError
    from ibert_tvm.passes.find_quantization_points import find_quantization_points

    _, mod, _ = _points(tiny_factory, "BertModel")
    with pytest.raises(IBertTVMError, match=r"cannot place relax.exp at lv\d+"):
        find_quantization_points(_replace_gelu(mod, relax.op.exp))
