"""x86 VNNI linears in isolation: the plain kernel (linear + int8 requantization) against the
epilogue-fused ones (FFN-in + i-GELU, attention-out / FFN-out + residual add), same shapes, two
schedule rules (a git revision's ``VnniLinearRule`` and this tree's), interleaved in one process.

    python bench/kernel_epilogue.py [--shapes bert-ffn-in,bert-attn-out,...] [--rows 1024,32]
                                    [--base main] [--threads 1] [--rounds 5] [--amx] [--clock cpu] [-o out.json]

Each kernel is the TE the model lowers to (``VnniLinear.te``, then ``Requantize.te`` /
``IntGELU.te_q`` / ``ResidualAdd.te`` on its int32 output, one PrimFunc with symbolic
``batch x seq`` rows, as FuseTIR makes it), scheduled by the rule alone (no tuning database),
built for target ``x86`` and checked bit for bit against the ops' numpy references before it is
timed. Rows: ``M = 1024`` runs as ``8 x 128``, ``M = 32`` as ``1 x 32``. GOP/s count the GEMM
only (``2 M N K``); the int8 peak is ``torch._int_mm`` at the same thread count, measured in a
subprocess before and after the kernels (the mean of the two is the reference). Timings are for
reading, never asserted: other processes load this machine, so compare ratios from one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# name -> (K, N, fused epilogue)
SHAPES = {
    "bert-ffn-in": (768, 3072, "gelu"),
    "bert-attn-out": (768, 768, "residual"),
    "bert-ffn-out": (3072, 768, "residual"),
    "bert-qkv": (768, 768, None),
    "minilm-ffn-in": (384, 1536, "gelu"),
    "minilm-attn-out": (384, 384, "residual"),
    "minilm-ffn-out": (1536, 384, "residual"),
}
LEAD = {1024: (8, 128), 256: (8, 32), 128: (1, 128), 32: (1, 32)}


# -- the kernels ----------------------------------------------------------------------------
def make_kernel(kind: str, k: int, n: int, seed: int = 0):
    """``(prim_func, make_args(batch, seq) -> (args, want))`` of one kernel kind.

    kind: ``plain`` (linear -> int8 requantization, the QKV kernel), ``gelu`` (linear -> 16-bit
    requantization -> i-GELU + int8 requantization, FFN-in), ``residual`` (linear -> residual
    add into 24 bits, attention-out / FFN-out) or ``gemm`` (the linear's int32 alone)."""
    import numpy as np
    from tvm import te, tirx

    from ibert_tvm.op.int_gelu import IntGELU
    from ibert_tvm.op.int_matmul import linear_np
    from ibert_tvm.op.requantize import Requantize
    from ibert_tvm.op.residual_add import ResidualAdd
    from ibert_tvm.schedules import x86_vnni as xv

    rng = np.random.default_rng(seed)
    strat = xv.VnniLinear()
    i64 = lambda v: tirx.IntImm("int64", v)  # noqa: E731
    lead = [tirx.Var("batch", "int64"), tirx.Var("seq", "int64")]
    wshape = strat.param_shapes(n, k)["weight"][0]
    x = te.placeholder((*lead, i64(k)), "int8", name="x")
    w = te.placeholder([i64(d) for d in wshape], "int8", name="w")
    b = te.placeholder((i64(n),), "int32", name="b")
    vec = lambda name, dt="int32": te.placeholder((i64(n),), dt, name=name)  # noqa: E731
    acc = strat.te(x, w, b)
    # realistic scales: s_x * s_w / s_out around what calibration gives (per channel)
    w_np = rng.integers(-128, 128, (n, k)).astype(np.int8)
    b_np = rng.integers(-(2**20), 2**20, n).astype(np.int32)
    packed = strat.pack(w_np, b_np)
    ratio = rng.uniform(0.5, 2.0, n) / (128 * np.sqrt(k) * 16)
    extra_t, extra_np, ref = [], [], None
    if kind == "gemm":
        out = acc
        ref = lambda xv_, extra: linear_np(xv_, w_np, b_np)  # noqa: E731
    elif kind == "plain":
        rq = Requantize(ratio, in_bits=32, out_bits=8)
        m, s = vec("m"), vec("s")
        out = rq.te(acc, m, s)
        extra_t, extra_np = [m, s], [rq.m, rq.s]
        ref = lambda xv_, extra: rq.numpy(linear_np(xv_, w_np, b_np))  # noqa: E731
    elif kind == "gelu":
        rq = Requantize(ratio * 2**8, in_bits=32, out_bits=16)
        scale_in = 2.0**-10
        gelu = IntGELU(scale_in, in_bits=16, out_scale_q=rng.uniform(0.02, 0.05, n))
        m, s, gm, gs = vec("m"), vec("s"), vec("gm"), vec("gs")
        out = gelu.te_q(rq.te(acc, m, s), gm, gs)
        gp = gelu.params()
        extra_t, extra_np = [m, s, gm, gs], [rq.m, rq.s, gp["m"], gp["s"]]
        ref = lambda xv_, extra: gelu.numpy_q(rq.numpy(linear_np(xv_, w_np, b_np)))  # noqa: E731
    elif kind == "residual":
        ra = ResidualAdd(ratio * 2**10, rng.uniform(0.5, 2.0, n) * 2**6, out_bits=24)
        r = te.placeholder((*lead, i64(n)), "int8", name="r")
        p = ra.params()
        m, s, mb, sb = vec("m"), vec("s"), vec("mb"), vec("sb")
        out = ra.te(acc, r, m, s, mb, sb)
        extra_t, extra_np = [r, m, s, mb, sb], ["resid", p["m"], p["s"], p["mb"], p["sb"]]
        ref = lambda xv_, extra: ra.numpy(linear_np(xv_, w_np, b_np), extra[0])  # noqa: E731
    else:
        raise ValueError(kind)
    func = te.create_prim_func([x, w, b, *extra_t, out])

    def make_args(batch: int, seq: int):
        xs = rng.integers(-128, 128, (batch, seq, k)).astype(np.int8)
        extra = [rng.integers(-128, 128, (batch, seq, n)).astype(np.int8) if isinstance(e, str) else e
                 for e in extra_np]
        want = ref(xs, extra)
        return [xs, packed["weight"], packed["bias"], *extra], want

    return func, make_args


def load_rule(rev: str):
    """``VnniLinearRule`` as of git revision ``rev`` (loaded beside this tree's, not over it)."""
    src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:ibert_tvm/schedules/x86_vnni.py"],
                         capture_output=True, text=True, check=True).stdout
    d = Path(tempfile.mkdtemp(prefix="kernel-epilogue-"))
    (d / "x86_vnni_base.py").write_text(src)
    name = "ibert_tvm.schedules._x86_vnni_base"
    spec = importlib.util.spec_from_file_location(name, d / "x86_vnni_base.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    from ibert_tvm.schedules import register_linear, register_rules, x86_vnni

    register_linear("x86", x86_vnni.VnniLinear())  # the base module registered its own: undo
    register_rules("x86", x86_vnni.x86_rules)
    return mod.VnniLinearRule()


def build(func, rule, target: str = "x86"):
    import tvm

    from ibert_tvm.targets import get_target

    tgt = get_target(target).tvm_target()
    with tgt:
        sch = rule.apply(func, tgt, False)
    if sch is None:
        raise RuntimeError("the rule did not apply")
    f = sch.mod["main"].with_attr("global_symbol", "main")
    return tvm.compile(tvm.IRModule({"main": f}), target=tgt)


def rotating_cell(lib, args_np, want, copies: int, label: str, **fields) -> dict | None:
    """A cell for :func:`time_rotating_weights`: ``lib["main"]`` run once on ``args_np`` (its
    output last, shaped and typed as ``want``) and checked against ``want`` bit for bit, with
    ``copies`` copies of its weight (the second argument) to rotate. When it differs: an
    ``error:`` line naming ``label`` on stderr, and None."""
    import numpy as np
    import tvm

    args = [tvm.runtime.tensor(v) for v in args_np]
    out = tvm.runtime.tensor(np.zeros(want.shape, want.dtype))
    lib["main"](*args, out)
    if not np.array_equal(out.numpy(), want):
        print(f"error: {label}: differs from the numpy reference", file=sys.stderr)
        return None
    weights = [tvm.runtime.tensor(args_np[1].copy()) for _ in range(copies)]
    return {**fields, "fn": lib["main"], "args": args, "w": weights, "out": out, "times": []}


def time_rotating_weights(cells: list[dict], rounds: int, repeats: int = 5) -> None:
    """Interleaved timing of kernels fed rotating weight copies (so that the weight streams from
    L3, as in a model at 1 x 32): each cell is ``{"fn", "args", "w": [weight copies], "out",
    "times": []}``, its weight the second argument; each round runs every cell (starting one
    further along each round) ``repeats`` times over its copies and appends the mean seconds per
    call to its ``times``."""
    for r in range(rounds):
        for c in cells[r % len(cells):] + cells[:r % len(cells)]:
            args = list(c["args"])
            t0 = time.perf_counter()
            for _ in range(repeats):
                for w in c["w"]:
                    args[1] = w
                    c["fn"](*args, c["out"])
            c["times"].append((time.perf_counter() - t0) / (repeats * len(c["w"])))


# -- the peak -------------------------------------------------------------------------------
_PEAK = """
import json, sys
from ibert_tvm.benchmarks.profile import measure_peak
print(json.dumps(measure_peak(int(sys.argv[1]), runs=10)))
"""


def peak(threads: int) -> float | None:
    try:
        r = subprocess.run([sys.executable, "-c", _PEAK, str(threads)], capture_output=True, text=True,
                           check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        return float(json.loads(r.stdout.strip().splitlines()[-1])["int8_gops"])
    except Exception as e:  # noqa: BLE001 - torch missing: ratios only
        print(f"(no int8 peak: {e})", file=sys.stderr)
        return None


_clock = time.perf_counter  # --clock cpu: time.process_time


def _time(fn, args, out, number: int) -> float:
    """Mean seconds per call over ``number`` back-to-back calls."""
    t0 = _clock()
    for _ in range(number):
        fn(*args, out)
    return (_clock() - t0) / number


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="bert-ffn-in,bert-attn-out,bert-qkv,minilm-ffn-in,minilm-attn-out",
                    help=f"comma list of {', '.join(SHAPES)}")
    ap.add_argument("--rows", default="1024,32", help=f"M values, of {sorted(LEAD)}")
    ap.add_argument("--kinds", default="plain,fused", help="plain, fused (the shape's epilogue), gemm")
    ap.add_argument("--base", default="main", help="git revision of the baseline rule ('' = none)")
    ap.add_argument("--threads", type=int, default=1, help="TVM_NUM_THREADS (default 1)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--target-ms", type=float, default=150.0, help="time per measurement (default 150 ms)")
    ap.add_argument("--amx", action="store_true",
                    help="also the x86-amx rule (the GEMM tile on AMX tdpbusd; needs an AMX-INT8 CPU)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall (default) or this process's CPU time (with --threads 1, on a shared machine)")
    ap.add_argument("-o", "--output")
    a = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(a.threads)
    import numpy as np
    import tvm

    from ibert_tvm.schedules.x86_vnni import VnniLinearRule

    global _clock
    _clock = time.process_time if a.clock == "cpu" else time.perf_counter
    rules = {"new": VnniLinearRule()}
    if a.base:
        rules = {"base": load_rule(a.base), **rules}
    if a.amx:
        from ibert_tvm.schedules.x86_amx import AmxLinearRule
        from ibert_tvm.support.amx import require_amx

        require_amx("this benchmark")
        rules["amx"] = AmxLinearRule()
    load0 = os.getloadavg()
    peak0 = peak(a.threads)
    cells = []  # (shape, M, kind, rule, timer, gops)
    for shape in a.shapes.split(","):
        k, n, fused = SHAPES[shape]
        kinds = [kd for kd in a.kinds.split(",") if not (kd == "fused" and fused is None)]
        for kd in kinds:
            kind = fused if kd == "fused" else kd
            func, make_args = make_kernel(kind, k, n)
            for rows in (int(r) for r in a.rows.split(",")):
                args_np, want = make_args(*LEAD[rows])
                for rname, rule in rules.items():
                    lib = build(func, rule, "x86-amx" if rname == "amx" else "x86")
                    args = [tvm.runtime.tensor(v) for v in args_np]
                    out = tvm.runtime.tensor(np.zeros(want.shape, want.dtype))
                    lib["main"](*args, out)
                    if not np.array_equal(out.numpy(), want):
                        print(f"error: {shape} M={rows} {kind} ({rname}): differs from the numpy reference",
                              file=sys.stderr)
                        return 2
                    fn = lib["main"]
                    t = min(_time(fn, args, out, 1) for _ in range(3))
                    number = max(1, int(a.target_ms / 1e3 / max(t, 1e-6)))
                    cells.append({"shape": shape, "M": rows, "K": k, "N": n, "kind": kind, "rule": rname,
                                  "run": (lambda fn=fn, args=args, out=out, number=number: _time(fn, args, out, number)),
                                  "times": []})
                    print(f"built {shape} M={rows} {kind:8s} {rname}: bit-identical", flush=True)
    for r in range(a.rounds):
        order = cells[r % len(cells):] + cells[: r % len(cells)]
        for c in order:
            c["times"].append(c["run"]())
    peak1 = peak(a.threads)
    peaks = [p for p in (peak0, peak1) if p]
    ref = sum(peaks) / len(peaks) if peaks else None
    print(f"\nthreads {a.threads}, {a.rounds} rounds; load {load0} -> {os.getloadavg()}; "
          f"int8 peak (torch._int_mm) {peak0} / {peak1} GOP/s")
    print(f"{'shape':16s} {'M':>5s} {'kind':9s} {'rule':5s} {'ms':>8s} {'GOP/s':>7s} {'%peak':>6s} {'vs plain':>8s}")
    rows_out = []
    for c in cells:
        ms = float(np.median(c["times"])) * 1e3
        gops = 2 * c["M"] * c["N"] * c["K"] / (ms * 1e-3) / 1e9
        plain = [p for p in cells if (p["shape"], p["M"], p["rule"], p["kind"]) == (c["shape"], c["M"], c["rule"], "plain")]
        vs = float(np.median(plain[0]["times"])) * 1e3 / ms if plain else None
        row = {k: c[k] for k in ("shape", "M", "K", "N", "kind", "rule")}
        row.update(ms=ms, gops=gops, pct_peak=(100 * gops / ref if ref else None), vs_plain=vs,
                   times_ms=[t * 1e3 for t in c["times"]])
        rows_out.append(row)
        pct = f"{row['pct_peak']:5.1f}%" if ref else "   -  "
        print(f"{c['shape']:16s} {c['M']:5d} {c['kind']:9s} {c['rule']:5s} {ms:8.3f} {gops:7.1f} {pct} "
              f"{(f'{vs:.3f}' if vs else '-'):>8s}")
    if a.output:
        Path(a.output).write_text(json.dumps({"argv": sys.argv[1:], "threads": a.threads, "rounds": a.rounds,
                                              "load_start": load0, "load_end": os.getloadavg(),
                                              "peak_gops": [peak0, peak1], "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                              "rows": rows_out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
