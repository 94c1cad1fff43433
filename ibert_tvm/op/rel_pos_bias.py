"""Relative position bias (MPNet's, T5-style buckets) added to the attention scores in integers.

MPNet adds to the scaled scores of every layer the same bias ``B[h, i, j] = W[bucket(j - i), h]``
(``W``: ``encoder.relative_attention_bias``, float ``[num_buckets, heads]``). HF computes
``bucket`` with float ``log``/``divide`` on the positions; it depends on the relative position
``j - i`` only, so it is an integer table here, taken from HF's own computation at calibration
(``bucket`` below, one entry per relative position of the longest sequence).

Input: scores ``x`` int32 ``[B, heads, S, S]`` (``q k^T``, the i-Softmax input, static scale
``S_l = S_q S_k / sqrt(d)`` of layer l), ``bucket`` int32 ``[2L - 1]`` (the bucket of relative
position ``r = j - i`` at ``r + L - 1``, ``L`` = the longest sequence), ``table`` int32
``[num_buckets, heads]``: ``W`` in units of ``S_l`` (one table per layer, its scale's)::

    table  = round_half_up(W / S_l)                              # at plan time, float64
    y[b, h, i, j] = x[b, h, i, j] + table[bucket[j - i + L - 1], h]   # int32

Widths: ``|x| <= d * 2^14`` (int8 x int8 over the head size ``d``; ``score_bound``), so ``y`` fits
int32 iff ``score_bound + max|table| < 2^31``: proven in the constructor (a ``ValueError``
otherwise, never a wrap). The i-Softmax that follows reads ``y`` like any int32 scores.
Rounding the table costs at most half a score LSB (``S_l / 2``) per entry.

The kernel clamps both gathers into range (``j - i + L - 1`` is in range for ``S <= L``, which
the runtime checks); ``numpy`` refuses ``S > L`` and buckets outside the table.
"""

from __future__ import annotations

import numpy as np

from ._common import INT32_MAX, check_int_array, check_scale, check_te_dtype, i64


class RelativePositionBias:
    """Plan: the bias table of one layer in units of its scores' scale ``scale``."""

    def __init__(self, bias, scale, bucket, *, score_bound: int):
        w = np.asarray(bias, dtype=np.float64)
        if w.ndim != 2 or not np.isfinite(w).all():
            raise ValueError(f"bias must be a finite [num_buckets, heads] table, got shape {w.shape}")
        self.scale = check_scale("scale", scale)
        b = check_int_array("bucket", bucket, ("int32", "int64")).astype(np.int64)
        if b.ndim != 1 or b.size % 2 != 1:
            raise ValueError(f"bucket must be [2L - 1], got shape {b.shape}")
        if b.size and (int(b.min()) < 0 or int(b.max()) >= w.shape[0]):
            raise ValueError(f"bucket values must be in [0, {w.shape[0]}), got [{b.min()}, {b.max()}]")
        self.num_buckets, self.heads = w.shape
        self.max_len = (b.size + 1) // 2
        self.bucket = b.astype(np.int32)
        self.table = np.floor(w / self.scale + 0.5)  # round half up, float64 (exact for |t| < 2^52)
        bound = int(score_bound) + int(np.abs(self.table).max(initial=0))
        if bound > INT32_MAX:
            raise ValueError(f"relative position bias: scores (<= {score_bound}) + table (<= "
                             f"{int(np.abs(self.table).max())}) do not fit int32; the score scale {scale} is too fine")
        self.table = self.table.astype(np.int32)

    def params(self) -> dict[str, np.ndarray]:
        """The run-time tensors: ``table`` (this layer's) and ``bucket`` (shared by all layers)."""
        return {"table": self.table, "bucket": self.bucket}

    def numpy(self, x, bucket, table) -> np.ndarray:
        x = check_int_array("x", x, ("int32",))
        bucket = check_int_array("bucket", bucket, ("int32",)).astype(np.int64)
        table = check_int_array("table", table, ("int32",)).astype(np.int64)
        if x.ndim != 4 or x.shape[-1] != x.shape[-2] or x.shape[1] != table.shape[1]:
            raise ValueError(f"x must be [B, {table.shape[1]}, S, S], got {x.shape}")
        S, L = x.shape[-1], (bucket.size + 1) // 2
        if S > L:
            raise ValueError(f"sequence length {S} exceeds the bucket table's {L}")
        if bucket.size and (bucket.min() < 0 or bucket.max() >= table.shape[0]):
            raise ValueError("bucket values outside the bias table")
        pos = np.arange(S)
        k = bucket[pos[None, :] - pos[:, None] + L - 1]  # [i, j]: bucket of j - i
        bias = table[k].transpose(2, 0, 1)  # [heads, i, j]
        y = x.astype(np.int64) + bias[None]
        return y.astype(np.int32)  # |y| < 2^31 (proven at plan time)

    def te(self, x, bucket, table):
        from tvm import te, tirx

        check_te_dtype("x", x, ("int32",))
        check_te_dtype("bucket", bucket, ("int32",))
        check_te_dtype("table", table, ("int32",))
        if len(x.shape) != 4:
            raise ValueError(f"x must be [B, heads, S, S], got {list(x.shape)}")
        n_rel, n_b = int(bucket.shape[0]), int(table.shape[0])

        def clamp(v, hi, dtype):
            return tirx.max(tirx.min(v, tirx.const(hi, dtype)), tirx.const(0, dtype))

        def body(b, h, i, j):
            r = clamp((j - i).astype("int64") + i64(n_rel // 2), n_rel - 1, "int64")  # j - i + L - 1
            k = clamp(bucket[r], n_b - 1, "int32")
            return x[b, h, i, j] + table[k, h]

        return te.compute(x.shape, body, name="rel_pos_bias")
