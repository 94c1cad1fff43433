"""Where calibration hooks the float PyTorch model: the quantization points found on the graph.

:func:`hook_points` imports the checkpoint (:mod:`.importer`), folds its LayerNorms, finds the
quantization points on the graph (:func:`~ibert_tvm.passes.find_quantization_points.find_quantization_points`)
and turns each calibrated one into a PyTorch hook: the module whose input or output the point is,
named by the graph (its aliases are ``<HF module path>:in`` / ``:out``). ``calibrate``, QAT and
``diagnose`` hook exactly these; nothing lists them by hand per architecture. The scales keep
the names ``legacy_names`` gives the points (``layer{i}.q``, ``embeddings.ln``, ``head.logits``...),
the names the op plans read.

A shared module (ALBERT's one layer, applied ``num_hidden_layers`` times) is hooked once per
point: its hook fires at every application, so the point's range (and scale) is the one over
all of them, and every application gets the same integer weights.

Each hook is ``(name, module path, "in" | "out")`` (the model's own module path, not the
BERT name the graph gives it), in the graph's binding order; the result is
cached per checkpoint (directory and sha256), since an import costs a ``torch.export``.
"""

from __future__ import annotations

from ..errors import IBertTVMError
from ..model.hf_loader import HFCheckpoint

_CACHE: dict[tuple[str, str], list[tuple[str, str, str]]] = {}


def hook_points(ckpt: HFCheckpoint) -> list[tuple[str, str, str]]:
    """``[(point name, HF module path, "in" | "out")]`` for every calibrated quantization point of
    ``ckpt``'s graph. ``IBertTVMError`` when a calibrated point has no name the op plans know,
    or no module of ``ckpt.model`` carries it."""
    key = (str(ckpt.path), ckpt.model_hash)
    if key not in _CACHE:
        _CACHE[key] = _hook_points(ckpt)
    return list(_CACHE[key])


def _hook_points(ckpt: HFCheckpoint) -> list[tuple[str, str, str]]:
    from ..passes.find_quantization_points import find_quantization_points
    from ..passes.fold_layer_norm import FoldLayerNorm
    from .importer import import_model
    from .legacy_names import legacy_name

    im = import_model(ckpt)
    # the graph names modules by BERT's names (the importer applies the architecture's name map):
    # BERT-named path -> the model's own path
    modules = {ckpt.canonical(n): n for n, _ in ckpt.model.named_modules()}
    hooks = []
    first = {}  # point name -> its application-0 hook
    for p in find_quantization_points(FoldLayerNorm()(im.mod)):
        if not p.calibrated:
            continue
        if p.application:  # a shared module applied again: the same hook sees every application
            if p.name not in first:
                raise IBertTVMError(f"{ckpt.architecture}: graph point {p.name} (application {p.application}) "
                                    "has no first application")
            continue
        name = legacy_name(p)
        if name is None:
            raise IBertTVMError(f"{ckpt.architecture}: the graph's quantization point {p.name} ({p.kind}) has no "
                                "scale name the integer op plans know")
        # the point's own name first (a weighted producer's ``:out``, else a consumer's ``:in``)
        where = [(path, side) for a in (p.name, *p.aliases) for path, _, side in [a.rpartition(":")]
                 if side in ("in", "out") and path in modules]
        if not where:
            raise IBertTVMError(f"{ckpt.architecture}: no module carries the graph's quantization point {p.name} "
                                f"(aliases {', '.join(p.aliases)})")
        path, side = where[0]
        hooks.append((name, modules[path], side))
        first[p.name] = hooks[-1]
    names = [h[0] for h in hooks]
    if len(set(names)) != len(names):
        raise IBertTVMError(f"{ckpt.architecture}: two graph points share a scale name: {sorted(names)}")
    return hooks
