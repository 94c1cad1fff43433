"""GELU as relu minus a polynomial bump (``ibert_tvm.op.int_gelu_poly.IntGELUPoly``): TE vs numpy
bit identity, an independent big-int reference, the width proofs, and the error vs float GELU.

The big-int reference recomputes every constant from the module docstring (the spec) and runs
Horner in Python integers, which never wrap: if the int64 numpy reference or the TVM kernel
wrapped anywhere, they would disagree with it. It takes only the precision ``F`` from the plan
and checks separately that ``F`` is the largest the proof allows.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ibert_tvm.op.int_gelu import IntGELU
from ibert_tvm.op.int_gelu_poly import POLYS, IntGELUPoly
from ibert_tvm.op.testing import run_te

INT64_LIMIT = 1 << 63
DEGREES = sorted(POLYS)


# -- independent reference ------------------------------------------------------------------
def spec_constants(scale: float, degree: int, in_bits: int, f: int):
    """(t_q, r, e0, shifts, d) from the spec, for precision f."""
    T, coefs = POLYS[degree]
    t_q = math.floor(T / scale)
    r = max(0, t_q.bit_length() - 20)
    s_z = scale * 2**r
    e0 = min(max(f + math.floor(math.log2(scale)), 0), 48)
    e = [e0 + math.floor(-k * math.log2(s_z)) for k in range(degree + 1)]
    c = [0.0, *coefs]
    d = [round(c[k] * s_z**k / scale * 2.0 ** e[k]) if k else 0 for k in range(degree + 1)]
    return t_q, r, e0, [e[k + 1] - e[k] for k in range(degree)], d


def bigint_gelu(q: int, consts) -> tuple[int, int]:
    """One element in Python ints. Returns (out, largest |intermediate|)."""
    t_q, r, e0, shifts, d = consts
    z = min(abs(q), t_q) >> r
    acc, worst = d[-1], abs(d[-1])
    for k in range(len(d) - 2, -1, -1):
        v = acc * z
        worst = max(worst, abs(v))
        acc = (v >> shifts[k] if shifts[k] >= 0 else v << -shifts[k]) + d[k]  # Python >> floors
        worst = max(worst, abs(acc))
    out = (max(q, 0) << e0) - acc
    return out, max(worst, abs(out), abs(max(q, 0) << e0))


def check_against_bigint(plan: IntGELUPoly, q: np.ndarray, wide: np.ndarray) -> None:
    consts = spec_constants(plan.scale, plan.degree, plan.in_bits, plan.frac_bits)
    assert (plan.t_q, plan.r, plan.e0, plan.shifts, plan.d) == consts
    assert plan.out_scale == plan.scale / 2**plan.e0
    res = [bigint_gelu(int(v), consts) for v in q.ravel()]
    worst = max((w for _, w in res), default=0)
    assert worst < INT64_LIMIT, "an intermediate exceeds int64: the plan should have refused this"
    assert worst <= max(plan.out_bound, max(plan.prod_bounds), max(plan.acc_bounds))
    assert wide.dtype == np.int64
    np.testing.assert_array_equal(wide.astype(object), np.array([o for o, _ in res], dtype=object).reshape(q.shape))


def gelu_float(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf)
    return x / 2.0 * (1.0 + erf(x / math.sqrt(2.0)))


def dtypes_holding(bits: int) -> list[str]:
    return [d for d, w in (("int8", 8), ("int16", 16), ("int32", 32)) if bits <= w]


@st.composite
def cases(draw, with_requant: bool = False):
    in_bits = draw(st.integers(2, 32))
    degree = draw(st.sampled_from(DEGREES))
    scale = draw(st.one_of(st.sampled_from([1e-9, 1e-6, 1e-4, 3.1e-4, 1e-3, 0.5, 1.0, 3.0, 1e6]),
                           st.floats(-9.0, 2.0).map(lambda e: 10.0**e)))
    kwargs = {}
    if with_requant:
        out_bits = draw(st.sampled_from([8, 8, 4, 16]))
        top = (1 << (in_bits - 1)) * scale
        rel = 10.0 ** draw(st.floats(-3.0, 1.5))
        n_ch = draw(st.sampled_from([0, 3]))
        s_q = top * rel / ((1 << (out_bits - 1)) - 1)
        kwargs = dict(out_scale_q=s_q * np.linspace(0.5, 2.0, n_ch) if n_ch else s_q, out_bits=out_bits)
    try:
        plan = IntGELUPoly(scale, in_bits=in_bits, degree=degree, **kwargs)
    except ValueError:
        assume(False)
    lo, hi = -(1 << (in_bits - 1)), (1 << (in_bits - 1)) - 1
    c = plan.t_q
    edges = [min(max(v, lo), hi) for v in (0, 1, -1, lo, hi, lo + 1, hi - 1, c, -c, c - 1, 1 - c, c + 1, -c - 1)]
    shape = (draw(st.integers(1, 4)), 3)
    n = shape[0] * 3
    vals = draw(st.lists(st.one_of(st.sampled_from(edges), st.integers(lo, hi)), min_size=n, max_size=n))
    dtype = draw(st.sampled_from(dtypes_holding(in_bits)))
    return plan, np.array(vals, dtype=dtype).reshape(shape)


# -- 1. bit identity --------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(cases())
def test_te_matches_numpy_and_bigint_wide(case):
    plan, q = case
    wide = plan.numpy(q)
    np.testing.assert_array_equal(run_te(plan.te, q), wide)
    check_against_bigint(plan, q, wide)


@settings(max_examples=20, deadline=None)
@given(cases(with_requant=True))
def test_te_q_matches_numpy_q(case):
    plan, q = case
    got = plan.numpy_q(q)
    assert got.dtype == np.dtype(plan.requant.out_dtype)
    if plan.requant.per_channel:
        p = plan.params()
        np.testing.assert_array_equal(run_te(plan.te_q, q, p["m"], p["s"]), got)
    else:
        np.testing.assert_array_equal(run_te(plan.te_q, q), got)
    # the requantization of the pre-shifted wide value, in Python ints (round half up, saturate)
    r, wide = plan.requant, plan.numpy(q)
    m = np.broadcast_to(np.atleast_1d(r.m), q.shape) if r.per_channel else np.full(q.shape, int(r.m))
    s = np.broadcast_to(np.atleast_1d(r.s), q.shape) if r.per_channel else np.full(q.shape, int(r.s))
    ref = [min(max(((int(w) >> plan.pre_shift) * int(mm) + (1 << (int(ss) - 1))) >> int(ss), r.qmin), r.qmax)
           for w, mm, ss in zip(wide.ravel(), m.ravel(), s.ravel())]
    np.testing.assert_array_equal(got.astype(np.int64).ravel(), ref)


@pytest.mark.parametrize("degree", DEGREES)
def test_every_16_bit_input_matches_bigint_and_te(degree):
    """The whole int16 domain at a realistic FFN scale: numpy == TVM == big ints, and the largest
    actual product stays under the proven bound."""
    plan = IntGELUPoly(3.1e-4, in_bits=16, degree=degree)
    q = np.arange(-32768, 32768, dtype=np.int16)
    wide = plan.numpy(q)
    np.testing.assert_array_equal(run_te(plan.te, q), wide)
    check_against_bigint(plan, q[::7], wide[::7])


# -- 2. width proofs --------------------------------------------------------------------------
def test_precision_is_the_largest_the_proof_allows():
    """F is F_MAX where it fits; where it does not, F + 1 would overflow a proven bound."""
    from ibert_tvm.op import int_gelu_poly as m

    assert IntGELUPoly(3.1e-4, in_bits=16, degree=7).frac_bits == m.F_MAX
    plan = IntGELUPoly(1.0, in_bits=32, degree=8)  # (2^31 << E_0) limits E_0 = F + log2 S to 31
    assert m.F_MIN <= plan.frac_bits < m.F_MAX
    t_q, r, e0, shifts, d = spec_constants(plan.scale, 8, 32, plan.frac_bits + 1)
    z_max, acc, prods = t_q >> r, abs(d[-1]), []
    for k in range(7, -1, -1):
        prods.append(acc * z_max)
        acc = abs(d[k]) + (-((-prods[-1]) >> shifts[k]))
    assert max(max(prods), (1 << 31 << e0) + acc) >= INT64_LIMIT


@pytest.mark.parametrize("scale, in_bits", [(1e-14, 32), (1e-13, 16)])
def test_too_fine_scales_are_refused(scale, in_bits):
    with pytest.raises(ValueError, match="too fine for the GELU polynomial"):
        IntGELUPoly(scale, in_bits=in_bits, degree=7)


def test_coarse_scales_need_no_polynomial():
    """Scales above T: t_q = 0, the bump is never evaluated (GELU = relu on that grid)."""
    plan = IntGELUPoly(10.0, in_bits=8, degree=7)
    q = np.arange(-128, 128, dtype=np.int8)
    assert plan.t_q == 0
    np.testing.assert_array_equal(plan.numpy(q) * plan.out_scale, np.maximum(q, 0) * 10.0)
    check_against_bigint(plan, q, plan.numpy(q))


# -- 3. approximation quality ------------------------------------------------------------------
@pytest.mark.parametrize("degree", DEGREES)
@pytest.mark.parametrize("scale", [1e-5, 1e-4, 3.1e-4, 1e-3, 3e-3])
def test_linf_vs_float_gelu(degree, scale, record_property):
    """Over x in [-8, 8] (the 16-bit domain where it is narrower): the fit's float error plus
    < 1e-6 from Horner's floors. i-GELU on the same grid: ~0.018."""
    from ibert_tvm.op.int_gelu_poly import LINF

    plan = IntGELUPoly(scale, in_bits=16, degree=degree)
    lim = min(32767, int(8.0 / scale))
    q = np.arange(-lim, lim + 1, dtype=np.int16)
    x = q.astype(np.float64) * scale
    exact = gelu_float(x)
    linf = float(np.abs(plan.numpy(q) * plan.out_scale - exact).max())
    record_property("gelu_poly_linf", linf)
    assert linf <= LINF[degree] * 1.005 + 1e-6, linf
    assert plan.numpy(np.array([0], np.int16))[0] == 0
    if degree == 7 and scale >= 1e-4:  # x spans at least +-3.3: i-GELU's worst point is inside
        old = IntGELU(scale, in_bits=16)
        assert float(np.abs(old.numpy(q) * old.out_scale - exact).max()) > 0.0175 > 100 * linf


def test_int8_output_within_half_lsb_of_wide():
    scale, s_q = 3.1e-4, 8.0 / 127
    plan = IntGELUPoly(scale, in_bits=16, out_scale_q=s_q, degree=7)
    q = np.arange(-32768, 32768, dtype=np.int16)
    wide = plan.numpy(q) * plan.out_scale
    got = plan.numpy_q(q) * s_q
    unsat = np.abs(wide) < 126.5 * s_q
    assert unsat.sum() > 50000
    assert np.abs(got - wide)[unsat].max() <= 0.5 * s_q * (1 + 1e-4)
    # and so within half an LSB plus the fit of float GELU
    assert np.abs(got - gelu_float(q * scale))[unsat].max() <= 0.5 * s_q + 1.3e-4


# -- 4. bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize("degree", [0, 3, 9, 7.0, "7", True])
def test_bad_degree(degree):
    with pytest.raises(ValueError, match="degree must be one of"):
        IntGELUPoly(1e-3, degree=degree)


@pytest.mark.parametrize("scale", [0.0, -1e-3, float("nan"), float("inf"), "abc", None])
def test_bad_scale(scale):
    with pytest.raises(ValueError, match="scale"):
        IntGELUPoly(scale)


@pytest.mark.parametrize("in_bits", [1, 33, 2.5, "16", True])
def test_bad_in_bits(in_bits):
    with pytest.raises(ValueError, match="in_bits"):
        IntGELUPoly(1e-3, in_bits=in_bits)


def test_bad_out_scale_q_and_missing_requant():
    from tvm import te

    with pytest.raises(ValueError, match="out_scale_q"):
        IntGELUPoly(1e-3, out_scale_q=-0.1)
    with pytest.raises(ValueError, match="out_scale_q"):
        IntGELUPoly(1e-3, out_scale_q=[0.1, float("nan")])
    plan = IntGELUPoly(1e-3)
    with pytest.raises(ValueError, match="out_scale_q"):
        plan.numpy_q(np.zeros(3, np.int16))
    with pytest.raises(ValueError, match="out_scale_q"):
        plan.te_q(te.placeholder((3,), dtype="int16", name="q"))


def test_wrong_dtypes_and_domain():
    from tvm import te

    plan = IntGELUPoly(1e-3, in_bits=8, out_scale_q=0.05)
    for dtype in (np.float32, np.int64, np.uint8):
        with pytest.raises(ValueError, match="q must have dtype"):
            plan.numpy(np.zeros(4, dtype=dtype))
    for dtype in ("float32", "int64", "uint8"):
        with pytest.raises(ValueError, match="q must have dtype"):
            plan.te(te.placeholder((4,), dtype=dtype, name="q"))
    with pytest.raises(ValueError, match="q exceeds"):
        plan.numpy(np.array([128], np.int16))
    plan.numpy(np.array([-128, 127], np.int16))
