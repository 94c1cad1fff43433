"""The FP32 reference every comparison uses: a Hugging Face model with the head and pooling the
integer model has, as one ``torch.nn.Module``.

``(input_ids, attention_mask, token_type_ids, position_ids) -> out``: ``[B, labels]`` logits for a
sequence-classification head, else the sentence embedding ``[B, H]`` pooled the way the model
dir's sentence-transformers config says (:data:`ibert_tvm.op.pooling.POOLINGS`: mean, cls, max;
mean when there is none). The benchmark engines (PyTorch, ONNX Runtime, TVM FP32) and
``eval``'s ONNX Runtime peers export or run this module, so that they all do the integer model's
job; QAT pools with :func:`torch_pool`, differentiably.

:func:`torch_pool` is the torch twin of :func:`ibert_tvm.op.pooling.float_pool` (numpy, float64):
a row with no tokens gives 0, as the integer ops do.
"""

from __future__ import annotations

from ..errors import IBertTVMError


def torch_pool(mode: str, hs, mask):
    """The pooling ``mode`` of ``op.pooling`` on float token embeddings ``hs [B, S, H]`` over
    ``mask [B, S]`` (torch tensors; differentiable)."""
    import torch

    m = mask.to(hs.dtype)[:, :, None]
    some = (m.sum(1) > 0).to(hs.dtype)
    if mode == "mean":
        return (hs * m).sum(1) / m.sum(1).clamp(min=1.0)
    if mode == "cls":
        return hs[:, 0, :] * some
    if mode == "max":
        return torch.where(m > 0, hs, torch.full_like(hs, -torch.inf)).amax(1).nan_to_num(0.0, neginf=0.0) * some
    raise IBertTVMError(f"unknown pooling {mode!r}")


def reference_module(hf_model, head: str, pooling: str = "mean"):
    """``hf_model`` (eval mode) wrapped to output what the integer model outputs (see the module
    docstring). ``head`` is ``"embedding"`` or ``"classifier"``; the token-level heads are not
    wrapped (their peers are not built)."""
    import inspect

    import torch

    if head not in ("embedding", "classifier"):
        raise IBertTVMError(f"no FP32 reference module for the {head!r} head (embedding or classifier only)")
    if head == "embedding" and pooling not in ("mean", "cls", "max"):
        raise IBertTVMError(f"unknown pooling {pooling!r}")

    # DistilBERT's forward takes neither token_type_ids nor position_ids (it has no token types
    # and its positions are always 0..S-1): pass only what the model's forward names.
    takes = set(inspect.signature(hf_model.forward).parameters)

    class Reference(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids, position_ids):
            given = {"input_ids": input_ids, "attention_mask": attention_mask,
                     "token_type_ids": token_type_ids, "position_ids": position_ids}
            r = self.m(**{k: v for k, v in given.items() if k in takes})
            if head == "classifier":
                return r.logits
            return torch_pool(pooling, r.last_hidden_state, attention_mask)

    return Reference(hf_model).eval()
