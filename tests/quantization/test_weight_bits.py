"""Q-BERT's weight side of calibration: 2/3/4/8-bit weights, group-wise scales, per-layer bits,
and the packed artifact (issue 7). The compiled kernels are tested in tests/model."""

import json

import numpy as np
import pytest

from ibert_tvm.errors import IBertTVMError
from ibert_tvm.op.packed_weights import row_bytes
from ibert_tvm.quantization.artifact import QuantizedModel
from ibert_tvm.quantization.calibrate import calibrate, quantize_weight
from ibert_tvm.quantization.config import QuantConfig


def test_quantize_weight_groups_by_hand():
    w = np.array([[0.5, -1.0], [0.25, 0.1], [3.0, 0.0], [-0.3, 0.6]])
    # per tensor at 4 bits: one scale 3/7
    q, s = quantize_weight(w, 4, 1)
    assert np.allclose(s, 3 / 7) and q.tolist() == [[1, -2], [1, 0], [7, 0], [-1, 1]]
    # 2 groups of 2 rows at 2 bits: scales 1.0 and 3.0, values in {-1, 0, 1}
    q, s = quantize_weight(w, 2, 2)
    assert s.tolist() == [1.0, 1.0, 3.0, 3.0] and q.tolist() == [[0, -1], [0, 0], [1, 0], [0, 0]]
    # per row at 3 bits: scale = row absmax / 3
    q, s = quantize_weight(w, 3, 0)
    assert np.allclose(s, [1 / 3, 0.25 / 3, 1.0, 0.2]) and q.tolist() == [[2, -3], [3, 1], [3, 0], [-2, 3]]
    with pytest.raises(IBertTVMError, match="weight_groups=3 does not divide the 4 output rows"):
        quantize_weight(w, 4, 3)


@pytest.mark.parametrize("bad", [dict(weight_bits=5), dict(weight_bits=1), dict(weight_groups=-1),
                                 dict(layer_weight_bits=(4, 6)), dict(weight_bits=True)])
def test_config_rejects(bad):
    with pytest.raises(ValueError):
        QuantConfig(**bad)


def test_config_names_and_roundtrip():
    c = QuantConfig()
    assert c.with_weights(4, 128).name == "ibert-w8a8+w4g128-gelu4"  # the default GELU's tag after the weights'
    assert c.with_weights(3, 1).name == "ibert-w8a8+w3pt-gelu4"
    assert c.with_weights(layer_bits=(4, 2)).name == "ibert-w8a8+wmix42-gelu4"
    assert c.with_gelu("ibert").with_weights(4, 128).name == "ibert-w8a8+w4g128"
    assert c.with_weights(8, 0) is c
    m = c.with_weights(layer_bits=(4, 2))
    assert QuantConfig.from_dict(json.loads(json.dumps(m.to_dict()))) == m


@pytest.fixture(scope="module")
def ckpt(tiny_factory):
    from ibert_tvm.model.hf_loader import load_checkpoint

    return load_checkpoint(tiny_factory("BertForSequenceClassification"))


@pytest.mark.parametrize("cfg", [QuantConfig().with_weights(4, 1), QuantConfig().with_weights(3, 4),
                                 QuantConfig().with_weights(layer_bits=(2, 8))])
def test_low_bit_artifact(ckpt, calibration_sentences, tmp_path, cfg):
    q8 = calibrate(ckpt, calibration_sentences)
    qm = calibrate(ckpt, calibration_sentences, cfg)
    layers = ckpt.config.num_hidden_layers
    for i in range(layers):
        bits = cfg.bits_for_layer(i, layers)
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                     "intermediate.dense", "output.dense"):
            p = f"encoder.layer.{i}.{name}"
            w = qm.tensor(p + ".weight")
            assert qm.weight_bits(p) == bits
            assert np.abs(w.astype(int)).max() <= (1 << (bits - 1)) - 1
            s = np.asarray(qm.scale(p + ".weight"))
            if cfg.weight_groups:  # rows of a group share a scale
                assert len(set(s.reshape(cfg.weight_groups, -1)[0].tolist())) == 1
    for p in ("head.dense", "head.out"):
        assert qm.weight_bits(p) == 8 and (qm.tensor(p + ".weight") == q8.tensor(p + ".weight")).all()
    assert (qm.tensor("embeddings.word") == q8.tensor("embeddings.word")).all()
    # the artifact stores packed bytes, and loads back the same integers
    qm.save(tmp_path / "q")
    back = QuantizedModel.load(tmp_path / "q")
    assert back.weight_bits_map == qm.weight_bits_map and back.config == cfg
    assert all((back.tensors[k] == v).all() for k, v in qm.tensors.items())
    from safetensors.numpy import load_file

    stored = load_file(str(tmp_path / "q" / "quantized.safetensors"))
    expect_saved = 0
    for p, bits in qm.weight_bits_map.items():
        n, k = qm.tensor(p + ".weight").shape
        assert p + ".weight" not in stored and stored[p + ".weight.packed"].shape == (n, row_bytes(k, bits))
        expect_saved += n * k - n * row_bytes(k, bits)
    assert expect_saved > 0
    b8, b = q8.weight_bytes(), qm.weight_bytes()
    assert b8["total"] - b["total"] == expect_saved
    assert b["embeddings"] == b8["embeddings"]


def test_check_before_calibrating(ckpt, calibration_sentences):
    with pytest.raises(IBertTVMError, match="layer_weight_bits has 3 entries, the model has 2"):
        calibrate(ckpt, calibration_sentences, QuantConfig(layer_weight_bits=(4, 4, 4)))
    with pytest.raises(IBertTVMError, match="weight_groups=5 does not divide"):
        calibrate(ckpt, calibration_sentences, QuantConfig(weight_groups=5))


def test_corrupt_packed_artifact(ckpt, calibration_sentences, tmp_path):
    qm = calibrate(ckpt, calibration_sentences, QuantConfig().with_weights(4))
    qm.save(tmp_path / "q")
    meta = json.loads((tmp_path / "q" / "quantization.json").read_text())
    meta["pack_format"] = "other/9"
    (tmp_path / "q" / "quantization.json").write_text(json.dumps(meta))
    with pytest.raises(IBertTVMError, match="packed weights in format 'other/9'"):
        QuantizedModel.load(tmp_path / "q")


def test_cli_weight_flags(tiny_factory, tmp_path, capsys):
    from ibert_tvm.cli import main

    model = tiny_factory("BertForSequenceClassification")
    text = tmp_path / "t.txt"
    text.write_text("a man plays a guitar.\nthe cat sleeps on the mat.\nrain is expected tomorrow.\n")
    out = tmp_path / "q"
    assert main(["calibrate", str(model), "-o", str(out), "--text", str(text), "--weight-bits", "4",
                 "--weight-groups", "8"]) == 0
    stdout = capsys.readouterr().out
    assert "at 4 bits" in stdout and "low-bit weights: scheme ibert-w8a8-pertensor" in stdout
    qm = QuantizedModel.load(out)
    # low-bit weights default to per-tensor activation scales (nothing folded into the 4-bit columns)
    assert qm.config.name == "ibert-w8a8-pertensor+w4g8-gelu4" and set(qm.weight_bits_map.values()) == {4}
    assert not qm.config.per_channel_acts and np.ndim(qm.scale("layer0.gelu")) == 0
    for argv, needle in (
        (["--weight-groups", "5"], "weight_groups=5 does not divide"),
        (["--weight-bits", "4", "--bits-plan", str(text)], "contradict"),
        (["--weight-bits", "4", "--scheme", "ibert-w8a8"], "folds the per-channel"),
    ):
        rc = main(["calibrate", str(model), "-o", str(tmp_path / "bad"), "--text", str(text), *argv])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and "Traceback" not in err
        assert not (tmp_path / "bad").exists()
    # a bits plan brings the weight groups its bits were chosen for; a contradicting flag is refused
    from ibert_tvm.quantization import sensitivity as S

    plan = S.BitPlan((4, 8), 10, 12, 1.0, (1.0, 2.0), ({4: 1.0, 8: 0.0},) * 2, ({4: 4, 8: 8},) * 2, (4, 8), 8)
    plan_path = S.write_plan(tmp_path / "plan.json", S.plan_dict(plan, model="m", model_hash=None, task="sentiment"))
    assert json.loads(plan_path.read_text())["weight_groups"] == 8
    assert main(["calibrate", str(model), "-o", str(tmp_path / "qp"), "--text", str(text),
                 "--bits-plan", str(plan_path)]) == 0
    assert "weight groups from the bits plan: 8" in capsys.readouterr().out
    qp = QuantizedModel.load(tmp_path / "qp")
    assert qp.config.weight_groups == 8 and qp.config.layer_weight_bits == (4, 8)
    rc = main(["calibrate", str(model), "-o", str(tmp_path / "bad"), "--text", str(text),
               "--bits-plan", str(plan_path), "--weight-groups", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "contradicts the bits plan" in err and "weight_groups is 8" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()
    # an embedding model: low-bit PTQ weights are refused with the reason, unless asked for
    emb = tiny_factory("BertModel")
    rc = main(["calibrate", str(emb), "-o", str(tmp_path / "bad"), "--text", str(text), "--weight-bits", "4"])
    err = capsys.readouterr().err
    assert rc == 2 and "embedding model" in err and "--accept-lossy-embedding" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()
    assert main(["calibrate", str(emb), "-o", str(tmp_path / "q4e"), "--text", str(text), "--weight-bits", "4",
                 "--weight-groups", "8", "--accept-lossy-embedding"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):  # argparse: bits outside {2, 3, 4, 8}
        main(["calibrate", str(model), "-o", str(tmp_path / "bad"), "--weight-bits", "5"])
    assert "invalid choice" in capsys.readouterr().err
