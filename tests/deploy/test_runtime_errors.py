"""``CompiledModel.run_ids`` / ``run_text`` refuse bad inputs with a clear error (never a wrong answer)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import random_batch
from ibert_tvm.deploy.runtime import CompiledModel
from ibert_tvm.errors import IBertTVMError


@pytest.fixture(scope="module")
def bert(compiled_factory):
    return CompiledModel(compiled_factory("BertModel"))


def batch(model, batch=2, seq=8):
    m = model.manifest
    return random_batch(np.random.default_rng(0), batch, seq, vocab=m["vocab"], family=m["family"],
                        pad_id=m["pad_id"], type_vocab=m["type_vocab"])


def test_valid_batch_runs(bert):
    out = bert.run_ids(batch(bert))
    assert out.shape == (2, 32) and out.dtype == np.int32


@pytest.mark.parametrize("bad", [30522, 10**6, -1])
def test_token_id_outside_vocabulary(bert, bad):
    x = batch(bert)
    x["input_ids"][1, 3] = bad
    with pytest.raises(IBertTVMError, match=rf"token id {bad} is outside the vocabulary \[0, 30522\)"):
        bert.run_ids(x)


def test_token_id_that_wraps_in_int32(bert):
    """2**32 + 5 would become 5 after a plain cast to int32: a silent wrong answer."""
    x = batch(bert)
    ids = x["input_ids"].astype(np.int64)
    ids[0, 2] = 2**32 + 5
    x["input_ids"] = ids
    with pytest.raises(IBertTVMError, match="outside the vocabulary"):
        bert.run_ids(x)


def test_position_ids_out_of_range(bert):
    x = batch(bert)
    x["position_ids"] = x["position_ids"] + 200
    with pytest.raises(IBertTVMError, match="position_ids"):
        bert.run_ids(x)


def test_token_type_out_of_range(bert):
    x = batch(bert)
    x["token_type_ids"][0, 0] = 2
    with pytest.raises(IBertTVMError, match="token_type_ids"):
        bert.run_ids(x)


def test_mask_not_binary(bert):
    x = batch(bert)
    x["attention_mask"][0, 0] = 2
    with pytest.raises(IBertTVMError, match="attention_mask"):
        bert.run_ids(x)


def test_sequence_longer_than_maximum(bert):
    x = batch(bert, 1, 129)
    with pytest.raises(IBertTVMError, match="sequence length 129 exceeds the model's maximum 128"):
        bert.run_ids(x)


def test_missing_input(bert):
    x = batch(bert)
    del x["token_type_ids"]
    with pytest.raises(IBertTVMError, match="missing input 'token_type_ids'"):
        bert.run_ids(x)


@pytest.mark.parametrize("how", ["float", "1-D", "shape"])
def test_wrong_dtype_or_shape(bert, how):
    x = batch(bert)
    if how == "float":
        x["input_ids"] = x["input_ids"].astype(np.float32)
    elif how == "1-D":
        x["attention_mask"] = x["attention_mask"][0]
    else:
        x["token_type_ids"] = x["token_type_ids"][:, :4]
    with pytest.raises(IBertTVMError, match="input"):
        bert.run_ids(x)


def test_empty_batch(bert):
    x = {k: v[:0] for k, v in batch(bert).items()}
    with pytest.raises(IBertTVMError, match="empty batch"):
        bert.run_ids(x)


def test_text_too_long(bert):
    with pytest.raises(IBertTVMError, match="text 1 has 302 tokens; the model's maximum sequence length is 128"):
        bert.run_text(["fine", " ".join(["word"] * 300)])


def test_no_text(bert):
    with pytest.raises(IBertTVMError, match="no text"):
        bert.run_text([])


def test_pairs_length_mismatch(bert):
    with pytest.raises(IBertTVMError, match="differ in length"):
        bert.run_text(["a", "b"], ["c"])
