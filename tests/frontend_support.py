"""The float Relax import of each tiny model, made once per session and shared by
``tests/frontend`` and ``tests/passes`` (an import costs ~5 s)."""

from __future__ import annotations

import functools

# Every architecture today's path compiles (hf_loader.SUPPORTED minus IBertForSequenceClassification,
# whose graph is IBertModel's plus RoBERTa's head).
ARCHS = ("BertModel", "RobertaModel", "IBertModel", "BertForSequenceClassification",
         "RobertaForSequenceClassification")


@functools.lru_cache(maxsize=None)
def imported(model_dir: str):
    """-> (ImportedModel, its ``main`` after FoldLayerNorm)."""
    from ibert_tvm.frontend.importer import import_model
    from ibert_tvm.passes.fold_layer_norm import FoldLayerNorm

    im = import_model(model_dir)
    return im, FoldLayerNorm()(im.mod)
