"""Per-kernel timings of a Relax VM, int8 GEMM throughput, and this machine's int8 peak.

TVM 0.27's Relax VM has no Python profiler object; :func:`profile_vm` installs a VM
*instrument* (``vm.set_instrument``), which is called before and after every ``Call``
instruction with the callee's name and arguments: kernels run synchronously on the CPU, so
the wall time between the two calls is the kernel's time (plus a few microseconds of Python).

Kernel categories (:func:`category`) come from the fused PrimFunc names the integer model
produces (``fused_linear*``, ``vnni_*``, ``qk_matmul``, ``int_softmax``...), and from TVM's
legalized op names for the FP32 model (``matmul``, ``layer_norm``, ``softmax``...).
"""

from __future__ import annotations

import time
from collections import defaultdict

CATEGORIES = ("linear", "attention matmul", "softmax", "layernorm", "gelu/tanh", "embedding",
              "requantize/residual", "layout", "pooling", "other kernels", "vm builtins")
NONLINEAR = ("softmax", "layernorm", "gelu/tanh")


def category(name: str, shapes=()) -> str:
    n = name.lower()
    if n.startswith("vm.") or n.startswith("shape_func") or n.startswith("__"):
        return "vm builtins"
    if "linear" in n or "vnni" in n or "dense" in n:
        return "linear"
    if "qk_matmul" in n or "pv_matmul" in n:
        return "attention matmul"
    if "matmul" in n:  # FP32 graph: attention matmuls have 4-D operands, linears 2-D/3-D
        return "attention matmul" if shapes and len(shapes[0][0]) == 4 else "linear"
    for key, cat in (("softmax", "softmax"), ("layer_norm", "layernorm"), ("layernorm", "layernorm"),
                     ("gelu", "gelu/tanh"), ("erf", "gelu/tanh"), ("tanh", "gelu/tanh"),
                     ("embedding", "embedding"), ("take", "embedding"), ("requantize", "requantize/residual"),
                     ("residual", "requantize/residual"), ("transpose", "layout"), ("reshape", "layout"),
                     ("pool", "pooling"), ("sum", "pooling"), ("mean", "pooling"), ("divide", "pooling")):
        if key in n:
            return cat
    return "other kernels"


def _shapes(args) -> list:
    out = []
    for a in args:
        shape, dtype = getattr(a, "shape", None), getattr(a, "dtype", None)
        if shape is not None and dtype is not None:
            try:
                out.append([[int(d) for d in shape], str(dtype)])
            except TypeError:  # a ShapeTuple or an opaque object
                continue
    return out


def gemm_dims(shapes) -> tuple[int, int, int] | None:
    """(M, N, K) of an int8 linear call from its argument shapes, or None.

    ``x [..., K]`` int8 is the first int8 argument; the weight is the next int8 argument,
    ``[N, K]`` (generic) or ``[N/16, K/4, 16, 4]`` (VNNI); the real ``N`` is the output's last dim.
    """
    int8 = [s for s, dt in shapes if dt == "int8"]
    if len(int8) < 2 or not shapes:
        return None
    x, w = int8[0], int8[1]
    k = x[-1]
    m = 1
    for d in x[:-1]:
        m *= d
    if len(w) == 2 and w[1] == k:
        n = w[0]
    elif len(w) == 4 and w[1] * w[3] >= k and w[3] == 4:
        n = w[0] * w[2]
    else:
        return None
    out = shapes[-1][0]
    if out and out[-1] <= n:
        n = out[-1]
    return (m, n, k)


def profile_vm(vm, call, *, repeat: int = 3) -> dict:
    """Run ``call()`` once plain, then ``repeat`` times instrumented; per-kernel medians.

    Returns ``{"total_ms": median instrumented wall time, "kernels": [{name, category, calls,
    ms (median per run, all calls), shapes (first call), gemm: [M, N, K] | None}], "categories":
    {category: ms}}``, kernels sorted by time.
    """
    call()
    runs = []
    stack: list[float] = []
    info: dict[str, dict] = {}

    def instrument(func, name, before, ret, *args):
        if before:
            stack.append(time.perf_counter())
            return 0
        t = time.perf_counter() - stack.pop()
        name = str(name)
        runs[-1].append((name, t))
        if name not in info:  # shapes once; no reference to the tensors is kept (the VM reuses them)
            shapes = _shapes(args)
            info[name] = {"shapes": shapes, "calls": 0, "category": category(name, shapes)}
        return 0

    vm.set_instrument(instrument)
    walls = []
    try:
        for _ in range(repeat):
            runs.append([])
            t0 = time.perf_counter()
            call()
            walls.append(time.perf_counter() - t0)
    finally:
        vm.set_instrument(lambda *a: 0)
    per_run: list[dict] = []
    for recs in runs:
        acc: dict[str, float] = defaultdict(float)
        for name, t in recs:
            acc[name] += t
        per_run.append(acc)
    for name, _t in runs[0]:
        info[name]["calls"] += 1
    kernels = []
    for name, d in info.items():
        times = sorted(r.get(name, 0.0) for r in per_run)
        ms = times[len(times) // 2] * 1000
        g = gemm_dims(d["shapes"]) if d["category"] == "linear" else None
        kernels.append({"name": name, "category": d["category"], "calls": d["calls"], "ms": ms,
                        "shapes": d["shapes"], "gemm": list(g) if g else None})
    kernels.sort(key=lambda k: -k["ms"])
    cats: dict[str, float] = defaultdict(float)
    for k in kernels:
        cats[k["category"]] += k["ms"]
    walls.sort()
    return {"total_ms": walls[len(walls) // 2] * 1000, "kernels": kernels,
            "categories": dict(sorted(cats.items(), key=lambda kv: -kv[1]))}


def gemm_throughput(profile: dict) -> list[dict]:
    """Per int8 linear kernel: (M, N, K), calls, ms per call, GOP/s (2*M*N*K per call)."""
    rows = []
    for k in profile["kernels"]:
        if k["category"] != "linear" or not k["gemm"] or not k["calls"] or k["ms"] <= 0:
            continue
        m, n, kk = k["gemm"]
        per_call = k["ms"] / k["calls"]
        rows.append({"kernel": k["name"], "M": m, "N": n, "K": kk, "calls": k["calls"], "ms_per_call": per_call,
                     "gops": 2 * m * n * kk / (per_call * 1e-3) / 1e9})
    return rows


def measure_peak(threads: int, *, runs: int = 20) -> dict:
    """This machine's int8 GEMM peak (``torch._int_mm``, ``threads`` threads) and FP32 (``torch.mm``).

    Several shapes, the best median wins (the peak is what the hardware can do, not one shape)."""
    import torch

    torch.set_num_threads(threads)
    shapes = [(1024, 1024, 1024), (2048, 2048, 2048), (1024, 3072, 768)]
    res = {"threads": threads, "int8": [], "fp32": []}
    gen = torch.Generator().manual_seed(0)
    for m, n, k in shapes:
        a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
        b = torch.randint(-128, 128, (k, n), dtype=torch.int8, generator=gen)
        for kind, f in (("int8", lambda: torch._int_mm(a, b)),
                        ("fp32", lambda af=a.float(), bf=b.float(): torch.mm(af, bf))):
            f()
            f()
            ts = []
            for _ in range(runs):
                t0 = time.perf_counter()
                f()
                ts.append(time.perf_counter() - t0)
            ts.sort()
            res[kind].append({"M": m, "N": n, "K": k, "median_ms": ts[len(ts) // 2] * 1000,
                              "gops": 2 * m * n * k / ts[len(ts) // 2] / 1e9})
    res["int8_gops"] = max(r["gops"] for r in res["int8"])
    res["fp32_gflops"] = max(r["gops"] for r in res["fp32"])
    return res
