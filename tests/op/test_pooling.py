"""Pooling ops: te() == numpy() bit for bit, and numpy() == an independent float64 reference of
sentence-transformers' pooling (scaled by 2^FRAC_BITS), with padding and an all-padding row."""

from __future__ import annotations

import numpy as np
import pytest

from ibert_tvm.op.pooling import FRAC_BITS, POOLINGS


def _reference(mode: str, x, mask) -> np.ndarray:
    """sentence-transformers' Pooling on dequantized tokens (scale 1), times 2^FRAC_BITS, rounded."""
    x, keep = x.astype(np.float64), mask != 0
    out = np.zeros((x.shape[0], x.shape[2]))
    for b in range(x.shape[0]):
        rows = x[b][keep[b]]
        if len(rows) == 0:
            continue
        out[b] = {"mean": rows.mean(axis=0), "cls": x[b, 0], "max": rows.max(axis=0)}[mode]
    return np.floor(out * (1 << FRAC_BITS) + 0.5).astype(np.int64)


def _inputs(rng, batch=5, seq=7, hidden=9):
    x = rng.integers(-128, 128, (batch, seq, hidden)).astype(np.int8)
    lengths = rng.integers(1, seq + 1, batch)
    lengths[-1] = 0  # a row with no tokens
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32)
    x[:, :, 0] = -128  # extremes
    x[0, 0, 1] = 127
    return x, mask


@pytest.mark.parametrize("mode", sorted(POOLINGS))
def test_numpy_equals_the_float_reference(mode):
    rng = np.random.default_rng(3)
    for _ in range(20):
        x, mask = _inputs(rng)
        np.testing.assert_array_equal(POOLINGS[mode][0](x, mask), _reference(mode, x, mask))


@pytest.mark.parametrize("mode", sorted(POOLINGS))
def test_te_equals_numpy(mode):
    import tvm
    from tvm import te

    np_fn, te_fn = POOLINGS[mode]
    B, S, H = te.var("B"), te.var("S"), 9
    x = te.placeholder((B, S, H), "int8", name="x")
    mask = te.placeholder((B, S), "int32", name="mask")
    y = te_fn(x, mask)
    f = tvm.compile(te.create_prim_func([x, mask, y]), target="llvm")
    rng = np.random.default_rng(4)
    for batch, seq in [(1, 1), (5, 7), (3, 33)]:
        xv, mv = _inputs(rng, batch, seq, H)
        out = tvm.runtime.tensor(np.zeros((batch, H), np.int32))
        f(tvm.runtime.tensor(xv), tvm.runtime.tensor(mv), out)
        np.testing.assert_array_equal(out.numpy(), np_fn(xv, mv), err_msg=f"{mode} {batch}x{seq}")
