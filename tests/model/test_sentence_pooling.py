"""The pooling a sentence-transformers model dir asks for (``modules.json`` + ``1_Pooling``):
calibrate records it, compile builds it, and the compiled model equals golden bit for bit and
tracks the FP32 model pooled the same way. What we cannot compile is refused naming the file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ibert_tvm.errors import IBertTVMError

_FLAGS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens"}


def write_st_config(path, pooling: str | dict, normalize: bool = False, extra: list | None = None):
    """Write sentence-transformers' modules.json and 1_Pooling/config.json into model dir ``path``."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    modules += extra or []
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir(exist_ok=True)
    cfg = pooling if isinstance(pooling, dict) else {"word_embedding_dimension": 32,
                                                     **{f: k == pooling for k, f in _FLAGS.items()}}
    (path / "1_Pooling" / "config.json").write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def pooled_dirs(tiny_factory, tmp_path_factory):
    """mode -> a copy of the tiny BertModel dir with that sentence-transformers pooling."""
    out = {}
    for mode, normalize in (("cls", True), ("max", False)):
        d = tmp_path_factory.mktemp(f"st-{mode}") / "model"
        shutil.copytree(tiny_factory("BertModel"), d)
        write_st_config(d, mode, normalize)
        out[mode] = (d, normalize)
    return out


@pytest.mark.parametrize("mode", ["cls", "max"])
def test_pooled_model_compiles_bit_exact_and_tracks_fp32(mode, pooled_dirs, calibration_sentences, tmp_path):
    import torch

    from ibert_tvm.deploy.export import compile_quantized
    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.model.plan import ModelPlan
    from ibert_tvm.op.pooling import float_pool
    from ibert_tvm.quantization.calibrate import calibrate, torch_inputs

    path, normalize = pooled_dirs[mode]
    ckpt = load_checkpoint(path)
    assert (ckpt.pooling, ckpt.normalize) == (mode, normalize)
    qm = calibrate(ckpt, calibration_sentences)
    assert (qm.dims["pooling"], qm.dims["normalize"]) == (mode, normalize)
    qm.save(tmp_path / "q")
    from ibert_tvm.quantization.artifact import QuantizedModel

    qm = QuantizedModel.load(tmp_path / "q")  # the fields survive the artifact's validation
    manifest = compile_quantized(qm, tmp_path / "out", target="llvm", log=lambda *a: None)
    assert (manifest["pooling"], manifest["normalize"]) == (mode, normalize)
    assert manifest["verify"]["module"]["float_ops"] == 0 and manifest["verify"]["code"]["float_ops"] == 0
    model, plan = CompiledModel(tmp_path / "out"), ModelPlan(qm)
    enc = model.tokenizer(calibration_sentences[:16])
    assert enc["attention_mask"].min() == 0  # padded
    got = model.run_ids(enc)
    np.testing.assert_array_equal(got, run_golden(plan, **enc))
    with torch.no_grad():
        hs = ckpt.model(**torch_inputs(enc)).last_hidden_state.double().numpy()
    ref = float_pool(mode, hs, enc["attention_mask"])
    ours = got * plan.out_scale
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    # and it is this pooling, not the mean: the mean of the same tokens is further away
    mean = float_pool("mean", hs, enc["attention_mask"])
    cos_mean = (ours * mean).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(mean, axis=1)
    assert cos.min() > 0.95, cos.min()
    assert cos.mean() > cos_mean.mean() + 0.02, (cos.mean(), cos_mean.mean())
    # the Python API normalizes when the model dir has a Normalize module, as sentence-transformers does
    import ibert_tvm

    m = ibert_tvm.load(tmp_path / "out")
    assert (m.pooling, m.normalize) == (mode, normalize)
    e = m.encode(calibration_sentences[:16])
    want = ours / np.linalg.norm(ours, axis=1, keepdims=True) if normalize else ours
    np.testing.assert_allclose(e, want.astype(np.float32), rtol=1e-6, atol=1e-7)


def _refusal(tmp_path, tiny_factory, **kw):
    from ibert_tvm.model.hf_loader import load_checkpoint

    d = tmp_path / "model"
    shutil.copytree(tiny_factory("BertModel"), d)
    write_st_config(d, **kw)
    with pytest.raises(IBertTVMError) as e:
        load_checkpoint(d)
    return str(e.value)


def test_two_pooling_modes_are_refused_naming_the_file(tmp_path, tiny_factory):
    msg = _refusal(tmp_path, tiny_factory, pooling={"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True})
    assert "1_Pooling/config.json" in msg and "pooling_mode_mean_tokens, pooling_mode_cls_token" in msg


def test_unsupported_pooling_mode_is_refused(tmp_path, tiny_factory):
    msg = _refusal(tmp_path, tiny_factory, pooling={"pooling_mode": "weightedmean"})
    assert "1_Pooling/config.json: pooling_mode" in msg and "weightedmean" in msg


def test_a_dense_module_is_refused(tmp_path, tiny_factory):
    dense = {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
    msg = _refusal(tmp_path, tiny_factory, pooling="mean", extra=[dense])
    assert "modules.json" in msg and "3_Dense" in msg and "Dense is not supported" in msg


def test_no_modules_json_is_mean_pooling(tiny_factory):
    from ibert_tvm.model.hf_loader import load_checkpoint

    ckpt = load_checkpoint(tiny_factory("BertModel"))
    assert (ckpt.pooling, ckpt.normalize) == ("mean", False)


def test_the_default_model_is_mean_pooled_and_normalized():
    """all-MiniLM-L6-v2 ships modules.json with mean pooling and a Normalize module."""
    from ibert_tvm.model.hf_loader import default_model_dir, sentence_pooling

    assert sentence_pooling(default_model_dir()) == ("mean", True)
