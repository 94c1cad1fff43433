"""``P V`` with a uint16 ``P`` as two byte products (``op.wide_pv``).

* The byte split is exact: ``256 * (p >> 8) + (p & 255) == p`` for every uint16.
* ``numpy`` equals an independent big-int dot product and ``batch_matmul_np(p, v, row_sum=R)``
  on real i-softmax rows (16 bits, rows up to ``max_len``) and on adversarial rows (all the
  row sum in one entry, or spread as evenly as possible) with ``v = -128`` / ``127``.
* The TE stages (``byte_te`` x 2, ``batch_matmul_te`` x 2, ``combine_te``) compiled for the CPU
  equal ``numpy`` bit for bit.
* The bounds: ``max_len = 512`` at 16 bits is proven; a row sum bound whose ``128 R`` exceeds
  int32, or a row longer than the uint8 proof admits, is refused; data above the proven row sum
  is refused.
"""

from __future__ import annotations

import numpy as np
import pytest

from ibert_tvm.op import wide_pv
from ibert_tvm.op.int_matmul import batch_matmul_np, batch_matmul_te
from ibert_tvm.op.int_softmax import IntSoftmax
from ibert_tvm.op.testing import build_te


def big_int_pv(p: np.ndarray, vt: np.ndarray) -> np.ndarray:
    """sum_j p[.., i, j] v[.., n, j] in Python ints (an independent reference)."""
    lead = p.shape[:-2]
    p2, v2 = p.reshape(-1, *p.shape[-2:]).tolist(), vt.reshape(-1, *vt.shape[-2:]).tolist()
    out = [[[sum(int(a) * int(b) for a, b in zip(row, vn)) for vn in vb] for row in pb] for pb, vb in zip(p2, v2)]
    return np.array(out, dtype=np.int64).reshape(*lead, p.shape[-2], vt.shape[-2])


def test_byte_split_is_exact_for_every_uint16():
    p = np.arange(1 << 16, dtype=np.uint16)
    hi, lo = wide_pv.split_np(p)
    assert hi.dtype == lo.dtype == np.uint8
    np.testing.assert_array_equal(hi.astype(np.int64) * 256 + lo, p.astype(np.int64))


def _softmax_rows(rng, batch, heads, seq, max_len=64):
    sm = IntSoftmax(2.0**-6, out_bits=16, max_len=max_len)
    x = rng.integers(-4000, 4000, (batch, heads, seq, seq)).astype(np.int32)
    mask = np.ones((batch, seq), np.int32)
    mask[-1, seq // 2:] = 0  # a padded row: fewer kept entries
    return sm, sm.numpy(x, mask)


def test_numpy_equals_big_ints_on_real_softmax_rows():
    rng = np.random.default_rng(0)
    sm, p = _softmax_rows(rng, 2, 3, 37)
    assert p.dtype == np.uint16 and p.max() > 255  # wide: the high byte is used
    vt = rng.integers(-128, 128, (2, 3, 8, 37)).astype(np.int8)
    got = wide_pv.numpy(p, vt, max_len=sm.max_len, row_sum=sm.row_sum_bound)
    np.testing.assert_array_equal(got, big_int_pv(p, vt))
    np.testing.assert_array_equal(got, batch_matmul_np(p, vt, row_sum=sm.row_sum_bound))


@pytest.mark.parametrize("v", [-128, 127])
def test_adversarial_rows_at_the_proven_bound(v):
    """max_len 512, 16 bits: R = 65536 + 256; one entry holding 65535 and the rest spread over
    the row up to R, every v extreme: the largest sums the proof admits, exact."""
    sm = IntSoftmax(2.0**-6, out_bits=16, max_len=512)
    r = sm.row_sum_bound
    p = np.zeros((1, 1, 3, 512), np.uint16)
    p[0, 0, 0, 0] = 65535
    p[0, 0, 0, 1:] = 0
    p[0, 0, 0, 1: 1 + (r - 65535)] = 1  # row 0: all of R, mostly in one entry
    p[0, 0, 1, :] = r // 512  # row 1: spread evenly (high bytes 0, low bytes 128)
    p[0, 0, 2, :256] = 256  # row 2: only high bytes (lo = 0)
    assert p.astype(np.int64).sum(axis=-1).max() <= r
    vt = np.full((1, 1, 16, 512), v, np.int8)
    got = wide_pv.numpy(p, vt, max_len=512, row_sum=r)
    np.testing.assert_array_equal(got, big_int_pv(p, vt))


def test_te_stages_equal_numpy():
    rng = np.random.default_rng(1)
    sm, p = _softmax_rows(rng, 2, 2, 19)
    vt = rng.integers(-128, 128, (2, 2, 16, 19)).astype(np.int8)

    def stages(pp, tt):
        hi = wide_pv.byte_te(pp, True)
        lo = wide_pv.byte_te(pp, False)
        return wide_pv.combine_te(batch_matmul_te(hi, tt), batch_matmul_te(lo, tt))

    run, func = build_te(stages, [p, vt])
    np.testing.assert_array_equal(run(p, vt), wide_pv.numpy(p, vt, max_len=sm.max_len, row_sum=sm.row_sum_bound))
    blocks = func.script()
    assert wide_pv.HIGH_BLOCK in blocks and wide_pv.LOW_BLOCK in blocks and wide_pv.COMBINE_BLOCK in blocks


def test_bounds_and_bad_input_are_refused():
    wide_pv.check_bounds(512, (1 << 16) + 256)  # the scheme's widest: proven
    with pytest.raises(ValueError, match="2\\^31-1"):
        wide_pv.check_bounds(512, (1 << 24))  # 128 R > int32
    with pytest.raises(ValueError):
        wide_pv.check_bounds(1 << 17, (1 << 16) + 256)  # 2^17 * 255 * 128 > int32: the byte products
    p = np.full((1, 1, 1, 4), 30000, np.uint16)
    with pytest.raises(ValueError, match="sums to 120000 > the proven 65792"):
        wide_pv.numpy(p, np.ones((1, 1, 2, 4), np.int8), max_len=512, row_sum=65792)
    with pytest.raises(ValueError):
        wide_pv.split_np(np.zeros(3, np.uint8))  # only a uint16 P is split
