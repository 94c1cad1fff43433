"""Text -> integer model inputs, with only the ``tokenizers`` package (no PyTorch).

Inputs are int32 ``[B, S]``: ``input_ids``, ``attention_mask``, ``token_type_ids`` and
``position_ids``. Texts are padded to the longest in the batch and never truncated silently:
a text longer than the model's maximum is an error.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import IBertTVMError


class Tokenizer:
    def __init__(self, tokenizer_json: str, max_len: int, family: str = "bert", pad_id: int | None = None):
        from tokenizers import Tokenizer as _T

        try:
            self.tok = _T.from_str(tokenizer_json)
        except Exception as e:  # noqa: BLE001
            raise IBertTVMError(f"tokenizer.json is not a valid tokenizer: {e}") from None
        self.tok.no_truncation()
        self.tok.no_padding()
        self.max_len = int(max_len)
        self.family = family
        if pad_id is None:
            for t in ("[PAD]", "<pad>"):
                if self.tok.token_to_id(t) is not None:
                    pad_id = self.tok.token_to_id(t)
                    break
        self.pad_id = int(pad_id or 0)

    def __call__(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise IBertTVMError("no text to tokenize")
        if pairs is not None:
            if len(pairs) != len(texts):
                raise IBertTVMError("texts and pairs differ in length")
            encs = self.tok.encode_batch(list(zip(texts, pairs)))
        else:
            encs = self.tok.encode_batch(list(texts))
        n = max(len(e.ids) for e in encs)
        if n > self.max_len:
            raise IBertTVMError(f"a text has {n} tokens; the model's maximum sequence length is {self.max_len}")
        B = len(encs)
        ids = np.full((B, n), self.pad_id, dtype=np.int32)
        mask = np.zeros((B, n), dtype=np.int32)
        tt = np.zeros((B, n), dtype=np.int32)
        for i, e in enumerate(encs):
            L = len(e.ids)
            ids[i, :L] = e.ids
            mask[i, :L] = 1
            tt[i, :L] = e.type_ids
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": tt,
            "position_ids": position_ids(ids, mask, self.family, self.pad_id),
        }


def position_ids(input_ids: np.ndarray, mask: np.ndarray, family: str, pad_id: int) -> np.ndarray:
    """BERT: 0..S-1. RoBERTa: pad_id + running count of real tokens (padding -> pad_id)."""
    if family == "roberta":
        keep = (np.asarray(mask) != 0).astype(np.int32)
        return (np.cumsum(keep, axis=1, dtype=np.int32) * keep + pad_id).astype(np.int32)
    return np.broadcast_to(np.arange(input_ids.shape[1], dtype=np.int32), input_ids.shape).copy()
