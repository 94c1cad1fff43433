"""Calibration hooks come from the graph (``frontend.points``), not from a hand-written list.

(a) On every architecture and head we compile, the graph's hooks are the hand-listed ones of
    before (``tests/hand_built.hand_listed_points``): the same scale names on the same modules,
    input or output.
(b) So calibration reproduces the artifact of before bit for bit (same scales, same tensors).
(c) MiniLM, the default model, too (slow: a full-size import).
"""

from __future__ import annotations

import numpy as np
import pytest

from hand_built import hand_listed_points

ARCHS = ["BertModel", "RobertaModel", "IBertModel", "BertForSequenceClassification",
         "RobertaForSequenceClassification", "XLMRobertaModel", "CamembertForSequenceClassification",
         "ElectraModel", "RobertaForTokenClassification", "BertForQuestionAnswering"]


def _same_points(ckpt):
    from ibert_tvm.quantization.calibrate import quantization_points

    got = {(n, id(m), k) for n, m, k in quantization_points(ckpt)}
    want = {(n, id(m), k) for n, m, k in hand_listed_points(ckpt)}
    names = {id(m): n for n, m in ckpt.model.named_modules()}
    assert got == want, (sorted((n, names[i], k) for n, i, k in got - want),
                         sorted((n, names[i], k) for n, i, k in want - got))


@pytest.mark.parametrize("arch", ARCHS)
def test_graph_points_are_the_hand_listed_ones(arch, tiny_factory):
    from ibert_tvm.model.hf_loader import load_checkpoint

    _same_points(load_checkpoint(tiny_factory(arch)))


def test_calibration_reproduces_the_hand_listed_artifact(tiny_factory, calibration_sentences, monkeypatch):
    from ibert_tvm.deploy.export import quantized_hash
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.quantization import calibrate as cal

    ckpt = load_checkpoint(tiny_factory("BertForSequenceClassification"))
    new = cal.calibrate(ckpt, calibration_sentences)
    monkeypatch.setattr(cal, "quantization_points", hand_listed_points)
    old = cal.calibrate(ckpt, calibration_sentences)
    assert new.scales.keys() == old.scales.keys()
    for k in new.scales:
        np.testing.assert_array_equal(np.asarray(new.scales[k]), np.asarray(old.scales[k]), err_msg=k)
    assert quantized_hash(new) == quantized_hash(old)


@pytest.mark.slow
def test_minilm_graph_points_are_the_hand_listed_ones():
    from ibert_tvm.model.hf_loader import load_checkpoint

    _same_points(load_checkpoint("default"))
