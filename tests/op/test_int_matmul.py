"""Integer matmuls: ``linear`` (int8/uint8 x int8 -> int32, + int32 bias) and ``batch_matmul``.

* The compiled TVM kernels are bit-identical to the numpy reference (hypothesis over shapes and
  values, fixed seeds) and both equal a pure-Python big-int dot product.
* Extreme magnitudes: the largest K the int32 accumulator proof accepts, filled with the worst
  signs (-128 * -128, 255 * -128) and |bias| = 2^30, match big ints exactly (no wraparound);
  one more K raises.
* Bad input (dtypes, shapes, symbolic K without a bound) raises ``ValueError`` naming it.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ibert_tvm.op import int_matmul as mm
from ibert_tvm.op.testing import build_te, run_te

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


# -- independent big-int references --------------------------------------------------------------
def ref_linear(x: np.ndarray, w: np.ndarray, bias=None) -> np.ndarray:
    """y[..., n] = sum_k x[..., k] w[n, k] + bias[n], Python ints; asserts the result fits int32."""
    xs = x.reshape(-1, x.shape[-1]).tolist()
    ws = w.tolist()
    bs = [0] * w.shape[0] if bias is None else [int(b) for b in bias]
    out = [[sum(a * b for a, b in zip(row, wn)) + bn for wn, bn in zip(ws, bs)] for row in xs]
    for row in out:
        for v in row:
            assert INT32_MIN <= v <= INT32_MAX, "test case outside the int32 contract"
    return np.array(out, dtype=np.int64).reshape(*x.shape[:-1], w.shape[0])


def ref_batch_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lead = a.shape[:-2]
    a2 = a.reshape(-1, *a.shape[-2:])
    b2 = b.reshape(-1, *b.shape[-2:])
    out = np.stack([ref_linear(a2[i], b2[i]) for i in range(a2.shape[0])])
    return out.reshape(*lead, a.shape[-2], b.shape[-2])


def rand_x(rng, shape, dtype):
    if dtype == "uint8":
        return rng.integers(0, 256, size=shape).astype(np.uint8)
    return rng.integers(-128, 128, size=shape).astype(np.int8)


def with_edges(arr: np.ndarray, rng) -> np.ndarray:
    """Overwrite a random fraction of entries with the dtype's extremes and zero."""
    dtype = arr.dtype
    info = np.iinfo(dtype)
    picks = rng.random(arr.shape)
    arr = np.where(picks < 0.15, info.min, arr)
    arr = np.where((picks >= 0.15) & (picks < 0.3), info.max, arr)
    arr = np.where((picks >= 0.3) & (picks < 0.35), 0, arr)
    return arr.astype(dtype)


# -- bit-exactness: TVM == numpy == big ints -----------------------------------------------------
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lead=st.lists(st.integers(1, 5), min_size=0, max_size=2),
    k=st.integers(1, 200),
    n=st.integers(1, 24),
    x_dtype=st.sampled_from(["int8", "uint8"]),
    use_bias=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_linear_te_matches_numpy_and_bigint(lead, k, n, x_dtype, use_bias, seed):
    rng = np.random.default_rng(seed)
    x = with_edges(rand_x(rng, (*lead, k), x_dtype), rng)
    w = with_edges(rand_x(rng, (n, k), "int8"), rng)
    args = [x, w]
    bias = None
    if use_bias:
        bias = rng.integers(-(2**30), 2**30, size=n, endpoint=True).astype(np.int32)
        bias[0] = rng.choice([-(2**30), 2**30])
        args.append(bias)
    want = ref_linear(x, w, bias)
    got_np = mm.linear_np(*args)
    assert got_np.dtype == np.int32 and got_np.shape == (*lead, n)
    np.testing.assert_array_equal(got_np.astype(np.int64), want)
    np.testing.assert_array_equal(run_te(mm.linear_te, *args), got_np)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    m=st.integers(1, 20),
    n=st.integers(1, 20),
    k=st.integers(1, 160),
    a_dtype=st.sampled_from(["int8", "uint8"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_batch_matmul_te_matches_numpy_and_bigint(batch, m, n, k, a_dtype, seed):
    rng = np.random.default_rng(seed)
    a = with_edges(rand_x(rng, (*batch, m, k), a_dtype), rng)
    b = with_edges(rand_x(rng, (*batch, n, k), "int8"), rng)
    want = ref_batch_matmul(a, b)
    got_np = mm.batch_matmul_np(a, b)
    assert got_np.dtype == np.int32 and got_np.shape == (*batch, m, n)
    np.testing.assert_array_equal(got_np.astype(np.int64), want)
    np.testing.assert_array_equal(run_te(mm.batch_matmul_te, a, b), got_np)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fixed_seeds_bert_shapes(seed):
    """A BERT-ish projection (seq 32, hidden 768 -> 96 outputs) and a Q K^T head."""
    rng = np.random.default_rng(seed)
    x = rand_x(rng, (2, 32, 768), "int8")
    w = rand_x(rng, (96, 768), "int8")
    bias = rng.integers(-(2**30), 2**30, size=96).astype(np.int32)
    got = mm.linear_np(x, w, bias)
    np.testing.assert_array_equal(got.astype(np.int64), ref_linear(x, w, bias))
    np.testing.assert_array_equal(run_te(mm.linear_te, x, w, bias), got)
    q = rand_x(rng, (2, 4, 32, 64), "int8")
    kk = rand_x(rng, (2, 4, 32, 64), "int8")
    got = mm.batch_matmul_np(q, kk)
    np.testing.assert_array_equal(got.astype(np.int64), ref_batch_matmul(q, kk))
    np.testing.assert_array_equal(run_te(mm.batch_matmul_te, q, kk), got)


def test_batch_matmul_symbolic_k():
    """P V sums over a symbolic sequence length bounded by max_k; one kernel serves several L."""
    import tvm
    from tvm import te

    L = te.var("L", dtype="int64")
    a = te.placeholder((2, 8, L), dtype="uint8", name="p")
    b = te.placeholder((2, 16, L), dtype="int8", name="vt")
    out = mm.batch_matmul_te(a, b, max_k=512)
    func = te.create_prim_func([a, b, out]).with_attr("global_symbol", "pv")
    lib = tvm.compile(func, target=tvm.target.Target({"kind": "llvm", "num-cores": 2}))
    rng = np.random.default_rng(7)
    for length in (1, 17, 512):
        pa = with_edges(rand_x(rng, (2, 8, length), "uint8"), rng)
        vb = with_edges(rand_x(rng, (2, 16, length), "int8"), rng)
        res = tvm.runtime.tensor(np.zeros((2, 8, 16), dtype="int32"))
        lib["pv"](tvm.runtime.tensor(pa), tvm.runtime.tensor(vb), res)
        np.testing.assert_array_equal(res.numpy().astype(np.int64), ref_batch_matmul(pa, vb))


# -- extreme magnitudes: no silent wraparound -------------------------------------------------------
def _dot_const(k: int, xv: int, wv: int, bias: int) -> int:
    return k * xv * wv + bias


@pytest.mark.parametrize(
    "x_dtype,xv,wv,bias",
    [
        ("int8", -128, -128, 2**30),  # the largest positive sum: 65535 * 16384 + 2^30 = 2^31 - 16384
        ("int8", -128, 127, -(2**30)),  # the most negative
        ("int8", 127, -128, -(2**30)),
        ("int8", 127, 127, 2**30),
    ],
)
def test_linear_largest_k_with_bias(x_dtype, xv, wv, bias):
    k = 65535  # the largest K the accumulator proof accepts with a bias
    x = np.full((2, k), xv, dtype=x_dtype)
    x[1, ::2] = 0
    w = np.full((3, k), wv, dtype=np.int8)
    w[2] = 0
    b = np.full(3, bias, dtype=np.int32)
    want = ref_linear(x, w, b)
    assert want[0, 0] == _dot_const(k, xv, wv, bias)
    got_np = mm.linear_np(x, w, b)
    np.testing.assert_array_equal(got_np.astype(np.int64), want)
    np.testing.assert_array_equal(run_te(mm.linear_te, x, w, b), got_np)


def test_linear_uint8_largest_k():
    k = 32896  # the largest: 32896 * 255 * 128 + 2^30 = 2^31 - 16384
    x = np.full((1, k), 255, dtype=np.uint8)
    w = np.stack([np.full(k, -128, dtype=np.int8), np.full(k, 127, dtype=np.int8)])
    b = np.array([-(2**30), 2**30], dtype=np.int32)
    want = ref_linear(x, w, b)
    assert want[0, 0] == -(k * 255 * 128) - 2**30 and want[0, 1] == k * 255 * 127 + 2**30
    with pytest.raises(ValueError, match="int32 accumulator"):
        mm.linear_np(np.zeros((1, k + 1), np.uint8), np.zeros((2, k + 1), np.int8), b)
    got_np = mm.linear_np(x, w, b)
    np.testing.assert_array_equal(got_np.astype(np.int64), want)
    np.testing.assert_array_equal(run_te(mm.linear_te, x, w, b), got_np)


def test_batch_matmul_largest_k():
    k = 131071  # no bias: 131071 * 16384 = 2^31 - 16384
    a = np.full((1, 2, k), -128, dtype=np.int8)
    b = np.full((1, 1, k), -128, dtype=np.int8)
    a[0, 1] = 127
    want = ref_batch_matmul(a, b)
    assert want[0, 0, 0] == 2**31 - 16384
    got_np = mm.batch_matmul_np(a, b)
    np.testing.assert_array_equal(got_np.astype(np.int64), want)
    np.testing.assert_array_equal(run_te(mm.batch_matmul_te, a, b), got_np)


@pytest.mark.parametrize(
    "k,x_dtype,bias_bound,ok",
    [
        (65535, "int8", 2**30, True),
        (65536, "int8", 2**30, False),
        (131071, "int8", 0, True),
        (131072, "int8", 0, False),
        (32896, "uint8", 2**30, True),
        (32897, "uint8", 2**30, False),
        (65793, "uint8", 0, True),
        (65794, "uint8", 0, False),
    ],
)
def test_accumulator_bound_is_exact(k, x_dtype, bias_bound, ok):
    mag = {"int8": 128, "uint8": 255}[x_dtype]
    assert (k * mag * 128 + bias_bound <= INT32_MAX) == ok
    if ok:
        mm.check_accumulator(k, x_dtype, "int8", bias_bound)
    else:
        with pytest.raises(ValueError, match=rf"K={k}.*2\^31-1"):
            mm.check_accumulator(k, x_dtype, "int8", bias_bound)


def test_overflowing_k_raises_in_every_entry_point():
    from tvm import te

    k = 65536
    x = np.zeros((1, k), dtype=np.int8)
    w = np.zeros((2, k), dtype=np.int8)
    b = np.zeros(2, dtype=np.int32)
    with pytest.raises(ValueError, match="int32 accumulator"):
        mm.linear_np(x, w, b)
    mm.linear_np(x, w)  # without a bias K = 65536 still fits
    xp = te.placeholder((1, k), dtype="int8", name="x")
    wp = te.placeholder((2, k), dtype="int8", name="w")
    bp = te.placeholder((2,), dtype="int32", name="b")
    with pytest.raises(ValueError, match="int32 accumulator"):
        mm.linear_te(xp, wp, bp)
    k2 = 131072
    with pytest.raises(ValueError, match="int32 accumulator"):
        mm.linear_np(np.zeros((1, k2), np.int8), np.zeros((1, k2), np.int8))
    with pytest.raises(ValueError, match="int32 accumulator"):
        mm.batch_matmul_np(np.zeros((1, 1, k2), np.int8), np.zeros((1, 1, k2), np.int8))
    a = te.placeholder((1, 1, k2), dtype="int8", name="a")
    with pytest.raises(ValueError, match="int32 accumulator"):
        mm.batch_matmul_te(a, te.placeholder((1, 1, k2), dtype="int8", name="b"))
    L = te.var("L")
    pa = te.placeholder((1, 4, L), dtype="uint8", name="p")
    vb = te.placeholder((1, 4, L), dtype="int8", name="v")
    with pytest.raises(ValueError, match="max_k"):
        mm.batch_matmul_te(pa, vb)
    with pytest.raises(ValueError, match="int32 accumulator"):
        mm.batch_matmul_te(pa, vb, max_k=70000)
    mm.batch_matmul_te(pa, vb, max_k=65793)


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.int32, np.int64, np.uint16])
def test_bad_x_dtype(dtype):
    w = np.zeros((2, 4), np.int8)
    with pytest.raises(ValueError, match="x must have dtype"):
        mm.linear_np(np.zeros((3, 4), dtype=dtype), w)
    with pytest.raises(ValueError, match="a must have dtype"):
        mm.batch_matmul_np(np.zeros((1, 3, 4), dtype=dtype), np.zeros((1, 2, 4), np.int8))


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int16, np.int32])
def test_bad_w_dtype(dtype):
    with pytest.raises(ValueError, match="w must have dtype"):
        mm.linear_np(np.zeros((3, 4), np.int8), np.zeros((2, 4), dtype=dtype))
    with pytest.raises(ValueError, match="b must have dtype"):
        mm.batch_matmul_np(np.zeros((1, 3, 4), np.int8), np.zeros((1, 2, 4), dtype=dtype))


@pytest.mark.parametrize("dtype", [np.int64, np.int16, np.float32, np.uint32])
def test_bad_bias_dtype(dtype):
    with pytest.raises(ValueError, match="bias must have dtype"):
        mm.linear_np(np.zeros((3, 4), np.int8), np.zeros((2, 4), np.int8), np.zeros(2, dtype=dtype))


def test_bias_out_of_range():
    with pytest.raises(ValueError, match="bias"):
        mm.linear_np(np.zeros((1, 4), np.int8), np.zeros((2, 4), np.int8), np.array([0, 2**30 + 1], np.int32))
    with pytest.raises(ValueError, match="bias"):
        mm.linear_np(np.zeros((1, 4), np.int8), np.zeros((2, 4), np.int8), np.array([-(2**31), 0], np.int32))


@pytest.mark.parametrize(
    "xd,wd,bd,arg",
    [
        ("float32", "int8", "int32", "x"),
        ("int32", "int8", "int32", "x"),
        ("int8", "float32", "int32", "w"),
        ("int8", "uint8", "int32", "w"),
        ("int8", "int8", "float32", "bias"),
        ("int8", "int8", "int64", "bias"),
    ],
)
def test_bad_te_dtypes_linear(xd, wd, bd, arg):
    from tvm import te

    x = te.placeholder((3, 4), dtype=xd, name="x")
    w = te.placeholder((2, 4), dtype=wd, name="w")
    b = te.placeholder((2,), dtype=bd, name="b")
    with pytest.raises(ValueError, match=f"{arg} must have dtype"):
        mm.linear_te(x, w, b)


@pytest.mark.parametrize("ad,bd,arg", [("float16", "int8", "a"), ("int16", "int8", "a"), ("int8", "float32", "b"), ("uint8", "uint8", "b")])
def test_bad_te_dtypes_batch_matmul(ad, bd, arg):
    from tvm import te

    a = te.placeholder((1, 3, 4), dtype=ad, name="a")
    b = te.placeholder((1, 2, 4), dtype=bd, name="b")
    with pytest.raises(ValueError, match=f"{arg} must have dtype"):
        mm.batch_matmul_te(a, b)


def test_shape_mismatches_raise():
    """Mismatched K must raise, not read out of bounds (the TE kernels used to compile and return
    garbage for these)."""
    from tvm import te

    with pytest.raises(ValueError, match="K"):
        mm.linear_np(np.zeros((2, 8), np.int8), np.zeros((3, 16), np.int8))
    with pytest.raises(ValueError, match="bias"):
        mm.linear_np(np.zeros((2, 8), np.int8), np.zeros((3, 8), np.int8), np.zeros(1, np.int32))
    with pytest.raises(ValueError, match="w must be"):
        mm.linear_np(np.zeros((2, 8), np.int8), np.zeros(8, np.int8))
    with pytest.raises(ValueError, match="K"):
        mm.batch_matmul_np(np.zeros((1, 2, 8), np.int8), np.zeros((1, 3, 16), np.int8))
    with pytest.raises(ValueError, match="share K"):
        mm.linear_te(te.placeholder((2, 8), "int8", "x"), te.placeholder((3, 16), "int8", "w"))
    with pytest.raises(ValueError, match="bias"):
        mm.linear_te(
            te.placeholder((2, 8), "int8", "x"), te.placeholder((3, 8), "int8", "w"), te.placeholder((4,), "int32", "b")
        )
    with pytest.raises(ValueError, match="share K"):
        mm.batch_matmul_te(te.placeholder((1, 2, 8), "int8", "a"), te.placeholder((1, 3, 16), "int8", "b"))
    with pytest.raises(ValueError, match="batch"):
        mm.batch_matmul_te(te.placeholder((2, 2, 8), "int8", "a"), te.placeholder((3, 3, 8), "int8", "b"))


def test_te_kernel_is_integer_only():
    """The compiled linear kernel's TIR has no float type anywhere."""
    x = np.zeros((2, 16), np.int8)
    w = np.zeros((4, 16), np.int8)
    b = np.zeros(4, np.int32)
    _, func = build_te(mm.linear_te, [x, w, b])
    assert "float" not in func.script()
