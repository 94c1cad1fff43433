"""The bundled default model, all-MiniLM-L6-v2, end to end (slow: ~3 minutes of compile).

Run with: python -m pytest -m slow tests/model/test_minilm.py
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    from ibert_tvm.datasets import default_calibration_sentences
    from ibert_tvm.deploy.export import compile_quantized
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.quantization.calibrate import calibrate

    ckpt = load_checkpoint("default")
    qm = calibrate(ckpt, default_calibration_sentences(300))
    out = tmp_path_factory.mktemp("minilm") / "out"
    compile_quantized(qm, out, target="llvm", log=lambda *a: None)
    return ckpt, qm, out


def fp32_embeddings(ckpt, enc):
    import torch

    from ibert_tvm.quantization.calibrate import torch_inputs

    with torch.no_grad():
        hs = ckpt.model(**torch_inputs(enc)).last_hidden_state.numpy().astype(np.float64)
    m = enc["attention_mask"][:, :, None]
    return (hs * m).sum(1) / m.sum(1)


def test_minilm_compiled_equals_golden_and_tracks_fp32(minilm):
    from ibert_tvm.datasets import stsb
    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.plan import ModelPlan

    ckpt, qm, out = minilm
    model = CompiledModel(out)
    plan = ModelPlan(qm)
    sentences = [p.sentence1 for p in stsb("dev")[:200]]
    cos = []
    for i in range(0, len(sentences), 25):
        enc = model.tokenizer(sentences[i : i + 25])
        got = model.run_ids(enc)
        if i < 50:  # bit-exactness on real, padded batches (the golden executor is slow)
            np.testing.assert_array_equal(got, run_golden(plan, **enc))
        ours = got.astype(np.float64) * model.output_scale
        ref = fp32_embeddings(ckpt, enc)
        cos += list((ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1))
    cos = np.array(cos)
    print(f"\nMiniLM integer-only vs FP32 cosine on 200 STS-B dev sentences: mean {cos.mean():.4f} min {cos.min():.4f}")
    assert cos.mean() >= 0.97
    assert cos.min() >= 0.93
