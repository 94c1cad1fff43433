"""Text -> integer model inputs, with only the ``tokenizers`` package (no PyTorch).

Inputs are int32 ``[B, S]``: ``input_ids``, ``attention_mask``, ``token_type_ids`` and
``position_ids``. Texts are padded to the longest in the batch and never truncated silently:
a text longer than the model's maximum is an error unless the caller asks for truncation
(``truncate=True``: the tokenizer's own longest-first truncation to the maximum, keeping the
special tokens).
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from ..errors import IBertTVMError


# The model inputs the tokenizer produces, in the order every compiled model and engine takes them.
INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


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
        self._trunc = None  # built on first use by _truncating()
        self._lock = threading.Lock()

    def __call__(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
                 truncate: bool = False) -> dict[str, np.ndarray]:
        """Tokenize and pad ``texts`` (and ``pairs``) as one batch."""
        return self.pad(self.encode(texts, pairs, truncate=truncate))

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
               truncate: bool = False) -> list[tuple[list[int], list[int]]]:
        """``(ids, type_ids)`` of each text (pair), unpadded; a text over the model's maximum is an
        error naming it, unless ``truncate``."""
        if isinstance(texts, str):
            texts = [texts]
        if isinstance(pairs, str):
            pairs = [pairs]
        if not texts:
            raise IBertTVMError("no text to tokenize")
        if pairs is not None and len(pairs) != len(texts):
            raise IBertTVMError("texts and pairs differ in length")
        for i, t in enumerate([*texts, *(pairs or ())]):
            if not isinstance(t, str):
                raise IBertTVMError(f"text {i % len(texts)} is a {type(t).__name__}, not a string")
        inputs = list(zip(texts, pairs)) if pairs is not None else list(texts)
        encs = (self._truncating() if truncate else self.tok).encode_batch(inputs)
        out = [(e.ids, e.type_ids) for e in encs]
        for i, (ids, _) in enumerate(out):
            if len(ids) > self.max_len:
                raise IBertTVMError(f"text {i} has {len(ids)} tokens; the model's maximum sequence length is "
                                    f"{self.max_len} (truncate it, or pass truncate=True / --truncate)")
        return out

    def _truncating(self):
        """A second tokenizer with truncation on: the settings are per instance, and flipping them
        on the shared one would truncate another thread's texts."""
        with self._lock:
            if self._trunc is None:
                self._trunc = type(self.tok).from_str(self.tok.to_str())
                self._trunc.enable_truncation(self.max_len)
            return self._trunc

    def pad(self, encs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> dict[str, np.ndarray]:
        """Right-pad encoded rows to the longest: the model's integer inputs ``[B, S]``."""
        n = max(len(ids) for ids, _ in encs)
        B = len(encs)
        ids = np.full((B, n), self.pad_id, dtype=np.int32)
        mask = np.zeros((B, n), dtype=np.int32)
        tt = np.zeros((B, n), dtype=np.int32)
        for i, (row, types) in enumerate(encs):
            L = len(row)
            ids[i, :L] = row
            mask[i, :L] = 1
            tt[i, :L] = types
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
