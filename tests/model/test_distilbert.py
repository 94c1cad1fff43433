"""DistilBERT through import + passes: its modules are BERT's under other names (one name map,
``hf_loader.MODULE_NAMES``), it has no token types, and its classifier is pre_classifier ->
ReLU -> classifier. Tiny random models calibrate, compile (llvm) float-free, take no
token_type_ids, equal golden bit for bit on padded batches, and track FP32."""

from __future__ import annotations

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

# (architecture, config overrides): learned positions for the body, sinusoidal for the classifier
CASES = {"DistilBertModel": {}, "DistilBertForSequenceClassification": {"sinusoidal_pos_embds": True}}
SHAPES = [(1, 1), (3, 33), (8, 128)]


@pytest.fixture(scope="module")
def built(tiny_factory, calibration_sentences, tmp_path_factory):
    return build(CASES, tiny_factory, calibration_sentences, tmp_path_factory)


@pytest.mark.parametrize("arch", list(CASES))
def test_distilbert_compiles_float_free_without_token_types(arch, built):
    from ibert_tvm.quantization.artifact import QuantizedModel

    ckpt, qm, d, manifest = built[arch]
    assert_float_free(manifest)
    assert manifest["inputs"] == ["input_ids", "attention_mask", "position_ids"]
    assert manifest["type_vocab"] == 0 and "embeddings.token_type_embeddings.weight" not in manifest["params"]
    assert qm.dims["type_vocab"] == 0 and "embeddings.token_type" not in qm.tensors
    assert QuantizedModel.load(d / "q").dims == qm.dims  # the saved artifact validates and reloads
    if arch.endswith("Classification"):
        assert qm.dims["head_act"] == "relu" and "head.relu" in qm.scales and "head.pre_tanh" not in qm.scales


@pytest.mark.parametrize("arch", list(CASES))
def test_distilbert_compiled_equals_golden_with_padding(arch, built):
    from ibert_tvm.model.golden import run_golden

    def no_token_types(model, plan, inputs, want, rng):
        # token types are no input: other ones, or none at all, change nothing
        inputs["token_type_ids"] = rng.integers(0, 7, inputs["input_ids"].shape).astype(np.int32)
        np.testing.assert_array_equal(model.run_ids(inputs), want)
        del inputs["token_type_ids"]
        np.testing.assert_array_equal(model.run_ids(inputs), want)
        np.testing.assert_array_equal(run_golden(plan, token_type_ids=None, **inputs), want)

    _, qm, d, _ = built[arch]
    assert_equals_golden(arch, qm, d, SHAPES, seed=3, also=no_token_types)


@pytest.mark.parametrize("arch", list(CASES))
def test_distilbert_tracks_fp32(arch, built, calibration_sentences):
    ckpt, qm, d, _ = built[arch]
    q, plan, enc, res = run_both(ckpt, qm, d, calibration_sentences, token_types=False)
    assert_tracks_fp32(arch, ckpt, q * plan.out_scale, res, enc["attention_mask"])


def test_distilbert_graph_has_bert_names_and_calibration_hooks_its_own_modules(built):
    from ibert_tvm.frontend.importer import import_model
    from ibert_tvm.frontend.points import hook_points

    ckpt, _, _, _ = built["DistilBertForSequenceClassification"]
    im = import_model(ckpt)
    assert im.inputs == ("input_ids", "attention_mask", "position_ids")
    assert "distilbert.encoder.layer.1.attention.self.query.weight" in im.param_names
    assert "distilbert.encoder.layer.0.output.LayerNorm.bias" in im.param_names
    assert not [n for n in im.param_names if "q_lin" in n or "transformer" in n or "token_type" in n]
    hooks = {name: (path, side) for name, path, side in hook_points(ckpt)}
    assert hooks["layer1.q"] == ("distilbert.transformer.layer.1.attention.q_lin", "out")
    assert hooks["layer0.res1"] == ("distilbert.transformer.layer.0.sa_layer_norm", "in")
    assert hooks["layer0.gelu"] == ("distilbert.transformer.layer.0.ffn.lin2", "in")
    assert hooks["head.relu"] == ("classifier", "in")  # the ReLU's output, non-negative
    for path, _ in hooks.values():
        ckpt.model.get_submodule(path)


def test_distilbert_api_runs_texts(built, calibration_sentences):
    import ibert_tvm
    from ibert_tvm.deploy.runtime import CompiledModel

    _, qm, d, _ = built["DistilBertForSequenceClassification"]
    texts = calibration_sentences[:5]
    q = CompiledModel(d / "out").run_text(texts)
    assert ibert_tvm.load(d / "out").predict(texts) == [qm.labels[k] for k in q.argmax(1)]
    _, _, d, _ = built["DistilBertModel"]
    np.testing.assert_array_equal(ibert_tvm.load(d / "out").encode_int(texts)[0], CompiledModel(d / "out").run_text(texts))


def test_distilbert_with_another_activation_is_refused(tiny_factory, tmp_path):
    import json
    import shutil

    from ibert_tvm.errors import IBertTVMError
    from ibert_tvm.model.hf_loader import load_checkpoint

    d = tmp_path / "m"
    shutil.copytree(tiny_factory("DistilBertModel"), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["activation"] = "relu"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(IBertTVMError, match=r"config.json: activation 'relu' is not supported"):
        load_checkpoint(d)


def test_manifest_token_types_must_match_the_inputs(built, tmp_path):
    import json
    import re
    import shutil

    from ibert_tvm.deploy.runtime import read_compiled
    from ibert_tvm.errors import IBertTVMError

    _, _, d, _ = built["DistilBertModel"]
    out = tmp_path / "out"
    shutil.copytree(d / "out", out)
    m = json.loads((out / "manifest.json").read_text())
    for inputs, type_vocab, msg in [
            (["input_ids", "attention_mask", "token_type_ids", "position_ids"], 0, "type_vocab must be an integer >= 1"),
            (["input_ids", "attention_mask", "position_ids"], 2, "type_vocab must be 0 (the model takes no token_type_ids)"),
            (["input_ids", "position_ids"], 0, "inputs must be a list of the model inputs")]:
        (out / "manifest.json").write_text(json.dumps({**m, "inputs": inputs, "type_vocab": type_vocab}))
        with pytest.raises(IBertTVMError, match=re.escape("manifest.json: " + msg)):
            read_compiled(out)


def test_qat_and_sensitivity_refuse_distilbert(built):
    assert_qat_and_sensitivity_refuse(built)


@pytest.mark.parametrize("arch", list(CASES))
def test_distilbert_eval_scores_fp32_integer_and_peers(arch, built, tmp_path, capsys):
    """``eval`` on DistilBERT: its FP32 reference (and the ONNX peers exported from it) must not
    hand the model token_type_ids or position_ids, which its forward does not take."""
    import json

    from ibert_tvm.cli import main
    from ibert_tvm.datasets import stsb

    ckpt, _, d, _ = built[arch]
    tsv = tmp_path / "t.tsv"
    if arch == "DistilBertModel":
        tsv.write_text("sentence1\tsentence2\tscore\n" + "".join(
            f"{p.sentence1}\t{p.sentence2}\t{p.score}\n" for p in stsb("dev")[:12]))
        task, metric = f"tsv:{tsv}", "spearman"
    else:
        tsv.write_text("sentence\tlabel\n" + "".join(
            f"sentence number {i} is {'good' if i % 2 else 'bad'}\t{i % 2}\n" for i in range(12)))
        task, metric = f"tsv:{tsv}", "accuracy"
    out = tmp_path / "r.json"
    code = main(["eval", "--task", task, "--model", str(ckpt.path), "--artifact", str(d / "out"),
                 "--peers", "torch-int8,ort-int8", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    rep = json.loads(out.read_text())
    assert rep["metric"] == metric and rep["examples"] == 12
    res = rep["results"]
    assert set(res) == {"fp32", "integer", "torch-int8", "ort-int8"}
    for name in ("fp32", "integer", "torch-int8"):
        assert res[name]["value"] is not None, res[name]
    # onnxruntime is in the test pins: its peer must have run, not been skipped
    assert res["ort-int8"]["value"] is not None, res["ort-int8"]


def test_bench_resolves_distilbert_config_names(tiny_factory, tmp_path):
    """DistilBertConfig names its fields dim / n_layers / n_heads / hidden_dim: the bench reads them
    (it raised KeyError: 'num_hidden_layers'), and a missing one is a named error."""
    import json
    import shutil

    from ibert_tvm.benchmarks.models import resolve
    from ibert_tvm.errors import IBertTVMError

    src = tiny_factory("DistilBertModel")
    cfg = json.loads((src / "config.json").read_text())
    m = resolve(str(src), tmp_path)
    assert (m.layers, m.hidden, m.heads, m.intermediate, m.type_vocab) == (
        cfg["n_layers"], cfg["dim"], cfg["n_heads"], cfg["hidden_dim"], 0)
    d = tmp_path / "m"
    shutil.copytree(src, d)
    del cfg["n_heads"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(IBertTVMError, match="config.json: num_attention_heads is missing"):
        resolve(str(d), tmp_path)
