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
INT32_MAX = (1 << 31) - 1
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


def bigint_gelu(q: int, consts, multiplicands: list | None = None) -> tuple[int, int]:
    """One element in Python ints. Returns (out, largest |intermediate|); appends each Horner
    multiplicand |acc| to ``multiplicands`` if given."""
    t_q, r, e0, shifts, d = consts
    z = min(abs(q), t_q) >> r
    acc, worst = d[-1], abs(d[-1])
    for k in range(len(d) - 2, -1, -1):
        if multiplicands is not None:
            multiplicands.append(abs(acc))
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
    mults: list[int] = []
    res = [bigint_gelu(int(v), consts, mults) for v in q.ravel()]
    worst = max((w for _, w in res), default=0)
    assert worst < INT64_LIMIT, "an intermediate exceeds int64: the plan should have refused this"
    if plan.narrow:  # the kernel truncates every multiplicand to int32: it must never need more
        assert max(mults, default=0) <= INT32_MAX and (plan.t_q >> plan.r) <= INT32_MAX
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
    # the requantization of the clipped, pre-shifted wide value, in Python ints (round half up,
    # saturate); and the clip changes no output: the same requantization of the unclipped value
    r = plan.requant
    clipped = q if plan.clip_q is None else np.minimum(q.astype(np.int64), plan.clip_q).astype(np.int32)
    consts = spec_constants(plan.scale, plan.degree, plan.in_bits, plan.frac_bits)
    m = np.broadcast_to(np.atleast_1d(r.m), q.shape) if r.per_channel else np.full(q.shape, int(r.m))
    s = np.broadcast_to(np.atleast_1d(r.s), q.shape) if r.per_channel else np.full(q.shape, int(r.s))

    def requant(w, mm, ss):
        return min(max(((w >> plan.pre_shift) * int(mm) + (1 << (int(ss) - 1))) >> int(ss), r.qmin), r.qmax)

    ref, unclipped = [], []
    for v, c, mm, ss in zip(q.ravel(), clipped.ravel(), m.ravel(), s.ravel()):
        w = bigint_gelu(int(c), consts)[0]
        if plan.requant_narrow:  # the kernel truncates the pre-shifted value to int32
            assert abs(w >> plan.pre_shift) <= INT32_MAX
        ref.append(requant(w, mm, ss))
        unclipped.append(requant(bigint_gelu(int(v), consts)[0], mm, ss))
    np.testing.assert_array_equal(got.astype(np.int64).ravel(), ref)
    assert ref == unclipped


def test_clip_binds_only_where_every_channel_saturates():
    """Per-channel scales 100x apart: inputs at and beyond the clip saturate on every channel;
    the narrow plan's int8 outputs over a 20-bit domain equal a requantization of the exact
    (unclipped, unshifted) value computed in Python fractions, except within 2^-20 LSB of a
    rounding tie."""
    from fractions import Fraction

    scale, s_q = 3.1e-4, np.array([8.0 / 127, 0.8 / 127, 2.0 / 127])
    plan = IntGELUPoly(scale, in_bits=20, out_scale_q=s_q, degree=4)
    assert plan.narrow and plan.requant_narrow and plan.clip_q is not None
    assert plan.clip_q * scale > 2 * 128 * s_q.max()
    # narrow where the pre-shift to 30 bits floors <= 2^-12 of the finest channel's LSB
    for bits, sq, narrow in ((20, s_q, True), (20, [8.0 / 127, 0.001 / 127], False), (16, 0.06 / 127, True),
                             (16, 1e-6, False), (32, 0.06, True)):
        p = IntGELUPoly(scale, in_bits=bits, out_scale_q=sq, degree=4)
        loss = 2 ** max(0, p.requant_bound.bit_length() - 30) * p.out_scale / np.min(sq)
        assert p.requant_narrow == narrow == (loss <= 2**-12), (bits, sq, loss)
    q = np.repeat(np.arange(-(1 << 19), 1 << 19, 7, dtype=np.int32)[:, None], 3, axis=1)
    got = plan.numpy_q(q)
    assert (got[q[:, 0] >= plan.clip_q] == 127).all()
    wide = plan.numpy(q)  # unclipped, F and E_0 of the plan; exact value in S_out units
    ratio = [Fraction(plan.out_scale) / Fraction(float(v)) for v in s_q]
    step = 11  # a sample of the domain keeps the Fraction arithmetic quick
    for c in range(3):
        for w, g in zip(wide[::step, c], got[::step, c]):
            x = Fraction(int(w)) * ratio[c]
            ideal = min(max(math.floor(x + Fraction(1, 2)), -128), 127)
            if ideal != g:
                assert abs(x - math.floor(x) - Fraction(1, 2)) < Fraction(1, 1 << 20), (w, g, float(x))


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
def _proof(plan, f):
    """(multiplicand bounds B_n..B_1, product bounds, out bound) at precision f, from the spec."""
    t_q, r, e0, shifts, d = spec_constants(plan.scale, plan.degree, plan.in_bits, f)
    z_max, acc, mults, prods = t_q >> r, abs(d[-1]), [], []
    for k in range(plan.degree - 1, -1, -1):
        mults.append(acc)
        prods.append(acc * z_max)
        acc = abs(d[k]) + (-((-prods[-1]) >> shifts[k]) if shifts[k] >= 0 else prods[-1] << -shifts[k])
    return mults, prods, ((1 << (plan.in_bits - 1)) << e0) + acc


@pytest.mark.parametrize("degree", [4, 5, 6])
@pytest.mark.parametrize("scale, in_bits", [(3.1e-4, 16), (1e-6, 32), (1.0, 32), (3.0, 8)])
def test_precision_is_the_largest_with_int32_multiplicands(degree, scale, in_bits):
    """Narrow plans (degrees 4-6): every multiplicand fits int32 at F, F + 1 would break that (or
    int64), and the proven rounding error stays within 1/32 of the fit's."""
    from ibert_tvm.op import int_gelu_poly as m

    plan = IntGELUPoly(scale, in_bits=in_bits, degree=degree)
    assert plan.narrow and m.F_NARROW_MIN <= plan.frac_bits < m.F_MAX
    assert plan.horner_error <= m.LINF[degree] / 32
    mults, prods, out = _proof(plan, plan.frac_bits)
    assert max(mults) <= INT32_MAX and max(max(prods), out) < INT64_LIMIT
    mults, prods, out = _proof(plan, plan.frac_bits + 1)
    assert max(mults) > INT32_MAX or max(max(prods), out) >= INT64_LIMIT


@pytest.mark.parametrize("degree", [7, 8])
def test_high_degrees_stay_wide(degree):
    """Degrees 7-8 reach int32 multiplicands only at F ~26, where their rounding bound would exceed
    1/32 of the fit's error: the wide plan, F = F_MAX."""
    from ibert_tvm.op import int_gelu_poly as m

    plan = IntGELUPoly(3.1e-4, in_bits=16, degree=degree)
    assert not plan.narrow and plan.frac_bits == m.F_MAX
    assert plan.horner_error < m.LINF[degree] / 32


def test_wide_plans_take_the_largest_precision_int64_allows():
    """Where no F >= F_NARROW_MIN has int32 multiplicands (E_0 capped at very fine scales), F is
    the largest the int64 proofs allow, and the products are 64 x 64-bit."""
    from ibert_tvm.op import int_gelu_poly as m

    plan = IntGELUPoly(1e-9, in_bits=32, degree=8)
    assert not plan.narrow and m.F_MIN <= plan.frac_bits <= m.F_MAX
    for f in range(m.F_NARROW_MIN, m.F_MAX + 1):
        mults, prods, out = _proof(plan, f)
        assert max(mults) > INT32_MAX or max(max(prods), out) >= INT64_LIMIT
    if plan.frac_bits < m.F_MAX:
        _, prods, out = _proof(plan, plan.frac_bits + 1)
        assert max(max(prods), out) >= INT64_LIMIT


def _multiplies(plan):
    """(vpmullq, vpmuldq) in the AVX-512 code of ``plan.te_q`` on int16 [4, 64], 16 lanes a vector."""
    import tvm
    from tvm import s_tir, te

    x = te.placeholder((4, 64), "int16", name="x")
    func = te.create_prim_func([x, plan.te_q(x)]).with_attr("global_symbol", "main")
    sch = s_tir.Schedule(func)
    _, j = sch.get_loops(sch.get_sblock("int_gelu_q"))
    _, ji = sch.split(j, [None, 16])
    sch.vectorize(ji)
    lib = tvm.compile(sch.mod, target=tvm.target.Target({"kind": "llvm", "mcpu": "sapphirerapids"}))
    q = np.random.default_rng(0).integers(-32768, 32768, (4, 64)).astype(np.int16)
    out = tvm.runtime.empty((4, 64), "int8")
    lib(tvm.runtime.tensor(q), out)
    np.testing.assert_array_equal(out.numpy(), plan.numpy_q(q))
    asm = lib.mod.inspect_source("asm")
    return asm.count("vpmullq"), asm.count("vpmuldq")


def test_machine_code_multiplies(monkeypatch):
    """The point of the narrow plan: on AVX-512 the default GELU (degree 4, BERT's int16 input)
    multiplies 32 x 32 -> 64 (``vpmuldq``, one uop) where the wide plan multiplies 64 x 64
    (``vpmullq``, three): at most a quarter of its ``vpmullq`` are left."""
    from ibert_tvm.op import int_gelu_poly as m

    plan = IntGELUPoly(3.1e-4, in_bits=16, out_scale_q=0.06 / 127, degree=4)
    assert plan.narrow and plan.requant_narrow
    narrow_mullq, narrow_muldq = _multiplies(plan)
    monkeypatch.setattr(m, "F_NARROW_MIN", m.F_MAX + 1)  # no F is narrow: the wide plan
    monkeypatch.setattr(m, "NARROW_REQUANT_LOSS", 1000)
    wide = IntGELUPoly(3.1e-4, in_bits=16, out_scale_q=0.06 / 127, degree=4)
    assert not wide.narrow and not wide.requant_narrow and wide.frac_bits == m.F_MAX
    wide_mullq, _ = _multiplies(wide)
    assert wide_mullq >= 4 * narrow_mullq and narrow_muldq >= 3 * narrow_mullq, (wide_mullq, narrow_mullq, narrow_muldq)


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
    """Over x in [-8, 8] (the 16-bit domain where it is narrower): the fit's float error plus at
    most the plan's proven rounding bound (<= 1/32 of it). i-GELU on the same grid: ~0.018."""
    from ibert_tvm.op.int_gelu_poly import LINF

    plan = IntGELUPoly(scale, in_bits=16, degree=degree)
    lim = min(32767, int(8.0 / scale))
    q = np.arange(-lim, lim + 1, dtype=np.int16)
    x = q.astype(np.float64) * scale
    exact = gelu_float(x)
    linf = float(np.abs(plan.numpy(q) * plan.out_scale - exact).max())
    record_property("gelu_poly_linf", linf)
    assert plan.horner_error <= LINF[degree] / 32
    assert linf <= LINF[degree] * 1.005 + plan.horner_error, linf
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
