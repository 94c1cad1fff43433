"""``P V`` with a wide softmax output ``P`` (uint16, the scheme's ``softmax_bits`` > 8) as two
byte products, so that it runs on the same uint8 x int8 dot-product units as the 8-bit ``P V``.

Every ``p`` in ``[0, 2^16)`` is ``p = 256 hi + lo`` with ``hi = p >> 8`` and ``lo = p & 255``,
both uint8. So, exactly, in integers::

    sum_j p[j] v[j]  =  256 * sum_j hi[j] v[j]  +  sum_j lo[j] v[j]

The two sums are ordinary uint8 x int8 ``batch_matmul`` products (``op.int_matmul``; named
``pv_matmul`` by the lowering, scheduled like the 8-bit layers' ``P V``: ``vpdpbusd`` on x86,
dp4a on cuda-t4), and :func:`combine_te` adds them.

int32 bounds, with ``R`` the softmax's proven row sum bound (``IntSoftmax.row_sum_bound``,
``sum_j p[j] <= R``) and ``L`` the longest row (``max_seq``), ``|v| <= 128``:

* ``lo`` product: ``|sum_j lo[j] v[j]| <= 255 * 128 * L`` (``check_accumulator``: the 8-bit
  ``P V``'s own proof), 16,711,680 at ``L = 512``;
* ``hi`` product: ``sum_j hi[j] <= sum_j p[j] / 256 <= R / 256``, so
  ``|256 * sum_j hi[j] v[j]| <= 128 * R`` (the wide ``P V``'s own bound), 8,421,376 at 16 bits,
  ``L = 512``; also ``<= 255 * 128 * L`` before the multiplication;
* the combined sum *is* ``sum_j p[j] v[j]``: ``<= 128 * R``.

:func:`check_bounds` proves all three fit int32 (every partial sum is bounded by its full sum's
bound, as every term is bounded by the same product). The integers equal
``batch_matmul_np(p, v, row_sum=R)`` bit for bit (``tests/op/test_wide_pv.py``).
"""

from __future__ import annotations

import numpy as np

from ._common import INT32_MAX, check_int_array, check_te_dtype
from .int_matmul import batch_matmul_np, check_accumulator

BYTE = 256
HIGH_BLOCK, LOW_BLOCK, COMBINE_BLOCK = "p_high_byte", "p_low_byte", "pv_combine"


def check_bounds(max_len: int, row_sum: int) -> None:
    """Prove the three int32 bounds of the module docstring; ``ValueError`` otherwise."""
    check_accumulator(max_len, "uint8", "int8")  # each byte product, term by term
    if 128 * int(row_sum) > INT32_MAX:
        raise ValueError(f"a wide P V with rows summing to <= {row_sum} can reach {128 * int(row_sum)} > 2^31-1")


def split_np(p) -> tuple[np.ndarray, np.ndarray]:
    """uint16 ``p`` -> (``p >> 8``, ``p & 255``), both uint8."""
    p = check_int_array("p", p, ("uint16",))
    return (p >> 8).astype(np.uint8), (p & (BYTE - 1)).astype(np.uint8)


def numpy(p, vt, *, max_len: int, row_sum: int) -> np.ndarray:
    """``p`` [..., M, K] uint16, ``vt`` [..., N, K] int8 -> [..., M, N] int32, by bytes."""
    check_bounds(max_len, row_sum)
    p = check_int_array("p", p, ("uint16",))
    if p.shape[-1] > max_len:
        raise ValueError(f"row length {p.shape[-1]} exceeds max_len {max_len}")
    if p.size and p.astype(np.int64).sum(axis=-1).max() > row_sum:
        raise ValueError(f"a row of p sums to {p.astype(np.int64).sum(axis=-1).max()} > the proven {row_sum}")
    hi, lo = split_np(p)
    acc = BYTE * batch_matmul_np(hi, vt).astype(np.int64) + batch_matmul_np(lo, vt).astype(np.int64)
    return acc.astype(np.int32)  # |acc| <= 128 * row_sum <= 2^31 - 1 (check_bounds)


def byte_te(p, high: bool):
    """uint16 ``p`` -> its high (``p >> 8``) or low (``p & 255``) byte, uint8, same shape."""
    from tvm import te, tirx

    check_te_dtype("p", p, ("uint16",))
    if high:
        return te.compute(p.shape, lambda *i: (p(*i) >> tirx.const(8, "uint16")).astype("uint8"), name=HIGH_BLOCK)
    return te.compute(p.shape, lambda *i: (p(*i) & tirx.const(BYTE - 1, "uint16")).astype("uint8"), name=LOW_BLOCK)


def combine_te(hi_acc, lo_acc):
    """int32 ``256 * hi_acc + lo_acc`` (the products of the two bytes; bounds in the module doc)."""
    from tvm import te, tirx

    check_te_dtype("hi_acc", hi_acc, ("int32",))
    check_te_dtype("lo_acc", lo_acc, ("int32",))
    return te.compute(hi_acc.shape, lambda *i: hi_acc(*i) * tirx.const(BYTE, "int32") + lo_acc(*i),
                      name=COMBINE_BLOCK)
