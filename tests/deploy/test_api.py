"""``ibert_tvm.load(out).encode / encode_int / predict``: the sentence-transformers-style API.

Every expectation is computed through another path, ``CompiledModel.run_ids`` on one text at a
time (its own tokenization and padding), and compared exactly: the API's floats are
``int32 * scale`` (or ``int32 / ||int32||``) rounded once to float32.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ibert_tvm
from ibert_tvm.deploy.runtime import CompiledModel
from ibert_tvm.errors import IBertTVMError
from test_batching import mixed_texts

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bert_dir(compiled_factory):
    return compiled_factory("BertModel")


@pytest.fixture(scope="module")
def model(bert_dir):
    return ibert_tvm.load(bert_dir)


@pytest.fixture(scope="module")
def reference(bert_dir):
    return CompiledModel(bert_dir)


def alone(ref: CompiledModel, texts, pairs=None, truncate=False) -> np.ndarray:
    """int32 rows, one text (pair) per call."""
    pairs = pairs or [None] * len(texts)
    return np.concatenate([ref.run_ids(ref.tokenizer([t], None if p is None else [p], truncate=truncate))
                           for t, p in zip(texts, pairs)])


def as_float(q: np.ndarray, scale: float, normalize: bool) -> np.ndarray:
    x = q.astype(np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True) if normalize else x * scale
    return x.astype(np.float32)


@pytest.mark.parametrize("batch_size,normalize", [(1, False), (5, True), (32, False)])
def test_encode_equals_one_text_at_a_time(model, reference, batch_size, normalize):
    texts = mixed_texts(23, seed=batch_size)
    q = alone(reference, texts)
    e = model.encode(texts, batch_size=batch_size, normalize_embeddings=normalize)
    assert e.dtype == np.float32 and e.shape == (23, 32)
    np.testing.assert_array_equal(e, as_float(q, reference.output_scale, normalize))
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-6)
    got_q, scale = model.encode_int(texts, batch_size=batch_size)
    assert got_q.dtype == np.int32 and scale == reference.output_scale
    np.testing.assert_array_equal(got_q, q)


def test_encode_shapes_like_sentence_transformers(model, reference):
    one = model.encode("A man is playing a guitar.")
    assert one.shape == (32,) and one.dtype == np.float32
    np.testing.assert_array_equal(one, as_float(alone(reference, ["A man is playing a guitar."]),
                                                reference.output_scale, False)[0])
    rows = model.encode(["a", "b c"], convert_to_numpy=False)
    assert isinstance(rows, list) and len(rows) == 2 and rows[1].shape == (32,)
    np.testing.assert_array_equal(model.encode(["a", "b c"], show_progress_bar=True), np.stack(rows))


def test_sentence_pairs_as_tuples_or_pairs_argument(model, reference):
    a, b = mixed_texts(6, seed=4, max_words=20), mixed_texts(6, seed=5, max_words=20)
    q = alone(reference, a, b)
    np.testing.assert_array_equal(model.encode_int(a, b)[0], q)
    np.testing.assert_array_equal(model.encode_int(list(zip(a, b)))[0], q)
    assert not np.array_equal(q, alone(reference, a))  # the second text really counts


def test_truncation_is_explicit(model, reference):
    long = " ".join(["word"] * 300)
    with pytest.raises(IBertTVMError, match="text 1 has 302 tokens"):
        model.encode(["fine", long])
    e = model.encode(["fine", long], truncate=True)
    np.testing.assert_array_equal(e, as_float(alone(reference, ["fine", long], truncate=True),
                                              reference.output_scale, False))


@pytest.mark.parametrize("bad", [0, -3, 1.5, "8"])
def test_bad_batch_size(model, bad):
    with pytest.raises(IBertTVMError, match="batch_size must be a positive integer"):
        model.encode(["a"], batch_size=bad)


@pytest.mark.parametrize("texts,match", [([], "no text"), ([("a", "b", "c")], "exactly two"),
                                         (["a", 3], "text 1 is a int")])
def test_bad_texts(model, texts, match):
    with pytest.raises(IBertTVMError, match=match):
        model.encode(texts)


def test_predict_labels_from_the_manifest(compiled_factory):
    out = compiled_factory("BertForSequenceClassification")
    clf, ref = ibert_tvm.load(out), CompiledModel(out)
    a, b = mixed_texts(9, seed=6, max_words=25), mixed_texts(9, seed=7, max_words=25)
    q = alone(ref, a, b)
    names = json.loads((out / "manifest.json").read_text())["labels"]
    assert names == ["class0", "class1"]
    assert clf.predict(list(zip(a, b)), batch_size=4) == [names[k] for k in np.argmax(q, axis=1)]
    assert clf.predict(a[0], b[0]) == names[int(np.argmax(q[0]))]
    np.testing.assert_array_equal(clf.encode_int(a, b)[0], q)
    with pytest.raises(IBertTVMError, match=r"encode\(\) does not serve this model's head 'classifier'; use predict"):
        clf.encode(a)


def test_predict_refuses_an_embedding_model(model):
    with pytest.raises(IBertTVMError, match=r"predict\(\) does not serve this model's head 'embedding'; use encode"):
        model.predict(["a"])


def test_load_refuses_what_is_not_a_compiled_model(tmp_path):
    with pytest.raises(IBertTVMError, match="manifest.json is missing"):
        ibert_tvm.load(tmp_path)


_LIGHT = r"""
import json, sys
import ibert_tvm
light = sorted(m for m in ("tvm", "torch", "numpy", "tokenizers", "ibert_tvm.deploy") if m in sys.modules)
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) // 1024
before = rss()
m = ibert_tvm.load(sys.argv[1])
q, _ = m.encode_int(["A man is playing a guitar.", "Two dogs run."])
heavy = sorted(k for k in sys.modules if k.split(".")[0] in ("torch", "transformers") or k.startswith("tvm.relax"))
print(json.dumps({"at_import": light, "heavy": heavy, "tvm_package": "tvm" in sys.modules,
                  "q": q.tolist(), "rss_before": before, "rss_after": rss()}))
import torch  # still importable afterwards
"""


def test_load_imports_neither_torch_nor_the_compiler(bert_dir, reference):
    """``import ibert_tvm`` imports nothing heavy; ``load`` brings in the TVM runtime library only
    (through tvm_ffi: not even the ``tvm`` package, see test_light_runtime), without PyTorch (which
    tvm_ffi imports whenever it is installed). A fresh process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TVM_USE_RUNTIME_LIB", None)
    r = subprocess.run([sys.executable, "-c", _LIGHT, str(bert_dir)], capture_output=True, text=True, env=env,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    print("RSS MB: import ibert_tvm", got["rss_before"], "-> after load + encode", got["rss_after"])
    assert got["at_import"] == []
    assert got["heavy"] == [] and got["tvm_package"] is False
    np.testing.assert_array_equal(np.array(got["q"], np.int32),
                                  alone(reference, ["A man is playing a guitar.", "Two dogs run."]))
