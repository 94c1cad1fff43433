"""Integer square root by Newton's method (I-BERT, Algorithm 4).

``isqrt(n) = floor(sqrt(n))`` for ``0 <= n < 2^62`` (int64), with no floating point:

    x0      = 2^ceil(bits(n) / 2)            # >= sqrt(n): start above the root
    x_{i+1} = floor((x_i + floor(n / x_i)) / 2)
    stop when x_{i+1} >= x_i; the answer is x_i

From above, Newton's iterates decrease strictly until they reach ``floor(sqrt(n))``, and from
there the update never goes lower. So a fixed number of steps of
``x <- min(x, (x + n // x) >> 1)`` computes exactly Algorithm 4's answer, without a
data-dependent loop (good for vector and GPU code). ``ITERATIONS`` is the worst case over the
supported domain, proven per bit length in ``tests/op/test_int_sqrt.py`` (an exact bound from
the real Newton error at the bottom of each bit length, attained by ``(2^k + 1)^2 - 1``):
int32 inputs need at most ``ITERATIONS_INT32``; inputs below 2^62 at most ``ITERATIONS``.

``bits(n)`` is ``64 - clz(n)`` in TIR (``tirx.clz``), ``int.bit_length`` in the reference.
``n = 0`` gives 0 (the divisor is clamped to >= 1).
"""

from __future__ import annotations

import numpy as np

from ._common import check_int_array, check_te_dtype, i64

ITERATIONS_INT32 = 5  # worst case over n < 2^31 (e.g. n = 32769^2 - 1); tight
ITERATIONS = 6  # worst case over n < 2^62 (e.g. n = (2^30 + 1)^2 - 1); tight
MAX_INPUT = (1 << 62) - 1


def initial_guess_np(n: np.ndarray) -> np.ndarray:
    """2^ceil(bits(n)/2) for int64 n >= 0, integer-only (bit length by binary search)."""
    n = n.astype(np.int64)
    bits = np.zeros_like(n)
    v = n.copy()
    for sh in (32, 16, 8, 4, 2, 1):
        big = v >= (np.int64(1) << sh)
        bits = bits + np.where(big, sh, 0)
        v = np.where(big, v >> sh, v)
    bits = bits + (v > 0)  # now bits = bit_length(n)
    return np.int64(1) << ((bits + 1) >> 1)


def isqrt_np(n, iterations: int = ITERATIONS) -> np.ndarray:
    """floor(sqrt(n)) elementwise for an int64 (or narrower int) array with 0 <= n < 2^62."""
    n = check_int_array("n", n, ("int8", "int16", "int32", "int64")).astype(np.int64)
    if n.size and (int(n.min()) < 0 or int(n.max()) > MAX_INPUT):
        raise ValueError("isqrt is specified for 0 <= n < 2^62")
    x = initial_guess_np(n)
    for _ in range(iterations):
        x = np.minimum(x, (x + n // np.maximum(x, 1)) >> 1)
    return x


def isqrt_expr(n, iterations: int = ITERATIONS):
    """TIR expression: floor(sqrt(n)) for an int64 PrimExpr 0 <= n < 2^62.

    ``n`` and every iterate are bound with ``Let``: each step uses ``x`` three times, so writing
    the iterates out inline would repeat the initial guess 3^iterations (729) times, and TVM's
    simplifier then spent ~7-40 s compiling a single isqrt kernel.
    """
    from tvm import tirx

    nv = tirx.Var("isqrt_n", "int64")
    xs = [tirx.Var(f"isqrt_x{i}", "int64") for i in range(iterations + 1)]
    body = xs[-1]
    for i in reversed(range(iterations)):
        x = xs[i]
        step = tirx.min(x, (x + tirx.floordiv(nv, tirx.max(x, i64(1)))) >> i64(1))
        body = tirx.Let(xs[i + 1], step, body)
    bits = i64(64) - tirx.clz(nv).astype("int64")
    x0 = tirx.Select(nv > i64(0), i64(1) << ((bits + i64(1)) >> i64(1)), i64(1))
    return tirx.Let(nv, n, tirx.Let(xs[0], x0, body))


def isqrt_te(n, iterations: int = ITERATIONS):
    """te.Tensor of int64 (or narrower) -> int64 te.Tensor of floor(sqrt(n))."""
    from tvm import te

    check_te_dtype("n", n, ("int32", "int64"))
    return te.compute(n.shape, lambda *i: isqrt_expr(n(*i).astype("int64"), iterations), name="isqrt")
