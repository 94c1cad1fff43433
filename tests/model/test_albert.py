"""ALBERT through import + passes: one layer's weights applied num_hidden_layers times, compiled
once, and factorized embeddings (an E-wide embedding sum + LayerNorm, then one more int8 linear
E -> H). Tiny random models (E 16, H 32, 3 applications of one layer, gelu_new; no real ALBERT
weights are available offline) calibrate, compile (llvm) float-free, hold one copy of the
shared layer's integer weights, equal golden bit for bit on padded batches, and track FP32."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from arch_checks import (
    assert_equals_golden,
    assert_float_free,
    assert_qat_and_sensitivity_refuse,
    assert_tracks_fp32,
    build,
    run_both,
)

CASES = ["AlbertModel", "AlbertForSequenceClassification"]
SHAPES = [(1, 1), (3, 33), (8, 128)]


@pytest.fixture(scope="module")
def built(tiny_factory, calibration_sentences, tmp_path_factory):
    return build(CASES, tiny_factory, calibration_sentences, tmp_path_factory)


@pytest.mark.parametrize("arch", CASES)
def test_albert_compiles_float_free(arch, built):
    from ibert_tvm.quantization.artifact import QuantizedModel

    ckpt, qm, d, manifest = built[arch]
    assert_float_free(manifest)
    assert ckpt.config.num_hidden_layers == 3 and ckpt.config.embedding_size == 16
    assert ckpt.config.hidden_act == "gelu_new"
    assert qm.dims["layers"] == 3 and qm.dims["shared_layers"] is True and qm.dims["embedding_size"] == 16
    assert qm.tensors["embeddings.word"].shape == (30522, 16)
    assert qm.tensors["embeddings.project.weight"].shape == (32, 16)
    assert QuantizedModel.load(d / "q").dims == qm.dims  # the saved artifact validates and reloads
    if arch.endswith("Classification"):  # ALBERT's pooler (dense + tanh) -> classifier, as BERT's
        assert "head_act" not in qm.dims and "head.pre_tanh" in qm.scales


@pytest.mark.parametrize("arch", CASES)
def test_albert_artifacts_hold_one_copy_of_the_shared_layer(arch, built):
    """q/ and out/params.npz hold encoder.layer.0 only, and the compiled forward reads each of its
    integer tensors at all 3 applications, through one layer function called 3 times (fails if
    per-application copies or an unrolled forward come back)."""
    from collections import Counter

    import tvm
    from tvm import relax

    from ibert_tvm.frontend.lower import integer_module
    from ibert_tvm.model.plan import ModelPlan
    from ibert_tvm.passes.find_quantization_points import vars_read

    ckpt, qm, d, manifest = built[arch]
    layers = {k.split(".")[2] for k in qm.tensors if k.startswith("encoder.layer.")}
    assert layers == {"0"}
    assert not [k for k in qm.scales if k.startswith(("layer1.", "layer2."))]
    with np.load(d / "out" / "params.npz") as z:  # p0000.. in the order of manifest["params"]
        assert len(z.files) == len(manifest["params"])
        params = {n: z[f"p{i:04d}"] for i, n in enumerate(manifest["params"])}
    layer = {k: v for k, v in params.items() if k.startswith("encoder.layer.")}
    assert layer and {k.split(".")[2] for k in layer} == {"0"}
    plan = ModelPlan(qm)
    assert len(plan.layers) == 3 and all(lp is plan.layers[0] for lp in plan.layers)
    one = sum(v.nbytes for v in layer.values())
    total = sum(v.nbytes for v in params.values())
    print(f"{arch}: params {total} B with the shared layer once ({one} B), {total + 2 * one} B with 3 copies")
    # the integer forward: one parameter per shared tensor, read at every application
    mod, names, _ = integer_module(qm, model=ckpt)
    assert names == manifest["params"]
    fwd = mod["forward"]
    params = set(fwd.params[int(fwd.attrs["num_input"]):])
    uses = Counter(str(v.name) for blk in fwd.body.blocks for b in blk.bindings for v in vars_read(b.value)
                   if v in params)
    for name in names:
        assert uses[name] == (3 if name.startswith("encoder.layer.") else 1), (name, uses[name])
    # ... through one Relax function of the layer (passes/outline_shared_layer.py), called 3 times
    calls = [b.value.op.name_hint for blk in fwd.body.blocks for b in blk.bindings
             if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.GlobalVar)]
    assert calls == ["shared_layer"] * 3
    assert [gv.name_hint for gv, f in mod.functions_items() if isinstance(f, relax.Function)] in (
        ["forward", "shared_layer"], ["shared_layer", "forward"])
    assert manifest["verify"]["module"]["ops"]["relax_function"] == 2


@pytest.mark.parametrize("arch", CASES)
def test_albert_compiled_equals_golden_with_padding(arch, built):
    _, qm, d, _ = built[arch]
    assert_equals_golden(arch, qm, d, SHAPES, seed=5)


@pytest.mark.parametrize("arch", CASES)
def test_albert_tracks_fp32(arch, built, calibration_sentences):
    ckpt, qm, d, _ = built[arch]
    q, plan, enc, res = run_both(ckpt, qm, d, calibration_sentences)
    assert_tracks_fp32(arch, ckpt, q * plan.out_scale, res, enc["attention_mask"])


def test_albert_shared_layer_scales_cover_every_application(built, calibration_sentences):
    """Each point of the shared layer is calibrated over all 3 applications (not the first), and the
    projection's output and the layer's output (the shared layer's two inputs) have one scale."""
    import torch

    from ibert_tvm.quantization.calibrate import torch_inputs
    from ibert_tvm.support.tokenize import Tokenizer

    ckpt, qm, _, _ = built["AlbertModel"]
    d = qm.dims
    tok = Tokenizer(qm.tokenizer_json, d["max_seq"], d["family"], d["pad_id"])
    seen: dict = {"q": [], "inter": []}
    layer = ckpt.model.encoder.albert_layer_groups[0].albert_layers[0]
    state = {}

    def grab(key):
        def hook(mod, args, out):
            x = out.detach().numpy()[state["mask"].astype(bool)]
            seen[key][-1].append(float(np.abs(x).max()))
        return hook

    handles = [layer.attention.query.register_forward_hook(grab("q")), layer.ffn.register_forward_hook(grab("inter"))]
    try:
        with torch.no_grad():
            for i in range(0, len(calibration_sentences), 16):
                enc = tok(calibration_sentences[i:i + 16])
                state["mask"] = enc["attention_mask"]
                for v in seen.values():
                    v.append([])
                ckpt.model(**torch_inputs(enc))
    finally:
        for h in handles:
            h.remove()
    q = np.max(np.array(seen["q"]), axis=0)  # [applications]: max over the batches
    assert q.shape == (3,)
    assert qm.scales["layer0.q"] == pytest.approx(q.max() / 127, rel=1e-6)
    assert q.max() > q[0]  # so the test tells "all applications" from "the first one"
    inter = np.max(np.array(seen["inter"]), axis=0)
    assert qm.scales["layer0.inter"] == pytest.approx(inter.max() * qm.config.gelu_headroom
                                                      / ((1 << (qm.config.gelu_in_bits - 1)) - 1), rel=1e-6)
    assert qm.scales["embeddings.project"] == qm.scales["layer0.ln2"]
    assert len(qm.scales["embeddings.ln"]) == 16 and len(qm.scales["embeddings.project"]) == 32


def test_albert_graph_names_and_hooks(built):
    from ibert_tvm.frontend.importer import import_model
    from ibert_tvm.frontend.points import hook_points
    from ibert_tvm.passes.find_quantization_points import find_quantization_points
    from ibert_tvm.passes.fold_layer_norm import FoldLayerNorm

    ckpt, _, _, _ = built["AlbertForSequenceClassification"]
    im = import_model(ckpt)
    assert "albert.encoder.layer.0.attention.self.query.weight" in im.param_names
    assert "albert.embeddings.project.weight" in im.param_names and "albert.pooler.dense.weight" in im.param_names
    assert not [n for n in im.param_names if "albert_layer" in n or "encoder.layer.1" in n]
    assert "R.nn.gelu_tanh" in im.mod.script()  # gelu_new exported as torch's tanh-form gelu
    points = find_quantization_points(FoldLayerNorm()(im.mod))
    apps = {}
    for p in points:
        apps.setdefault(p.name, []).append(p.application)
    assert apps["albert.encoder.layer.0.attention.self.query:out"] == [0, 1, 2]
    assert apps["albert.embeddings.project:out"] == [0]
    hooks = {name: (path, side) for name, path, side in hook_points(ckpt)}
    assert len(hooks) == len(hook_points(ckpt))  # one hook per point of the shared layer
    prefix = "albert.encoder.albert_layer_groups.0.albert_layers.0."
    assert hooks["layer0.q"] == (prefix + "attention.query", "out")
    assert hooks["layer0.gelu"] == (prefix + "ffn_output", "in")
    assert hooks["layer0.ln2"] == (prefix + "full_layer_layer_norm", "out")
    assert hooks["embeddings.project"] == ("albert.encoder.embedding_hidden_mapping_in", "out")
    assert hooks["head.pre_tanh"] == ("albert.pooler", "out")
    assert not [n for n in hooks if n.startswith(("layer1.", "layer2."))]


def test_albert_api_runs_texts(built, calibration_sentences):
    import ibert_tvm
    from ibert_tvm.deploy.runtime import CompiledModel

    _, qm, d, _ = built["AlbertForSequenceClassification"]
    texts = calibration_sentences[:5]
    q = CompiledModel(d / "out").run_text(texts)
    assert ibert_tvm.load(d / "out").predict(texts) == [qm.labels[k] for k in q.argmax(1)]


@pytest.mark.parametrize("field", ["num_hidden_groups", "inner_group_num"])
def test_albert_with_several_layers_per_group_or_groups_is_refused(field, tiny_factory, tmp_path, capsys):
    from ibert_tvm.cli import main

    d = tmp_path / "m"
    shutil.copytree(tiny_factory("AlbertModel"), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg[field] = 3
    (d / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()  # the fixture's own output (saving the tiny model) is not calibrate's
    code = main(["calibrate", str(d), "-o", str(tmp_path / "q")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("ibert-tvm calibrate: error: ") and f"{d}/config.json: {field} 3: only ALBERT's one shared layer" in err[0]
    assert not (tmp_path / "q").exists()


def test_albert_artifact_with_two_input_scales_is_refused(built, tmp_path):
    """A q/ whose projection scale differs from the shared layer's ln2 scale would fold two input scales
    into one set of weights: refused naming the file and the field."""
    from ibert_tvm.errors import IBertTVMError
    from ibert_tvm.quantization.artifact import META, QuantizedModel

    _, _, d, _ = built["AlbertModel"]
    q = tmp_path / "q"
    shutil.copytree(d / "q", q)
    meta = json.loads((q / META).read_text())
    meta["scales"]["embeddings.project"] = [s * 2 for s in meta["scales"]["embeddings.project"]]
    (q / META).write_text(json.dumps(meta))
    with pytest.raises(IBertTVMError, match=r"quantization.json: scales.embeddings.project differs from "
                                            r"scales.layer0.ln2"):
        QuantizedModel.load(q)


def test_qat_and_sensitivity_refuse_albert(built):
    assert_qat_and_sensitivity_refuse(built)


def test_outline_shared_layer_refuses_what_it_cannot_cut(built):
    """OutlineSharedLayer outlines only L consecutive applications of one length, else an error
    naming why (the unrolled forward stays correct; a wrong cut would not)."""
    from ibert_tvm.errors import IBertTVMError
    from ibert_tvm.frontend.importer import import_model
    from ibert_tvm.model.plan import ModelPlan
    from ibert_tvm.passes.canonicalize_views import CanonicalizeViews
    from ibert_tvm.passes.eliminate_float import EliminateFloat
    from ibert_tvm.passes.fold_layer_norm import FoldLayerNorm
    from ibert_tvm.passes.lower_to_integer import LowerToInteger
    from ibert_tvm.passes.outline_shared_layer import OutlineSharedLayer

    ckpt, qm, _, _ = built["AlbertModel"]
    plan = ModelPlan(qm)
    mod = import_model(ckpt).mod
    for p in (FoldLayerNorm(), CanonicalizeViews(), LowerToInteger(plan), CanonicalizeViews(), EliminateFloat()):
        mod = p(mod)
    end = "encoder.layer.0.output.LayerNorm.g"
    with pytest.raises(IBertTVMError, match=r"3 bindings read encoder.layer.0.output.LayerNorm.g, expected one per "
                                            r"application \(4\)"):
        OutlineSharedLayer(end, 4)(mod)
    with pytest.raises(IBertTVMError, match="not consecutive runs of one length"):
        OutlineSharedLayer("encoder.layer.0.attention.self.qkv.weight", 3)(mod)  # not the last binding of each
    out = OutlineSharedLayer(end, 3)(mod)
    assert "shared_layer" in [gv.name_hint for gv, _ in out.functions_items()]
