"""Calibration through the imported graph: activation ranges at the points found on it.

:func:`calibrate_ranges` imports the float model (:mod:`.importer`), folds its LayerNorms,
finds the quantization points on the graph, makes ``main`` return each calibrated point's
per-channel max |x| over real tokens (:class:`ExposeQuantizationPoints`), compiles that for
``llvm`` with TVM's default float pipeline and runs it in the Relax VM over the sentences.
Nothing here is written per architecture; only :mod:`.legacy_names` maps the points to today's
names, so the ranges can be compared with (and fed to) ``quantization.calibrate``.

The ranges equal ``calibrate.collect_ranges``'s up to float32 rounding: TVM's kernels and
PyTorch's (eager attention here, PyTorch's default attention there) round differently.
``percentile`` calibration needs value samples and is not offered here.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np

from ..support.tokenize import Tokenizer
from ..errors import IBertTVMError
from ..model.hf_loader import HFCheckpoint, load_tokenizer_json
from ..passes.expose_quantization_points import ExposeQuantizationPoints
from ..passes.find_quantization_points import find_quantization_points
from ..passes.fold_layer_norm import FoldLayerNorm
from .float_vm import FloatVM
from .importer import ImportedModel, import_model
from .legacy_names import legacy_names


def calibrate_ranges(
    model: HFCheckpoint | ImportedModel,
    sentences: Sequence[str],
    *,
    batch_size: int = 16,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> dict[str, tuple[float, np.ndarray]]:
    """``{today's point name: (max |x|, float64 [C] max |x| per channel)}`` over the real tokens
    of ``sentences`` (tokenized as ``collect_ranges`` does, ``batch_size`` per batch)."""
    if not sentences:
        raise IBertTVMError("calibration needs at least one sentence")
    im = model if isinstance(model, ImportedModel) else import_model(model)
    ckpt = im.ckpt
    mod = FoldLayerNorm()(im.mod)
    points = find_quantization_points(mod)
    if any(p.application for p in points):
        raise IBertTVMError(f"{ckpt.architecture}: graph calibration of a shared layer (points applied more "
                            "than once) is not offered: use quantization.calibrate (hooks see every application)")
    named = legacy_names(points)
    unknown = [p.name for p in points if p.calibrated and p not in named.values()]
    if unknown:
        raise IBertTVMError(f"quantization points unknown to today's calibration: {unknown}")
    names = list(named)
    vm = FloatVM(im, ExposeQuantizationPoints([named[n].name for n in names])(mod))
    tok = Tokenizer(load_tokenizer_json(ckpt.path), ckpt.max_positions, ckpt.family, ckpt.pad_token_id)
    channel: dict[str, np.ndarray] = {}
    batches = [sentences[i : i + batch_size] for i in range(0, len(sentences), batch_size)]
    for chunk in progress(batches) if progress else batches:
        _, ranges = vm(tok(chunk))
        for n, r in zip(names, ranges, strict=True):
            channel[n] = r if n not in channel else np.maximum(channel[n], r)
    return {n: (float(c.max()), c.astype(np.float64)) for n, c in channel.items()}
