"""Integer square root (Newton, I-BERT Algorithm 4): exactness and a proof of the iteration counts.

* ``isqrt_np`` and the compiled ``isqrt_te`` equal ``math.isqrt`` on every int32 edge (0..3,
  perfect squares and their +-1 neighbours up to 2^31, 2^k +- 1 for all k) and on random inputs
  up to 2^62 - 1 (the specified domain), for int32 and int64 tensors.
* ``ITERATIONS_INT32`` / ``ITERATIONS`` are proven sufficient for n < 2^31 / n < 2^62 by a
  per-bit-length bound computed in exact rational arithmetic (argument below), cross-checked
  exhaustively for small n, and shown tight: concrete inputs need exactly that many steps and
  give a wrong root with one iteration fewer.

Proof sketch (for n with bit length b >= 1, x0 = 2^ceil(b/2) > sqrt(n), q = isqrt(n)):
  (a) floor-Newton never drops below q: x + floor(n/x) = floor(x + n/x) >= floor(2 sqrt(n)), so
      floor((x + floor(n/x)) / 2) >= q; hence the ``min`` form and Algorithm 4's stop rule agree.
  (b) From x = q + 1 one step gives q, because n < (q+1)^2 means floor(n/(q+1)) <= q.
  (c) While x_i > q (so x_i > sqrt(n)), x_i <= u_i where u is the real Newton sequence from the
      same x0, since t + n/t increases for t >= sqrt(n).
  (d) d_i = u_i - sqrt(n) satisfies d_{i+1} = d_i^2 / (2 (sqrt(n) + d_i)), increasing in d_i and
      decreasing in n, and d_0 = x0 - sqrt(n) decreases with n: over one bit length d_i is
      largest at n = 2^(b-1).
  So if d_i(2^(b-1)) < 1, every n of bit length b has x_i < sqrt(n) + 1 < q + 2, i.e. x_i <= q+1,
  and x_{i+1} = q: at most i + 1 steps. ``newton_step_bound`` computes that i + 1 exactly.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ibert_tvm.op.int_sqrt import ITERATIONS, ITERATIONS_INT32, MAX_INPUT, isqrt_np, isqrt_te
from ibert_tvm.op.testing import build_te

INT32_MAX = 2**31 - 1


# -- Python-int models of Algorithm 4 -----------------------------------------------------------
def algorithm4(n: int) -> tuple[int, int]:
    """I-BERT Algorithm 4 with Python ints: (result, number of decreasing updates it made)."""
    if n == 0:
        return 0, 1  # x0 = 1 -> 0 (the kernels clamp the divisor to 1)
    x = 1 << ((n.bit_length() + 1) // 2)
    steps = 0
    while True:
        nxt = (x + n // x) // 2
        if nxt >= x:
            return x, steps
        x, steps = nxt, steps + 1


def newton_step_bound(b: int) -> int:
    """Proven maximum number of updates for any n of bit length b (see the module docstring)."""
    n = 1 << (b - 1)
    u = Fraction(1 << ((b + 1) // 2))
    i = 0
    while not (u < 1 or (u - 1) ** 2 < n):  # d_i = u_i - sqrt(n) < 1, decided exactly
        u = (u + Fraction(n) / u) / 2
        i += 1
    return i + 1


# Inputs that need the full iteration count (found by search; n = (2^k + 1)^2 - 1).
WORST_INT32 = (32769**2 - 1, 16385**2 - 1, 8193**2 - 1, 4097**2 - 1)
WORST_INT62 = ((2**30 + 1) ** 2 - 1, (2**29 + 1) ** 2 - 1, (2**25 + 1) ** 2 - 1)


# -- proof of the iteration constants --------------------------------------------------------------
def test_iteration_constants_are_proven_and_tight():
    bounds = {b: newton_step_bound(b) for b in range(1, 63)}
    assert max(bounds[b] for b in range(1, 32)) == ITERATIONS_INT32  # n < 2^31
    assert max(bounds.values()) == ITERATIONS  # n < 2^62
    assert algorithm4(0) == (0, 1) and 1 <= ITERATIONS_INT32
    # The bound is attained: these inputs really need every step.
    for n in WORST_INT32:
        assert n < 2**31
        root, steps = algorithm4(n)
        assert root == math.isqrt(n) and steps == ITERATIONS_INT32 == bounds[n.bit_length()]
    for n in WORST_INT62:
        assert n < 2**62
        root, steps = algorithm4(n)
        assert root == math.isqrt(n) and steps == ITERATIONS == bounds[n.bit_length()]


def test_one_iteration_fewer_fails():
    int32_n = np.array(WORST_INT32, dtype=np.int64)
    want32 = np.array([math.isqrt(int(v)) for v in int32_n])
    np.testing.assert_array_equal(isqrt_np(int32_n, iterations=ITERATIONS_INT32), want32)
    assert (isqrt_np(int32_n, iterations=ITERATIONS_INT32 - 1) != want32).all()
    n62 = np.array(WORST_INT62, dtype=np.int64)
    want62 = np.array([math.isqrt(int(v)) for v in n62])
    np.testing.assert_array_equal(isqrt_np(n62, iterations=ITERATIONS), want62)
    assert (isqrt_np(n62, iterations=ITERATIONS - 1) != want62).all()
    # The same through TVM.
    run5, _ = build_te(lambda t: isqrt_te(t, ITERATIONS_INT32), [int32_n])
    run4, _ = build_te(lambda t: isqrt_te(t, ITERATIONS_INT32 - 1), [int32_n])
    np.testing.assert_array_equal(run5(int32_n), want32)
    assert (run4(int32_n) != want32).all()


def test_per_bit_length_sweep_of_worst_candidates():
    """For every bit length, the worst candidates (bottom of the range, q^2 - 1 and q^2 around it,
    the top of the range) take at most the proven number of steps, and Algorithm 4 is exact."""
    for b in range(1, 63):
        lo, hi = 1 << (b - 1), min((1 << b) - 1, MAX_INPUT)
        r = math.isqrt(lo)
        cands = {lo, lo + 1, lo + 2, hi, hi - 1, (lo + hi) // 2}
        for q in range(max(r - 2, 1), r + 400):
            cands.update({q * q - 1, q * q, q * q + 1})
        rt = math.isqrt(hi)
        for q in range(max(rt - 50, 1), rt + 2):
            cands.update({q * q - 1, q * q, q * q + 1})
        cands = sorted(n for n in cands if lo <= n <= hi)
        bound = newton_step_bound(b)
        worst = 0
        for n in cands:
            root, steps = algorithm4(n)
            assert root == math.isqrt(n), n
            worst = max(worst, steps)
        assert worst <= bound
        if b >= 6:
            assert worst == bound  # the bound is attained in every bit length past the first few
        arr = np.array(cands, dtype=np.int64)
        np.testing.assert_array_equal(isqrt_np(arr, iterations=bound), [math.isqrt(int(v)) for v in cands])


def test_exhaustive_small_n_step_counts():
    """Every n < 2^21: the number of min-steps to reach isqrt(n) is within the bit-length bound."""
    n = np.arange(0, 1 << 21, dtype=np.int64)
    q = np.floor(np.sqrt(n.astype(np.float64))).astype(np.int64)  # exact below 2^52 after the fix-ups
    q = np.where(q * q > n, q - 1, q)
    q = np.where((q + 1) * (q + 1) <= n, q + 1, q)
    needed = np.full(n.shape, -1, dtype=np.int64)
    for it in range(0, ITERATIONS + 1):
        hit = (isqrt_np(n, iterations=it) == q) & (needed < 0)
        needed[hit] = it
    assert (needed >= 0).all()
    bits = np.zeros_like(n)
    bits[1:] = np.floor(np.log2(n[1:].astype(np.float64))).astype(np.int64) + 1
    bound = np.array([1] + [newton_step_bound(b) for b in range(1, 22)])
    assert (needed <= bound[bits]).all()
    # A handful of exact Algorithm 4 counts agree with the vectorised count.
    for v in (0, 1, 2, 3, 80, 4224, 16640, 66048, 263168, 1050624, 2**21 - 1):
        assert algorithm4(v)[1] == needed[v]


# -- exactness vs math.isqrt ------------------------------------------------------------------------
def int32_edges() -> list[int]:
    vals = {0, 1, 2, 3, INT32_MAX, INT32_MAX - 1}
    for k in range(0, 32):
        vals.update({2**k - 1, 2**k, 2**k + 1})
    qs = set(range(0, 600))
    for k in range(0, 16):
        qs.update(range(max(2**k - 3, 0), 2**k + 4))
    qs.update(range(46330, 46342))  # 46340^2 < 2^31 < 46341^2
    qs.update(np.random.default_rng(0).integers(0, 46341, size=300).tolist())
    for q in qs:
        vals.update({q * q - 1, q * q, q * q + 1})
    vals.update(WORST_INT32)
    return sorted(v for v in vals if 0 <= v <= INT32_MAX)


def int62_edges() -> list[int]:
    vals = set(int32_edges())
    for k in range(0, 63):
        vals.update({2**k - 1, 2**k, 2**k + 1})
    rng = np.random.default_rng(1)
    qs = {2**31 - 1, 2**31 - 2, 3037000499, 2**30, 2**30 + 1, 2**30 - 1}
    for k in range(16, 32):
        qs.update({2**k - 1, 2**k, 2**k + 1})
    qs.update(rng.integers(0, 2**31, size=300).tolist())
    for q in qs:
        vals.update({q * q - 1, q * q, q * q + 1})
    vals.update(WORST_INT62)
    return sorted(v for v in vals if 0 <= v <= MAX_INPUT)


@pytest.fixture(scope="module")
def isqrt_kernels():
    """Compiled kernels for int32 and int64 inputs (compiled once, run on many arrays)."""
    run64, _ = build_te(isqrt_te, [np.zeros(7, dtype=np.int64)])
    run32, _ = build_te(isqrt_te, [np.zeros(7, dtype=np.int32)])
    run32_5, _ = build_te(lambda t: isqrt_te(t, ITERATIONS_INT32), [np.zeros(7, dtype=np.int32)])
    return run64, run32, run32_5


def _run_chunks(run, arr: np.ndarray) -> np.ndarray:
    pad = (-len(arr)) % 7
    padded = np.concatenate([arr, np.zeros(pad, dtype=arr.dtype)]).reshape(-1, 7)
    return np.concatenate([run(row) for row in padded])[: len(arr)]


def _run_flat(run_builder, arr):
    run, _ = build_te(run_builder, [arr])
    return run(arr)


def test_int32_edges_numpy_and_tvm():
    vals = int32_edges()
    want = np.array([math.isqrt(v) for v in vals], dtype=np.int64)
    x32 = np.array(vals, dtype=np.int32)
    np.testing.assert_array_equal(isqrt_np(x32), want)
    np.testing.assert_array_equal(isqrt_np(x32, iterations=ITERATIONS_INT32), want)
    np.testing.assert_array_equal(_run_flat(isqrt_te, x32), want)
    np.testing.assert_array_equal(_run_flat(lambda t: isqrt_te(t, ITERATIONS_INT32), x32), want)
    np.testing.assert_array_equal(_run_flat(isqrt_te, x32.astype(np.int64)), want)


def test_int62_edges_numpy_and_tvm():
    vals = int62_edges()
    want = np.array([math.isqrt(v) for v in vals], dtype=np.int64)
    x = np.array(vals, dtype=np.int64)
    np.testing.assert_array_equal(isqrt_np(x), want)
    out = _run_flat(isqrt_te, x)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, want)


def test_narrow_numpy_dtypes():
    for dt in (np.int8, np.int16):
        info = np.iinfo(dt)
        x = np.arange(0, info.max + 1, dtype=dt)
        np.testing.assert_array_equal(isqrt_np(x), [math.isqrt(int(v)) for v in x])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, MAX_INPUT), min_size=1, max_size=64))
def test_random_up_to_2_pow_62_numpy(vals):
    x = np.array(vals, dtype=np.int64)
    np.testing.assert_array_equal(isqrt_np(x), [math.isqrt(v) for v in vals])


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.one_of(st.integers(0, MAX_INPUT), st.integers(0, 2**31 - 1).map(lambda q: q * q - 1 if q else 0)),
             min_size=7, max_size=7),
    st.lists(st.integers(0, INT32_MAX), min_size=7, max_size=7),
)
def test_random_tvm_with_compiled_kernels(isqrt_kernels, vals64, vals32):
    run64, run32, run32_5 = isqrt_kernels
    x64 = np.array(vals64, dtype=np.int64)
    np.testing.assert_array_equal(run64(x64), [math.isqrt(v) for v in vals64])
    x32 = np.array(vals32, dtype=np.int32)
    want32 = [math.isqrt(v) for v in vals32]
    np.testing.assert_array_equal(run32(x32), want32)
    np.testing.assert_array_equal(run32_5(x32), want32)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    dtype=st.sampled_from(["int32", "int64"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_tvm_random_shapes(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    hi = INT32_MAX if dtype == "int32" else MAX_INPUT
    bits = rng.integers(0, 32 if dtype == "int32" else 63, size=shape)
    x = (rng.integers(0, 2**62, size=shape, dtype=np.int64) >> (62 - bits)).clip(0, hi).astype(dtype)
    want = np.vectorize(lambda v: math.isqrt(int(v)), otypes=[np.int64])(x)
    np.testing.assert_array_equal(isqrt_np(x), want)
    np.testing.assert_array_equal(_run_flat(isqrt_te, x), want)


# -- bad input --------------------------------------------------------------------------------------
def test_out_of_domain_values_raise():
    with pytest.raises(ValueError, match="0 <= n < 2\\^62"):
        isqrt_np(np.array([4, -1], dtype=np.int64))
    with pytest.raises(ValueError, match="0 <= n < 2\\^62"):
        isqrt_np(np.array([2**62], dtype=np.int64))
    with pytest.raises(ValueError, match="0 <= n < 2\\^62"):
        isqrt_np(np.array([-(2**31)], dtype=np.int32))
    assert isqrt_np(np.array([], dtype=np.int64)).shape == (0,)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint64, np.uint32, np.bool_])
def test_bad_numpy_dtype(dtype):
    with pytest.raises(ValueError, match="n must have dtype"):
        isqrt_np(np.ones(3, dtype=dtype))


@pytest.mark.parametrize("dtype", ["float32", "float64", "uint32", "uint64", "int16"])
def test_bad_te_dtype(dtype):
    from tvm import te

    with pytest.raises(ValueError, match="n must have dtype"):
        isqrt_te(te.placeholder((3,), dtype=dtype, name="n"))
