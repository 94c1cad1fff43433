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


# -- the packed linear: numpy reference and TVM tensor expressions ---------------------------
def packed_linear_np(x, packed, bias, bits: int, k: int | None = None) -> np.ndarray:
    """``x [..., K] int8 -> [..., N] int32``: ``linear_np(x, unpack_np(packed), bias)``."""
    from .int_matmul import linear_np

    x = np.asarray(x)
    return linear_np(x, unpack_np(packed, bits, x.shape[-1] if k is None else k), bias)


def unpack_value_te(packed, n, k, bits: int):
    """The weight ``q[n, k]`` (an int32 ``PrimExpr``) read from ``packed`` (a TE tensor, uint8
    ``[N, row_bytes(K, bits)]``), with the format's formula in int32 arithmetic::

        i, o = (k*bits) >> 3, (k*bits) & 7
        u = ((packed[n, i] | packed[n, i+1] << 8) >> o) & (2^bits - 1)   # i+1 only at 3 bits
        q = u - 2^(bits-1)

    ``n``/``k`` are index expressions (any integer dtype) with ``0 <= k < K``: at 2/4 bits a
    value never crosses a byte (8 is a multiple of ``bits``); at 3 bits the byte ``i + 1`` exists
    for every ``k < K`` (``row_bytes`` keeps one spare byte).
    """
    from tvm import tirx

    bits = int(bits)
    if bits not in PACKED_BITS:
        raise ValueError(f"only {PACKED_BITS}-bit weights are packed, got {bits}")
    j = k * bits
    i = j >> 3
    o = (j & 7).astype("int32")
    word = packed[n, i].astype("int32")
    if bits == 3:
        word = word | (packed[n, i + 1].astype("int32") << 8)
    return ((word >> o) & tirx.IntImm("int32", (1 << bits) - 1)) - tirx.IntImm("int32", 1 << (bits - 1))


def check_packed_te(packed, bits: int, k: int) -> tuple[int, int]:
    from ._common import check_te_dtype

    check_te_dtype("packed", packed, ("uint8",))
    bits, k = int(bits), int(k)
    if bits not in PACKED_BITS:
        raise ValueError(f"only {PACKED_BITS}-bit weights are packed, got {bits}")
    if len(packed.shape) != 2 or int(packed.shape[1]) != row_bytes(k, bits):
        raise ValueError(f"packed {bits}-bit weights for K={k} must be uint8 [N, {row_bytes(k, bits)}], "
                         f"got {list(packed.shape)}")
    return int(packed.shape[0]), k


UNPACK_BLOCK = "unpack_weight"  # the TE stage (and TIR block) that unpacks a packed weight


def unpack_te(packed, bits: int, k: int):
    """``packed`` uint8 ``[N, row_bytes(K, bits)]`` -> int8 ``[N, K]`` (a TE compute stage)."""
    from tvm import te

    check_packed_te(packed, bits, k)
    shape = (packed.shape[0], _imm_like(packed.shape[0], k))
    return te.compute(shape, lambda n, kk: unpack_value_te(packed, n, kk, bits).astype("int8"), name=UNPACK_BLOCK)


def packed_linear_te(x, packed, bias, bits: int, k: int):
    """``x [..., K] int8/uint8 -> [..., N] int32``: ``x W^T + b`` with ``W`` unpacked in-kernel.

    One PrimFunc with two stages: ``unpack_weight`` (int8 ``[N, K]``, :func:`unpack_te`) and the
    generic int8 x int8 -> int32 linear (:func:`~ibert_tvm.op.int_matmul.linear_te`) reading it.
    """
    from .int_matmul import linear_te

    return linear_te(x, unpack_te(packed, bits, k), bias)


def _imm_like(ref, v: int):
    """``v`` as an IntImm of the dtype of the shape entry ``ref`` (int32/int64 shapes do not mix)."""
    from tvm import tirx

    return tirx.IntImm(str(getattr(ref, "dtype", "int64")), int(v))
