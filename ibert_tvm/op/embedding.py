"""Embedding lookup and sum into the wide LayerNorm domain.

``y[b, t] = sat_w(Rw(word[ids]) + Rp(pos[pos_ids]) + Rt(type[type_ids]))``: three int8 tables
with per-tensor scales, each requantized to the embedding-sum scale ``S_sum`` (dyadic,
per-tensor) and saturated to ``out_bits`` (24). Output ``[B, S, H]`` int32.

A model without token types (DistilBERT) has no third table: ``ratio_type=None``, and ``tt`` /
``typew`` are None in ``numpy`` and ``te`` (the sum of the two others, with the same rounding).

Indices must be in range; the run-time entry points check ids against the vocabulary before
executing (a clear error), and the kernel additionally clamps indices so that a bad id can never
read out of bounds.
"""

from __future__ import annotations

import numpy as np

from ._common import check_bits, check_int_array, check_te_dtype, i64, signed_range
from .requantize import Requantize

_IDX = ("int32", "int64")


class EmbeddingSum:
    def __init__(self, ratio_word, ratio_pos, ratio_type, *, out_bits: int = 24):
        self.out_bits = check_bits("out_bits", out_bits, 8, 31)
        kw = dict(in_bits=8, out_bits=self.out_bits, out_dtype="int32")
        self.rw, self.rp = (Requantize(r, **kw) for r in (ratio_word, ratio_pos))
        self.rt = None if ratio_type is None else Requantize(ratio_type, **kw)
        self.qmin, self.qmax = signed_range(self.out_bits)

    @property
    def has_token_types(self) -> bool:
        return self.rt is not None

    def _tables(self, ids, pos, tt, word, posw, typew):
        """The (name, index, table) triples in use; ``tt``/``typew`` must be given iff token types are."""
        if (tt is None or typew is None) != (self.rt is None):
            raise ValueError("token_type_ids and the token-type table are given iff the plan has token types")
        out = [("input_ids", ids, word), ("position_ids", pos, posw)]
        return out + ([("token_type_ids", tt, typew)] if self.rt is not None else [])

    def numpy(self, ids, pos, tt, word, posw, typew) -> np.ndarray:
        tables = self._tables(ids, pos, tt, word, posw, typew)
        for n, a, t in tables:
            check_int_array(n, a, _IDX)
            if a.size and (int(a.min()) < 0 or int(a.max()) >= t.shape[0]):
                raise ValueError(f"{n} has values outside [0, {t.shape[0]})")
        y = self.rw.numpy(word[ids]).astype(np.int64) + self.rp.numpy(posw[pos]).astype(np.int64)
        if self.rt is not None:
            y = y + self.rt.numpy(typew[tt]).astype(np.int64)
        return np.clip(y, self.qmin, self.qmax).astype(np.int32)

    def te(self, ids, pos, tt, word, posw, typew):
        from tvm import te, tirx

        for n, a, t in self._tables(ids, pos, tt, word, posw, typew):
            check_te_dtype(n, a, _IDX)
            check_te_dtype(n.replace("_ids", "").replace("input", "word") + " table", t, ("int8",))
        lo, hi = i64(self.qmin), i64(self.qmax)

        def rq(r, v):
            v = (v.astype("int64") * i64(r.m) + i64(1 << (r.s - 1))) >> i64(r.s)
            return tirx.max(tirx.min(v, hi), lo)

        def idx(a, table, b, t):
            i = a[b, t]
            return tirx.max(tirx.min(i, tirx.const(int(table.shape[0]) - 1, i.dtype)), tirx.const(0, i.dtype))

        def body(b, t, h):
            v = rq(self.rw, word[idx(ids, word, b, t), h]) + rq(self.rp, posw[idx(pos, posw, b, t), h])
            if self.rt is not None:
                v = v + rq(self.rt, typew[idx(tt, typew, b, t), h])
            return tirx.max(tirx.min(v, hi), lo).astype("int32")

        return te.compute((*ids.shape, word.shape[1]), body, name="embedding_sum")
