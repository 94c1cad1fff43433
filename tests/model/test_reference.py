"""The one FP32 reference module (``model/reference.py``) that the bench engines, ``eval``'s ONNX
peers and QAT share: its torch pooling equals ``op.pooling.float_pool`` (numpy) in every mode,
including rows with no tokens, and a model dir's sentence-transformers pooling reaches every peer
(the bench used to mean-pool a CLS model)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ibert_tvm.errors import IBertTVMError


@pytest.mark.parametrize("mode", ["mean", "cls", "max"])
def test_torch_pool_equals_float_pool(mode):
    import torch

    from ibert_tvm.model.reference import torch_pool
    from ibert_tvm.op.pooling import float_pool

    rng = np.random.default_rng(3)
    hs = rng.normal(size=(5, 7, 4)) * 3 - 1  # all-negative channels exercise max's -inf fill
    mask = (rng.random((5, 7)) < 0.6).astype(np.int64)
    mask[0] = 0  # a row with no tokens: 0, as the integer ops give
    mask[1] = 1
    got = torch_pool(mode, torch.from_numpy(hs), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(got, float_pool(mode, hs, mask), rtol=1e-12, atol=1e-12)
    assert not np.any(got[0])


def test_unknown_pooling_and_token_heads_are_refused():
    import torch

    from ibert_tvm.model.reference import reference_module, torch_pool

    with pytest.raises(IBertTVMError, match="unknown pooling 'weighted'"):
        torch_pool("weighted", torch.zeros(1, 2, 3), torch.ones(1, 2))
    with pytest.raises(IBertTVMError, match="'qa' head"):
        reference_module(torch.nn.Identity(), "qa")


def test_a_cls_model_reaches_every_peer_pooled_on_cls(tiny_factory, tmp_path):
    """A CLS-pooled model dir: ``eval``'s FP32 encoder, the bench's module (what PyTorch, ONNX
    Runtime and TVM FP32 run) and the bench's model description all pool on CLS."""
    import torch

    from ibert_tvm.benchmarks.engines import pooled_module
    from ibert_tvm.benchmarks.models import resolve
    from ibert_tvm.evaluate import torch_encoder
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.quantization.calibrate import torch_inputs
    from ibert_tvm.support.tokenize import INPUTS
    from test_sentence_pooling import write_st_config

    d = tmp_path / "cls-model"
    shutil.copytree(tiny_factory("BertModel"), d)
    write_st_config(d, "cls")
    ckpt = load_checkpoint(d)
    assert ckpt.pooling == "cls"
    assert resolve(str(d), tmp_path / "cache").pooling == "cls"

    from ibert_tvm.model.hf_loader import load_tokenizer_json
    from ibert_tvm.support.tokenize import Tokenizer

    tok = Tokenizer(load_tokenizer_json(ckpt.path), ckpt.max_positions, ckpt.family, ckpt.pad_token_id)
    enc = tok(["a short one", "a somewhat longer sentence with more tokens in it"])
    with torch.no_grad():
        hs = ckpt.model(**torch_inputs(enc)).last_hidden_state.double().numpy()
        bench = pooled_module(ckpt)(*(torch_inputs(enc)[n] for n in INPUTS)).double().numpy()
    np.testing.assert_allclose(bench, hs[:, 0, :], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(torch_encoder(ckpt.model, "embedding", ckpt.pooling)(enc), hs[:, 0, :],
                               rtol=1e-12, atol=1e-12)
    # mean would differ: the test can fail
    assert np.abs(bench - hs.mean(axis=1)).max() > 1e-3


def test_bench_refuses_a_token_head(tiny_factory, tmp_path):
    from ibert_tvm.benchmarks.models import resolve

    with pytest.raises(IBertTVMError, match="token_classifier head is not benchmarked"):
        resolve(str(tiny_factory("BertForTokenClassification")), tmp_path / "cache")
