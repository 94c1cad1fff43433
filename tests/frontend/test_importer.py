"""The float import (``frontend.importer``) and calibration through the graph (``frontend.calibrate``).

(a) The imported module, compiled for llvm and run in the Relax VM, equals the torch model on
    real tokens within rtol 1e-5 + atol 1e-5 (float32; seen <= 1.2e-6 absolute on the tiny
    models, outputs up to ~5; 3.3e-6 on MiniLM).
(c) Ranges from the graph equal ``calibrate.collect_ranges``'s within rel 1e-5 per entry, and
    so do the scales ``build_quantized`` derives from either (seen <= 1.3e-6 on the tiny models;
    6.5e-6 on MiniLM, in small per-channel GELU outputs where TVM's erf and PyTorch's differ by
    ~2e-6 absolute; per-tensor maxima within 3.3e-7).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import random_batch
from frontend_support import ARCHS, imported

REL = 1e-5  # float32 rounding: TVM's kernels vs PyTorch's


def _torch_out(ckpt, enc):
    import torch

    from ibert_tvm.quantization.calibrate import torch_inputs

    with torch.no_grad():
        return ckpt.model(**torch_inputs(enc), return_dict=False)[0].numpy()


def _tokenizer(ckpt):
    from ibert_tvm.support.tokenize import Tokenizer
    from ibert_tvm.model.hf_loader import load_tokenizer_json

    return Tokenizer(load_tokenizer_json(ckpt.path), ckpt.max_positions, ckpt.family, ckpt.pad_token_id)


@pytest.mark.parametrize("arch", ARCHS)
def test_import_signature(tiny_factory, arch):
    """Token inputs int32 [batch, seq] with the export's bounds, then one float32 weight per HF
    parameter, named by its HF name, with the checkpoint's values."""
    im, _ = imported(str(tiny_factory(arch)))
    main = im.mod["main"]
    assert im.inputs == ("input_ids", "attention_mask", "token_type_ids", "position_ids")
    assert int(main.attrs["num_input"]) == 4
    assert [p.name for p in main.params[:4]] == list(im.inputs)
    for p in main.params[:4]:
        assert p.ty.dtype == "int32" and [str(d) for d in p.ty.shape] == ["batch", "seq"]
    assert dict(main.attrs["tir_var_lower_bound"]) == {"batch": 1, "seq": 1}
    assert dict(main.attrs["tir_var_upper_bound"]) == {"batch": 64, "seq": im.ckpt.max_positions}
    torch_params = dict(im.ckpt.model.named_parameters())
    assert [p.name for p in main.params[4:]] == im.param_names
    assert sorted(im.param_names) == sorted(torch_params)
    for name, value, var in zip(im.param_names, im.params, main.params[4:], strict=True):
        assert [int(d) for d in var.ty.shape] == list(value.shape) and var.ty.dtype == "float32"
        np.testing.assert_array_equal(value, torch_params[name].detach().numpy())


@pytest.mark.parametrize("arch", ARCHS)
def test_float_module_equals_torch(tiny_factory, arch):
    """(a) on a padded batch of real sentences, a random padded batch and a 1 x 1 batch."""
    from ibert_tvm.frontend.float_vm import FloatVM

    im, mod = imported(str(tiny_factory(arch)))
    ckpt = im.ckpt
    vm = FloatVM(im, mod)
    rng, kw = np.random.default_rng(1), dict(family=ckpt.family, pad_id=ckpt.pad_token_id,
                                             type_vocab=int(ckpt.config.type_vocab_size))
    encs = [
        _tokenizer(ckpt)(["A man is playing a guitar.", "Hi", "The stock market fell sharply on Monday, then rose."]),
        random_batch(rng, 3, 11, **kw),
        random_batch(rng, 1, 1, **kw),
    ]
    for enc in encs:
        got, want = vm(enc), _torch_out(ckpt, enc)
        assert got.shape == want.shape and got.dtype == np.float32
        if got.ndim == 3:  # [B, S, H]: padding rows are not part of the result
            real = enc["attention_mask"].astype(bool)
            got, want = got[real], want[real]
        np.testing.assert_allclose(got, want, rtol=REL, atol=REL)


def _check_ranges(ckpt, got, obs):
    """(c): same names; max |x| and per-channel max |x| within REL; then the scales too."""
    from ibert_tvm.quantization.calibrate import RangeObserver, build_quantized
    from ibert_tvm.quantization.config import QuantConfig

    assert set(got) == set(obs)
    for name, o in obs.items():
        absmax, channel = got[name]
        np.testing.assert_allclose(absmax, o.absmax, rtol=REL, err_msg=name)
        np.testing.assert_allclose(channel, o.channel_absmax, rtol=REL, err_msg=name)
    graph_obs = {n: RangeObserver(False, absmax=a, channel_absmax=c) for n, (a, c) in got.items()}
    for config in (QuantConfig(), QuantConfig(per_channel_acts=False)):
        ours, theirs = build_quantized(ckpt, graph_obs, config).scales, build_quantized(ckpt, obs, config).scales
        assert set(ours) == set(theirs)
        for k in theirs:
            np.testing.assert_allclose(np.asarray(ours[k]), np.asarray(theirs[k]), rtol=REL, err_msg=k)


@pytest.mark.parametrize("arch", ARCHS)
def test_ranges_agree_with_collect_ranges(tiny_factory, calibration_sentences, arch):
    from ibert_tvm.frontend.calibrate import calibrate_ranges
    from ibert_tvm.quantization.calibrate import collect_ranges

    im, _ = imported(str(tiny_factory(arch)))
    got = calibrate_ranges(im, calibration_sentences)
    _check_ranges(im.ckpt, got, collect_ranges(im.ckpt, calibration_sentences))


def test_ranges_exclude_padding(tiny_factory, calibration_sentences):
    """A pad-token embedding 100x larger than any other row: padding included anywhere would put
    it into ``embeddings.sum`` (and everything after); both paths keep it out, equally."""
    import torch

    from ibert_tvm.frontend.calibrate import calibrate_ranges
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.quantization.calibrate import collect_ranges

    ckpt = load_checkpoint(tiny_factory("BertModel"))
    table = ckpt.base.embeddings.word_embeddings.weight
    with torch.no_grad():
        table[ckpt.pad_token_id] = 100 * table.abs().max()
    pad_row = float(table[ckpt.pad_token_id].detach().abs().max())
    sentences = calibration_sentences[:8] + ["Hi."]  # one batch, padded
    got = calibrate_ranges(ckpt, sentences)
    assert got["embeddings.sum"][0] < pad_row / 10
    _check_ranges(ckpt, got, collect_ranges(ckpt, sentences))


@pytest.mark.slow
def test_minilm_import_run_points_and_ranges(capsys):
    """The real default model: (a), (b) and (c) in one import (~80 s on 2 busy cores)."""
    from ibert_tvm.datasets import default_calibration_sentences
    from ibert_tvm.frontend.calibrate import calibrate_ranges
    from ibert_tvm.frontend.float_vm import FloatVM
    from ibert_tvm.frontend.importer import import_model
    from ibert_tvm.frontend.legacy_names import legacy_names
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.passes.find_quantization_points import find_quantization_points
    from ibert_tvm.passes.fold_layer_norm import FoldLayerNorm
    from ibert_tvm.quantization.calibrate import quantization_points, collect_ranges

    ckpt = load_checkpoint("default")
    im = import_model(ckpt)
    mod = FoldLayerNorm()(im.mod)
    enc = _tokenizer(ckpt)(["A man is playing a guitar.", "Hi", "Scientists discovered a new species of frog."])
    got, want = FloatVM(im, mod)(enc), _torch_out(ckpt, enc)
    real = enc["attention_mask"].astype(bool)
    diff = float(np.abs(got[real] - want[real]).max())
    np.testing.assert_allclose(got[real], want[real], rtol=REL, atol=REL)
    assert set(legacy_names(find_quantization_points(mod))) == {n for n, _, _ in quantization_points(ckpt)}
    sentences = default_calibration_sentences(64)
    _check_ranges(ckpt, calibrate_ranges(im, sentences), collect_ranges(ckpt, sentences))
    with capsys.disabled():
        print(f"\nMiniLM: export {im.seconds['export']:.1f} s, import {im.seconds['import']:.1f} s, "
              f"max |VM - torch| {diff:.2e}")
