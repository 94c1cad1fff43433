"""The checks every architecture x head test runs on its tiny random models, written once.

- :func:`build`: calibrate and compile (llvm) each case once per test module (:func:`build_once`:
  one case, once per session).
- :func:`assert_float_free`: ``verify``'s Relax and machine-code levels count no float op.
- :func:`assert_equals_golden`: the compiled model == golden, bit for bit, on padded random batches.
- :func:`run_both`: the compiled model and HF's FP32 forward on the same padded real sentences.
- :func:`assert_tracks_fp32`: the stated bounds against FP32 (logits or mean-pooled embeddings).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from conftest import random_batch


def build(cases, tiny_factory, calibration_sentences, tmp_path_factory, *, prepare: Callable | None = None,
          into=None) -> dict:
    """``{arch: config overrides}`` (or a list of archs) -> ``{arch: (ckpt, qm, dir, manifest)}``.

    ``dir`` holds the saved ``q/`` and the compiled ``out/``. ``prepare(arch, model_dir)`` may
    return another model dir to load (MPNet's test strengthens the saved bias)."""
    from ibert_tvm.deploy.export import compile_quantized
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.quantization.calibrate import calibrate

    cases = cases if isinstance(cases, dict) else {arch: {} for arch in cases}
    out = {}
    for arch, kw in cases.items():
        model_dir = tiny_factory(arch, **kw)
        if prepare is not None:
            model_dir = prepare(arch, model_dir)
        ckpt = load_checkpoint(model_dir)
        qm = calibrate(ckpt, calibration_sentences)
        d = into if into is not None else tmp_path_factory.mktemp(arch)
        qm.save(d / "q")
        manifest = compile_quantized(qm, d / "out", target="llvm", log=lambda *a: None)
        out[arch] = (ckpt, qm, d, manifest)
    return out


_CELLS: dict = {}


def build_once(arch: str, overrides: dict, tiny_factory, calibration_sentences, tmp_path_factory) -> tuple:
    """:func:`build` of one case, once per test run (``conftest.shared_build``: across the xdist
    workers too): test modules that need the same tiny model (the head matrix and the aarch64 board
    test) share one calibration and x86 build; a worker that did not build it loads its ``q/``."""
    import json

    from conftest import shared_build

    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.quantization.artifact import QuantizedModel

    key = (arch, tuple(sorted(overrides.items())))
    if key not in _CELLS:
        made = {}

        def make(d):
            ckpt, qm, _, manifest = build({arch: overrides}, tiny_factory, calibration_sentences, tmp_path_factory,
                                          into=d)[arch]
            made.update(ckpt=ckpt, qm=qm, manifest=manifest)

        d, _ = shared_build(tmp_path_factory, f"cell-{arch}-{key[1]!r}", make)
        if made:
            _CELLS[key] = (made["ckpt"], made["qm"], d, made["manifest"])
        else:
            _CELLS[key] = (load_checkpoint(tiny_factory(arch, **overrides)), QuantizedModel.load(d / "q"), d,
                           json.loads((d / "out" / "manifest.json").read_text()))
    return _CELLS[key]


def assert_float_free(manifest: dict) -> None:
    assert manifest["verify"]["module"]["float_ops"] == 0 and manifest["verify"]["code"]["float_ops"] == 0


def assert_equals_golden(arch: str, qm, d, shapes, *, seed: int, family: str = "bert",
                         also: Callable | None = None) -> None:
    """For each ``(batch, seq)``: a random right-padded batch, compiled == golden (int32), bit for
    bit. ``also(model, plan, inputs, want, rng)`` adds the architecture's own checks per batch."""
    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.plan import ModelPlan

    plan, model = ModelPlan(qm), CompiledModel(d / "out")
    rng = np.random.default_rng(seed)
    for batch, seq in shapes:
        inputs = random_batch(rng, batch, seq, family=family, pad_id=qm.dims["pad_id"],
                              type_vocab=qm.dims["type_vocab"])  # RoBERTa's one token type: all 0
        want = run_golden(plan, **inputs)
        assert want.dtype == np.int32
        np.testing.assert_array_equal(model.run_ids(inputs), want, err_msg=f"{arch} batch={batch} seq={seq}")
        if also is not None:
            also(model, plan, inputs, want, rng)


def run_both(ckpt, qm, d, sentences, *, token_types: bool = True):
    """The compiled model's int32 output on ``sentences[:16]`` (padded: asserted) and HF's FP32
    output on the same tokens -> ``(q, plan, enc, res)``. ``token_types=False``: the FP32 forward
    is not given ``token_type_ids`` (architectures without them)."""
    import torch

    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.model.plan import ModelPlan
    from ibert_tvm.quantization.calibrate import torch_inputs

    model, plan = CompiledModel(d / "out"), ModelPlan(qm)
    enc = model.tokenizer(sentences[:16])
    assert enc["attention_mask"].min() == 0
    q = model.run_ids(enc)
    fp32_inputs = enc if token_types else {k: v for k, v in enc.items() if k != "token_type_ids"}
    with torch.no_grad():
        res = ckpt.model(**torch_inputs(fp32_inputs))
    return q, plan, enc, res


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def assert_tracks_fp32(arch: str, ckpt, ours: np.ndarray, res, mask: np.ndarray, *,
                       logit_bound: float = 0.2, cos_bound: float = 0.95) -> None:
    """A classifier: max |logit error| < ``logit_bound`` x max |logit| and argmax agreement >= 90%
    (a random tiny model's logits are nearly input-independent: see test_end_to_end). A token head
    (NER logits, QA start/end logits ``[B, S, 2]``): the same two bounds over the real tokens
    (``mask``), the argmax per token (NER: the label; QA: start vs end). A body: the min cosine of
    the mean-pooled embeddings > ``cos_bound``."""
    from ibert_tvm.op.pooling import float_pool

    if ckpt.head in ("token_classifier", "qa"):
        ref = res.logits.numpy() if ckpt.head == "token_classifier" else \
            np.stack([res.start_logits.numpy(), res.end_logits.numpy()], -1)
        real = np.asarray(mask) != 0
        assert ours.shape == ref.shape and not real.all(), (ours.shape, ref.shape)  # padded rows included
        err = np.abs(ours - ref)[real].max() / np.abs(ref[real]).max()
        agree = (ours.argmax(-1) == ref.argmax(-1))[real].mean()
        print(f"{arch}: max |err| / max |logit| over real tokens = {err:.4f}, per-token argmax agreement {agree:.3f}")
        assert err < logit_bound and agree >= 0.9, (err, agree)
    elif ckpt.head == "classifier":
        ref = res.logits.numpy()
        err, agree = np.abs(ours - ref).max() / np.abs(ref).max(), (ours.argmax(1) == ref.argmax(1)).mean()
        print(f"{arch}: max |err| / max |logit| = {err:.4f}, argmax agreement {agree:.3f}")
        assert err < logit_bound and agree >= 0.9, (err, agree)
    else:
        ref = float_pool("mean", res.last_hidden_state.double().numpy(), mask)
        cos = cosines(ours, ref)
        print(f"{arch}: min cosine to FP32 {cos.min():.4f}")
        assert cos.min() > cos_bound, cos.min()


def assert_qat_and_sensitivity_refuse(built: dict) -> None:
    """QAT and the sensitivity tools walk BERT's module attributes: an architecture compiled from
    calibration alone is refused by both, naming ``config.json`` and the architecture."""
    import pytest

    from ibert_tvm.errors import IBertTVMError
    from ibert_tvm.quantization.qat import QATModel

    for arch, (ckpt, qm, _, _) in built.items():
        with pytest.raises(IBertTVMError, match=f"{arch} is compiled from calibration"):
            QATModel(ckpt, qm)
        with pytest.raises(IBertTVMError, match=f"config.json: architectures {arch}: this tool walks BERT's"):
            _ = ckpt.base
