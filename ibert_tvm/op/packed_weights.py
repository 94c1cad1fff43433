"""Low-bit weights packed into bytes (Q-BERT's 2/3/4-bit weights), and their unpacking.

Format (``PACK_FORMAT``), for a weight ``q [N, K]`` of symmetric ``bits``-bit integers
(``|q| <= 2^(bits-1) - 1``, ``bits`` in {2, 3, 4}):

* each value is stored *offset-binary*: ``u = q + 2^(bits-1)``, so ``u`` is in ``[1, 2^bits - 1]``;
* each row is a little-endian bit stream: value ``k`` of a row occupies bits
  ``[k*bits, k*bits + bits)`` of the row, i.e. byte ``(k*bits) >> 3`` from bit ``(k*bits) & 7``;
  at 3 bits a value may straddle two bytes;
* a row takes ``row_bytes(K, bits)`` bytes: ``ceil(K*bits / 8)``, plus one zero byte at 3 bits
  so that reading the (byte, byte+1) pair of any value stays inside the row.

So ``packed`` is ``uint8 [N, row_bytes(K, bits)]``. Unpacking ``q[n, k]``::

    i, o = (k*bits) >> 3, (k*bits) & 7
    u = ((packed[n, i] | packed[n, i+1] << 8) >> o) & (2^bits - 1)   # (the i+1 byte only at 3 bits)
    q = u - 2^(bits-1)

8-bit weights are never packed (the int8 array itself).
"""

from __future__ import annotations

import numpy as np

PACK_FORMAT = "rowbits-offset/1"
PACKED_BITS = (2, 3, 4)
WEIGHT_BITS = (2, 3, 4, 8)


def check_weight_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or int(bits) not in WEIGHT_BITS:
        raise ValueError(f"weight bits must be one of {WEIGHT_BITS}, got {bits!r}")
    return int(bits)


def qmax(bits: int) -> int:
    """Largest magnitude of a symmetric ``bits``-bit weight."""
    return (1 << (check_weight_bits(bits) - 1)) - 1


def row_bytes(k: int, bits: int) -> int:
    if int(bits) not in PACKED_BITS:
        raise ValueError(f"only {PACKED_BITS}-bit weights are packed, got {bits}")
    return (int(k) * int(bits) + 7) // 8 + (1 if int(bits) == 3 else 0)


def pack_np(q: np.ndarray, bits: int) -> np.ndarray:
    """int8 ``[N, K]`` with ``|q| <= qmax(bits)`` -> uint8 ``[N, row_bytes(K, bits)]``."""
    q = np.asarray(q)
    if q.ndim != 2 or q.dtype.kind not in "iu":
        raise ValueError(f"pack_np wants an integer [N, K] matrix, got {q.dtype} {q.shape}")
    bits = int(bits)
    lim = qmax(bits)
    if bits not in PACKED_BITS:
        raise ValueError(f"only {PACKED_BITS}-bit weights are packed, got {bits}")
    if q.size and int(np.abs(q.astype(np.int64)).max()) > lim:
        raise ValueError(f"a {bits}-bit weight must satisfy |q| <= {lim}, got {int(np.abs(q.astype(np.int64)).max())}")
    n, k = q.shape
    u = (q.astype(np.int64) + (1 << (bits - 1))).astype(np.uint64)
    # bit j of the row stream = bit (j - k*bits) of value k
    bitplanes = ((u[:, :, None] >> np.arange(bits, dtype=np.uint64)[None, None, :]) & 1).astype(np.uint8)
    stream = bitplanes.reshape(n, k * bits)
    nbytes = row_bytes(k, bits)
    padded = np.zeros((n, nbytes * 8), dtype=np.uint8)
    padded[:, : k * bits] = stream
    return np.packbits(padded.reshape(n, nbytes, 8), axis=2, bitorder="little").reshape(n, nbytes)


def unpack_np(packed: np.ndarray, bits: int, k: int) -> np.ndarray:
    """uint8 ``[N, row_bytes(K, bits)]`` -> int8 ``[N, K]`` (integer arithmetic, the format above)."""
    packed = np.asarray(packed)
    bits, k = int(bits), int(k)
    if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != row_bytes(k, bits):
        raise ValueError(f"packed {bits}-bit weights for K={k} must be uint8 [N, {row_bytes(k, bits)}], "
                         f"got {packed.dtype} {packed.shape}")
    j = np.arange(k, dtype=np.int64) * bits
    i, o = j >> 3, j & 7
    lo = packed[:, i].astype(np.int64)
    hi = packed[:, np.minimum(i + 1, packed.shape[1] - 1)].astype(np.int64) if bits == 3 else 0
    u = ((lo | (hi << 8)) >> o[None, :]) & ((1 << bits) - 1)
    return (u - (1 << (bits - 1))).astype(np.int8)
