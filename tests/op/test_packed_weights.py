import numpy as np
import pytest

from ibert_tvm.op.packed_weights import pack_np, qmax, row_bytes, unpack_np


def test_hand_packed_bytes():
    # 2 bits: u = q + 2 = 3, 1, 2, 3 -> 0b11_10_01_11
    assert pack_np(np.array([[1, -1, 0, 1]], np.int8), 2).tolist() == [[0b11100111]]
    # 4 bits: u = q + 8 = 15, 1 -> low nibble first
    assert pack_np(np.array([[7, -7]], np.int8), 4).tolist() == [[0x1F]]
    # 3 bits: u = q + 4 = 7, 1, 5 -> stream 111 100 101 (LSB first) = bits 0..8; value 2 straddles
    # byte 0 = 0b0_1_001_111 (bit 6 = low bit of value 2) = 0x4F, byte 1 = 0b1, then the padding byte
    assert pack_np(np.array([[3, -3, 1]], np.int8), 3).tolist() == [[0x4F, 0x01, 0x00]]


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("k", [1, 7, 8, 33, 384])
def test_roundtrip(bits, k):
    rng = np.random.default_rng(bits * 1000 + k)
    q = rng.integers(-qmax(bits), qmax(bits) + 1, size=(6, k)).astype(np.int8)
    p = pack_np(q, bits)
    assert p.dtype == np.uint8 and p.shape == (6, row_bytes(k, bits))
    assert (unpack_np(p, bits, k) == q).all()


def test_bad_input():
    with pytest.raises(ValueError, match="weight bits"):
        qmax(5)
    with pytest.raises(ValueError, match=r"\|q\| <= 1"):
        pack_np(np.array([[2]], np.int8), 2)
    with pytest.raises(ValueError, match="uint8"):
        unpack_np(np.zeros((2, 3), np.uint8), 4, 8)
