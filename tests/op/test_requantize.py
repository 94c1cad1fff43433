"""Dyadic requantization: ``dyadic_from_ratio`` and the ``Requantize`` plan.

* ``dyadic_from_ratio`` against an independent brute force (exact ``Fraction`` arithmetic):
  ``m / 2^s`` is the closest p-bit dyadic to the ratio, ``m < 2^p`` always, including the
  mantissa carry to 2^31 (``m`` must become 2^30 and ``s`` drop by one).
* The numpy reference and the compiled TVM kernel against a pure-Python big-int reference that
  shares no code with the op (so any int64 wraparound in either shows up), over random and
  extreme inputs, per-tensor and per-channel.
* Bad input: scales, bit widths, dtypes, shapes raise ``ValueError`` naming the argument.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ibert_tvm.op.requantize import Dyadic, Requantize, dyadic_from_ratio, mantissa_bits
from ibert_tvm.op.testing import run_te

INT64_MAX = (1 << 63) - 1


# -- independent big-int references ------------------------------------------------------------
def ref_mantissa_bits(in_bits: int) -> int:
    """Widest p <= 31 such that |x| * (2^p - 1) + 2^61 cannot wrap int64 for |x| <= 2^(in_bits-1)."""
    bound = 1 << (in_bits - 1)
    p = 31
    while p > 0 and bound * ((1 << p) - 1) + (1 << 61) > INT64_MAX:
        p -= 1
    return p


def ref_closest_dyadic(ratio: float, p: int) -> Fraction:
    """Brute force: among all m' / 2^s' with 0 <= m' < 2^p and 1 <= s' <= 62, the value closest to
    ``ratio`` (ties: the larger value, i.e. round half up)."""
    r = Fraction(ratio)
    best = None
    for s in range(1, 63):
        scaled = r * (1 << s)
        lo = scaled.__floor__()
        for m in (lo, lo + 1):
            if not 0 <= m < (1 << p):
                continue
            v = Fraction(m, 1 << s)
            key = (abs(v - r), -v)
            if best is None or key < best[0]:
                best = (key, v)
        if lo >= (1 << p):  # finer shifts only overflow the mantissa further
            break
    return best[1]


def ref_requantize_scalar(x: int, value: Fraction, out_bits: int) -> int:
    """y = sat(floor(x * value + 1/2)) with Python ints/Fractions (no width limit)."""
    y = (Fraction(x) * value + Fraction(1, 2)).__floor__()
    lo, hi = -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1
    return min(max(y, lo), hi)


def ref_requantize(x: np.ndarray, values, out_bits: int) -> np.ndarray:
    """Elementwise big-int reference; ``values`` is one Fraction or a list (per channel)."""
    flat = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
    out = np.empty(flat.shape, dtype=object)
    for i in range(flat.shape[0]):
        for j in range(flat.shape[1]):
            v = values[j] if isinstance(values, list) else values
            out[i, j] = ref_requantize_scalar(int(flat[i, j]), v, out_bits)
    return out.reshape(x.shape)


def plan_values(plan: Requantize):
    if plan.per_channel:
        return [Fraction(int(m), 1 << int(s)) for m, s in zip(plan.m, plan.s)]
    return Fraction(plan.m, 1 << plan.s)


def run_plan_te(plan: Requantize, x: np.ndarray) -> np.ndarray:
    if plan.per_channel:
        return run_te(lambda a, m, s: plan.te(a, m, s), x, plan.m, plan.s)
    return run_te(plan.te, x)


def check_all(plan: Requantize, x: np.ndarray, ratio) -> None:
    """numpy == TVM == big-int reference (with independently derived dyadic values)."""
    p = ref_mantissa_bits(plan.in_bits)
    if plan.per_channel:
        want_vals = [ref_closest_dyadic(float(r), p) for r in np.asarray(ratio, dtype=np.float64)]
    else:
        want_vals = ref_closest_dyadic(float(ratio), p)
    assert plan_values(plan) == want_vals
    ref = ref_requantize(x, want_vals, plan.out_bits)
    got_np = plan.numpy(x)
    assert got_np.dtype.name == plan.out_dtype
    np.testing.assert_array_equal(got_np.astype(object), ref)
    got_te = run_plan_te(plan, x)
    assert got_te.dtype.name == plan.out_dtype
    np.testing.assert_array_equal(got_te, got_np)


def in_dtype_for(in_bits: int) -> str:
    for w in (8, 16, 32, 64):
        if in_bits <= w:
            return f"int{w}"
    raise AssertionError


def random_input(rng, shape, in_bits: int, dtype: str) -> np.ndarray:
    lo, hi = -(1 << (in_bits - 1)), (1 << (in_bits - 1)) - 1
    x = rng.integers(lo, hi, size=shape, endpoint=True, dtype=np.int64)
    # Mix in small values too (where rounding ties live) and the domain edges.
    small = rng.integers(-300, 301, size=shape, dtype=np.int64)
    x = np.where(rng.random(shape) < 0.3, np.clip(small, lo, hi), x)
    edges = [lo, hi, 0, 1, -1, lo + 1, hi - 1]
    flat = x.reshape(-1)
    k = min(len(edges), flat.size)
    flat[:k] = edges[:k]
    return flat.reshape(shape).astype(dtype)


# -- dyadic_from_ratio --------------------------------------------------------------------------
@pytest.mark.parametrize("k", range(-31, 30))
@pytest.mark.parametrize("num", [Fraction(2**32 - 1, 2), Fraction(2**33 - 1, 4)])
def test_mantissa_carry_to_2_pow_31(k, num):
    """ratio = (2^31 - 1/2) / 2^31 * 2^k (and 2^31 - 1/4): the 31-bit mantissa rounds up to 2^31."""
    ratio = float(num / (1 << 31) * Fraction(2) ** k)
    assert Fraction(ratio) == num / (1 << 31) * Fraction(2) ** k  # exactly representable
    d = dyadic_from_ratio(ratio)
    assert d.m == 1 << 30 and d.s == 30 - k
    assert d.m < 1 << 31
    assert d.value == Fraction(2) ** k
    assert d.value == ref_closest_dyadic(ratio, 31)
    # Half a unit of the 31-bit grid: the closest possible.
    assert abs(d.value - Fraction(ratio)) <= Fraction(1, 1 << (31 - k + 1))


@pytest.mark.parametrize("k", [-20, 0, 29])
def test_mantissa_just_below_carry(k):
    """(2^31 - 3/4) / 2^31 * 2^k rounds to 2^31 - 1: no carry."""
    ratio = float(Fraction(2**33 - 3, 4) / (1 << 31) * Fraction(2) ** k)
    d = dyadic_from_ratio(ratio)
    assert d.m == (1 << 31) - 1 and d.s == 31 - k
    assert d.value == ref_closest_dyadic(ratio, 31)


def test_mantissa_carry_into_shift_zero_raises():
    """k = 30: the carry would need s = 0 (a ratio of ~2^30 is the documented maximum)."""
    ratio = float(Fraction(2**32 - 1, 2) / (1 << 31) * (1 << 30))
    with pytest.raises(ValueError, match="ratio.*too large"):
        dyadic_from_ratio(ratio)
    largest = np.nextafter(float((1 << 30) - Fraction(1, 4)), 0.0)
    d = dyadic_from_ratio(largest)
    assert d.s == 1 and d.m == (1 << 31) - 1


@pytest.mark.parametrize("in_bits", range(2, 63))
def test_mantissa_bits_no_int64_wrap(in_bits):
    bound = 1 << (in_bits - 1)
    p = mantissa_bits(bound)
    assert p == ref_mantissa_bits(in_bits)
    assert 1 <= p <= 31
    assert bound * ((1 << p) - 1) + (1 << 61) <= INT64_MAX
    if p < 31:
        assert bound * ((1 << (p + 1)) - 1) + (1 << 61) > INT64_MAX
    if in_bits <= 32:
        assert p == 31


def _check_dyadic(ratio: float, in_bits: int, d: Dyadic) -> None:
    p = ref_mantissa_bits(in_bits)
    assert isinstance(d.m, int) and isinstance(d.s, int)
    assert 0 <= d.m < (1 << p)
    assert 1 <= d.s <= 62
    assert d.value == ref_closest_dyadic(ratio, p)
    r = Fraction(ratio)
    if d.s < 62:  # not flushed: a normalised p-bit mantissa, relative error <= 2^-p
        assert d.m >= 1 << (p - 1)
        assert abs(d.value - r) <= r / (1 << p)
    assert abs(d.value - r) <= Fraction(1, 1 << (d.s + 1))


@settings(max_examples=300, deadline=None)
@given(
    mant=st.floats(0.5, 1.0, exclude_max=True),
    exp=st.integers(-75, 31),
    in_bits=st.integers(2, 62),
)
def test_dyadic_is_closest_p_bit_value(mant, exp, in_bits):
    ratio = math.ldexp(mant, exp)
    p = ref_mantissa_bits(in_bits)
    try:
        d = dyadic_from_ratio(ratio, in_bound=1 << (in_bits - 1))
    except ValueError as err:
        assert "too large" in str(err)
        # Only ratios that would need s < 1 are refused.
        assert ratio >= (1 << (p - 1)) * (1 - 2.0 ** -(p + 1))
        return
    _check_dyadic(ratio, in_bits, d)


@pytest.mark.parametrize(
    "ratio", [1.0, 0.5, 0.75, 1 / 3, 2 / 3, 1e-3, 0.0123, 7.77, 1234.5, 2.0**-40, 2.0**-62, 2.0**-63, 1e-25, 5e-324]
)
def test_dyadic_fixed_ratios(ratio):
    _check_dyadic(ratio, 32, dyadic_from_ratio(ratio))


def test_dyadic_tiny_ratio_flushes_to_zero():
    d = dyadic_from_ratio(2.0**-64)
    assert d == Dyadic(0, 62)
    d = dyadic_from_ratio(2.0**-63)  # exactly half of 2^-62: rounds half up
    assert d == Dyadic(1, 62)


# -- Requantize: rounding and saturation semantics -----------------------------------------------
def test_round_half_up_toward_plus_infinity():
    plan = Requantize(0.5, in_bits=8, out_bits=8)
    x = np.array([-5, -3, -1, 0, 1, 3, 5], dtype=np.int8)
    want = np.array([-2, -1, 0, 0, 1, 2, 3], dtype=np.int8)  # floor(x/2 + 1/2)
    np.testing.assert_array_equal(plan.numpy(x), want)
    np.testing.assert_array_equal(run_te(plan.te, x), want)


@pytest.mark.parametrize("out_bits", [2, 3, 7, 8, 9, 15, 16, 17, 24, 31, 32])
def test_saturation_every_width(out_bits):
    plan = Requantize(1.0, in_bits=32, out_bits=out_bits)
    lo, hi = -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1
    cand = {-(2**31), 2**31 - 1, 0, lo, hi, lo - 1, hi + 1, lo + 1, hi - 1}
    vals = sorted(v for v in cand if -(2**31) <= v < 2**31)
    x = np.array(vals, dtype=np.int32)
    want = np.clip(x.astype(np.int64), lo, hi)
    np.testing.assert_array_equal(plan.numpy(x).astype(np.int64), want)
    np.testing.assert_array_equal(run_te(plan.te, x).astype(np.int64), want)
    check_all(plan, x, 1.0)


def test_out_dtype_override_holds_wider_values():
    plan = Requantize(3.0, in_bits=16, out_bits=24, out_dtype="int32")
    x = np.array([-32768, 32767, 0, 5], dtype=np.int16)
    assert plan.numpy(x).dtype == np.int32
    check_all(plan, x, 3.0)


# -- Requantize: extreme inputs vs big ints (no silent wraparound) ---------------------------------
LARGEST_RATIO_31 = float(np.nextafter(float((1 << 30) - Fraction(1, 4)), 0.0))


@pytest.mark.parametrize(
    "ratio,in_bits,out_bits",
    [
        (LARGEST_RATIO_31, 32, 32),  # the largest ratio an int32 plan accepts: x * m ~ 2^62
        (LARGEST_RATIO_31, 32, 8),
        (1.0, 32, 32),
        (float(Fraction(2**32 - 1, 2**32)), 32, 32),  # the mantissa-carry ratio, k = 0
        (2.0**-31, 32, 8),
        (2.0**-62, 32, 8),
        (1e-30, 32, 8),
        (0.7499, 62, 32),  # p = 1: the largest ratios a 62-bit input accepts
        (0.5, 62, 32),
        (0.3, 62, 16),
        (2.0**-61, 62, 32),
        (1.9, 48, 32),
        (float(2**29 - 1), 33, 32),  # p = 30 for 33-bit inputs: ratios up to ~2^29
    ],
)
def test_extremes_match_bigint(ratio, in_bits, out_bits):
    plan = Requantize(ratio, in_bits=in_bits, out_bits=out_bits)
    lo, hi = -(1 << (in_bits - 1)), (1 << (in_bits - 1)) - 1
    vals = [lo, lo + 1, lo + 2, hi, hi - 1, hi - 2, 0, 1, -1, lo // 2, hi // 2, lo // 3, hi // 3]
    x = np.array(vals, dtype=in_dtype_for(in_bits))
    check_all(plan, x, ratio)


def test_62_bit_ratio_above_limit_raises():
    with pytest.raises(ValueError, match="ratio"):
        Requantize(0.75, in_bits=62)  # rounds to m = 2 = 2^p: needs s = 0
    with pytest.raises(ValueError, match="ratio"):
        Requantize(2.0**30, in_bits=32)


def test_per_channel_extremes_match_bigint():
    ratios = np.array([LARGEST_RATIO_31, 1.0, float(Fraction(2**32 - 1, 2**32)), 2.0**-40, 1e-3, 1e-30, 0.5])
    plan = Requantize(ratios, in_bits=32, out_bits=32)
    x = np.array(
        [[-(2**31)] * 7, [2**31 - 1] * 7, [0] * 7, [1, -1, 2, -2, 3, -3, 7], [2**30, -(2**30), 12345, -99999, 2**20, 1, -1]],
        dtype=np.int32,
    )
    check_all(plan, x, ratios)


# -- Requantize: TVM == numpy == big ints on random plans -----------------------------------------
@st.composite
def requant_cases(draw):
    in_bits = draw(st.integers(2, 62))
    out_bits = draw(st.integers(2, 32))
    p = ref_mantissa_bits(in_bits)
    log2_ratio = draw(st.floats(-66.0, p - 1.5))
    per_channel = draw(st.booleans())
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 9)) for _ in range(ndim))
    dtype = draw(st.sampled_from([d for d in ("int8", "int16", "int32", "int64") if int(d[3:]) >= in_bits]))
    seed = draw(st.integers(0, 2**32 - 1))
    return in_bits, out_bits, log2_ratio, per_channel, shape, dtype, seed


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requant_cases())
def test_te_matches_numpy_and_bigint(case):
    in_bits, out_bits, log2_ratio, per_channel, shape, dtype, seed = case
    rng = np.random.default_rng(seed)
    if per_channel:
        ratio = 2.0 ** (log2_ratio + rng.uniform(-8, 0, size=shape[-1]))
    else:
        ratio = 2.0**log2_ratio
    plan = Requantize(ratio, in_bits=in_bits, out_bits=out_bits)
    x = random_input(rng, shape, in_bits, dtype)
    check_all(plan, x, ratio)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fixed_seeds_bert_like(seed):
    """int32 accumulators -> int8 activations with BERT-like per-channel ratios."""
    rng = np.random.default_rng(seed)
    c = 48
    ratios = rng.uniform(1e-5, 1e-2, size=c)
    plan = Requantize(ratios, in_bits=32, out_bits=8)
    x = rng.integers(-(2**31), 2**31, size=(3, 16, c), dtype=np.int64).astype(np.int32)
    x[0] = rng.integers(-40000, 40000, size=(16, c))
    check_all(plan, x, ratios)
    scalar = Requantize(float(ratios[0]), in_bits=32, out_bits=8)
    check_all(scalar, x, float(ratios[0]))


def test_uint8_input_accepted():
    plan = Requantize(0.37, in_bits=9, out_bits=8)
    x = np.arange(256, dtype=np.uint8)
    check_all(plan, x, 0.37)


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0.0, -1.0, -1e-9, float("nan"), float("inf"), -float("inf"), "abc", None])
def test_bad_scalar_ratio(bad):
    with pytest.raises(ValueError, match="ratio"):
        Requantize(bad)
    with pytest.raises(ValueError, match="ratio"):
        dyadic_from_ratio(bad)


@pytest.mark.parametrize("bad", [0.0, -2.0, float("nan"), float("inf")])
def test_bad_per_channel_ratio(bad):
    with pytest.raises(ValueError, match=r"ratio.*element 1"):
        Requantize([0.5, bad, 0.25])
    with pytest.raises(ValueError, match="ratio"):
        Requantize([])


@pytest.mark.parametrize("bits", [1, 0, -8, 63, 64, 2.5, True, "8", None])
def test_bad_in_bits(bits):
    with pytest.raises(ValueError, match="in_bits"):
        Requantize(0.5, in_bits=bits)


@pytest.mark.parametrize("bits", [1, 0, 33, 64, 8.0, False, "8"])
def test_bad_out_bits(bits):
    with pytest.raises(ValueError, match="out_bits"):
        Requantize(0.5, out_bits=bits)


@pytest.mark.parametrize("out_dtype,out_bits", [("uint8", 8), ("float32", 8), ("int8", 16), ("int16", 17), ("int4", 4), ("bool", 2)])
def test_bad_out_dtype(out_dtype, out_bits):
    with pytest.raises(ValueError, match="out_dtype"):
        Requantize(0.5, out_bits=out_bits, out_dtype=out_dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16, np.uint32, np.bool_])
def test_bad_numpy_dtype(dtype):
    plan = Requantize(0.5)
    with pytest.raises(ValueError, match="x must have dtype"):
        plan.numpy(np.zeros(4, dtype=dtype))


def test_input_outside_declared_domain():
    plan = Requantize(0.5, in_bits=16)
    with pytest.raises(ValueError, match="x exceeds"):
        plan.numpy(np.array([40000], dtype=np.int32))
    with pytest.raises(ValueError, match="x exceeds"):
        Requantize(0.5, in_bits=32).numpy(np.array([2**31], dtype=np.int64))


@pytest.mark.parametrize("dtype", ["float32", "float16", "uint16", "bool"])
def test_bad_te_dtype(dtype):
    from tvm import te

    plan = Requantize(0.5)
    with pytest.raises(ValueError, match="x must have dtype"):
        plan.te(te.placeholder((4,), dtype=dtype, name="x"))


def test_per_channel_te_params_checked():
    from tvm import te

    plan = Requantize([0.5, 0.25, 0.125])
    x = te.placeholder((2, 3), dtype="int32", name="x")
    m = te.placeholder((3,), dtype="int32", name="m")
    s = te.placeholder((3,), dtype="int32", name="s")
    with pytest.raises(ValueError, match="needs the m and s"):
        plan.te(x)
    with pytest.raises(ValueError, match="m must have dtype"):
        plan.te(x, te.placeholder((3,), dtype="float32", name="m"), s)
    with pytest.raises(ValueError, match="s must have dtype"):
        plan.te(x, m, te.placeholder((3,), dtype="float32", name="s"))
    with pytest.raises(ValueError, match=r"m must have shape \[3\]"):
        plan.te(x, te.placeholder((4,), dtype="int32", name="m"), s)
    with pytest.raises(ValueError, match="channels"):
        plan.te(te.placeholder((2, 2), dtype="int32", name="x"), m, s)
    with pytest.raises(ValueError, match="channels"):
        plan.numpy(np.zeros((2, 2), dtype=np.int32))
    assert set(plan.params()) == {"m", "s"} and plan.channels == 3


def test_concat_is_each_part_on_its_channels():
    """``Requantize.concat`` (the fused q/k/v linear): every channel of the concatenation gives the
    integers of its own part, per-channel and per-tensor parts alike, in numpy and in the compiled
    kernel; each part computed on its own slice is the reference."""
    rng = np.random.default_rng(3)
    parts = [Requantize(rng.uniform(1e-4, 2e-2, 5), in_bits=32, out_bits=8),
             Requantize(3.7e-3, in_bits=32, out_bits=8),  # per-tensor: (m, s) repeated on its 4 channels
             Requantize(rng.uniform(1e-5, 1e-3, 3), in_bits=32, out_bits=8)]
    channels = [5, 4, 3]
    cat = Requantize.concat(parts, channels)
    assert cat.per_channel and cat.channels == 12 and cat.m.dtype == cat.s.dtype == np.int32
    x = rng.integers(-(2**31), 2**31, (7, 12), dtype=np.int64).astype(np.int32)
    edges = np.cumsum([0, *channels])
    want = np.concatenate([p.numpy(x[:, a:b]) for p, a, b in zip(parts, edges[:-1], edges[1:])], axis=1)
    np.testing.assert_array_equal(cat.numpy(x), want)
    np.testing.assert_array_equal(run_te(lambda a, m, s: cat.te(a, m, s), x, cat.m, cat.s), want)


def test_concat_refuses_parts_that_differ():
    with pytest.raises(ValueError, match="differ"):
        Requantize.concat([Requantize([0.5, 0.25]), Requantize([0.5, 0.25], out_bits=16)], [2, 2])
    with pytest.raises(ValueError, match="3 channels, expected 2"):
        Requantize.concat([Requantize([0.5, 0.25, 0.1]), Requantize(0.5)], [2, 2])
    with pytest.raises(ValueError, match="one channel count per part"):
        Requantize.concat([Requantize(0.5)], [2, 2])


def test_int32_input_multiplies_as_32_bit_operands_on_avx512():
    """An int32 input is written ``sign_extend_32`` so that LLVM multiplies it by the int32 ``m``
    with ``vpmuldq`` (one uop per 8 lanes), not ``vpmullq``, even where the input is an int32 sum
    fused in (a linear's accumulator + bias: LLVM widens the add, and its sign-bit analysis then
    sees a 33-bit value); the integers are unchanged: exact against the numpy plan."""
    import tvm
    from tvm import s_tir, te, tirx

    rng = np.random.default_rng(3)
    c = 64
    rq = Requantize(rng.uniform(1e-6, 1e-3, c), in_bits=32, out_bits=8)
    n = tirx.Var("n", "int64")
    C = tirx.IntImm("int64", c)
    a = te.placeholder((n, C), "int32", name="a")
    b = te.placeholder((C,), "int32", name="b")
    m = te.placeholder((C,), "int32", name="m")
    s = te.placeholder((C,), "int32", name="s")
    acc = te.compute((n, C), lambda i, j: a[i, j] + b[j], name="acc")
    func = te.create_prim_func([a, b, m, s, rq.te(acc, m, s)]).with_attr("global_symbol", "main")
    sch = s_tir.Schedule(func)
    sch.compute_inline(sch.get_sblock("acc"))
    _, col = sch.get_loops(sch.get_sblock("requantize"))
    sch.vectorize(sch.split(col, [None, 8])[1])
    tgt = tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake"})
    lib = tvm.compile(sch.mod, target=tgt)
    asm = lib.mod.inspect_source("asm")
    assert "vpmuldq" in asm and "vpmullq" not in asm
    big = 2**30
    xs = rng.integers(-big, big, (9, c)).astype(np.int32)
    bs = rng.integers(-big, big, c).astype(np.int32)
    xs[0], xs[1] = -big, big - 1
    out = tvm.runtime.tensor(np.zeros((9, c), np.int8))
    lib["main"](*(tvm.runtime.tensor(v) for v in (xs, bs, rq.m, rq.s)), out)
    np.testing.assert_array_equal(out.numpy(), rq.numpy(xs + bs))
