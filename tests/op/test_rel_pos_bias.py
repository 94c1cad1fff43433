"""MPNet's relative position bias on integers (op/rel_pos_bias.py): the layer's table, in units of
its scores' scale, gathered by relative position and added to int32 ``q k^T``."""

from __future__ import annotations

import numpy as np
import pytest

from ibert_tvm.op.rel_pos_bias import RelativePositionBias


def test_rel_pos_bias_te_equals_numpy_and_float():
    """te() == numpy() bit for bit, both == x + round_half_up(W[bucket(j - i)] / S); a table that
    would wrap int32 and buckets outside the table are refused."""
    import tvm
    from tvm import te

    rng = np.random.default_rng(0)
    L, heads, nb = 16, 3, 7
    w = rng.normal(0, 2, (nb, heads))
    bucket = rng.integers(0, nb, 2 * L - 1).astype(np.int32)
    scale = 1e-3
    op = RelativePositionBias(w, scale, bucket, score_bound=64 << 14)
    x = rng.integers(-(64 << 14), 64 << 14, (2, heads, 11, 11)).astype(np.int32)
    want = op.numpy(x, bucket, op.table)
    i, j = np.arange(11)[:, None], np.arange(11)[None, :]
    ref = x + np.floor(w[bucket[j - i + L - 1]] / scale + 0.5).astype(np.int64).transpose(2, 0, 1)[None]
    np.testing.assert_array_equal(want, ref)
    xs, bs, ts = (te.placeholder(a.shape, "int32", name=n) for a, n in ((x, "x"), (bucket, "b"), (op.table, "t")))
    f = tvm.compile(te.create_prim_func([xs, bs, ts, op.te(xs, bs, ts)]), target="llvm")
    out = tvm.runtime.tensor(np.zeros_like(x))
    f(tvm.runtime.tensor(x), tvm.runtime.tensor(bucket), tvm.runtime.tensor(op.table), out)
    np.testing.assert_array_equal(out.numpy(), want)
    with pytest.raises(ValueError, match="do not fit int32"):  # a table that would wrap the scores
        RelativePositionBias(w, 1e-9, bucket, score_bound=64 << 14)
    with pytest.raises(ValueError, match="bucket values"):
        RelativePositionBias(w, scale, np.full(2 * L - 1, nb, np.int32), score_bound=1)
