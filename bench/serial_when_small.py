"""Calibrating ``serial_when_small``: every parallel kernel of a model timed parallel and serial.

    python bench/serial_when_small.py PAR_OUT SER_OUT --q q/ [--shapes 1x32,1x128,8x128]
                                      [--policy spin|passive] [--rounds 7] [-o out.json]

``PAR_OUT`` and ``SER_OUT`` are the same model compiled twice for the same target (no tuning
database): every parallel kernel parallel (``serial_when_small=False``), and every one serial (a
threshold above any work). Both run the same random ids in interleaved rounds under the Relax VM
instrument (``benchmarks.profile.profile_vm``: per-kernel wall time, a few microseconds of Python
included, the same in both); per kernel and shape it prints the work (``work_estimate`` of the
fused kernel, evaluated at the shape), the median time per call in each build and their ratio.
The threshold is where serial stops winning. ``--policy passive`` sets
``TVM_THREAD_POOL_SPIN_COUNT=0`` before TVM starts (idle pool threads sleep), as the bench's
passive wait policy does. Timings are for reading, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def works(q_dir: str, target: str) -> tuple[dict, dict, dict]:
    """``({kernel: work PrimExpr}, {kernel: parallel loops}, {kernel: op class})`` of the model's
    kernels: the work and class of the fused kernel, the parallel loops of the scheduled one (each is one pool launch per call:
    none of our schedules nests a parallel loop in another loop)."""
    import tvm_ffi
    from tvm import tirx

    from ibert_tvm.frontend.lower import integer_module
    from ibert_tvm.passes.pipeline import fuse
    from ibert_tvm.quantization.artifact import QuantizedModel
    from ibert_tvm.schedules import linear_strategy, schedule_pass
    from ibert_tvm.schedules.serial_when_small import op_class, work_estimate
    from ibert_tvm.targets import get_target

    spec = get_target(target)
    mod, _, _ = integer_module(QuantizedModel.load(q_dir), linear_strategy(spec.name))
    tgt = spec.tvm_target()
    with tgt:
        fused = fuse(mod)
    sched = schedule_pass(spec.name, tgt)(fused)
    loops = {}
    for gv, f in sched.functions.items():
        if isinstance(f, tirx.PrimFunc):
            n = []
            tvm_ffi.structural_walk(f.body, (tirx.For, lambda x, n=n: n.append(1) if x.kind == tirx.ForKind.PARALLEL else None))
            loops[gv.name_hint] = len(n)
    funcs = {gv.name_hint: f for gv, f in fused.functions.items() if isinstance(f, tirx.PrimFunc)}
    return ({n: work_estimate(f) for n, f in funcs.items()}, loops, {n: op_class(f) for n, f in funcs.items()})


def evaluate(expr, batch: int, seq: int) -> int:
    import tvm.sym
    import tvm_ffi
    from tvm import tirx

    vals = {"batch": batch, "seq": seq}
    e = tvm_ffi.structural_map(expr, (tirx.Var, lambda v: tirx.IntImm("int64", vals[v.name]) if v.name in vals else v))
    return int(tvm.sym.Analyzer().simplify(e).value)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("par_out")
    ap.add_argument("ser_out")
    ap.add_argument("--q", required=True, help="the q/ dir both were compiled from (for the work estimates)")
    ap.add_argument("--target", default="x86")
    ap.add_argument("--shapes", default="1x32,1x128,8x128")
    ap.add_argument("--policy", choices=("spin", "passive"), default="spin")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--thresholds", default="",
                    help="comma list of LINEAR/ATTENTION/OTHER threshold triples: pool launches per inference at each")
    ap.add_argument("-o", "--output")
    a = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(a.threads)
    os.environ.pop("TVM_THREAD_POOL_SPIN_COUNT", None)
    if a.policy == "passive":
        os.environ["TVM_THREAD_POOL_SPIN_COUNT"] = "0"
    import numpy as np

    from ibert_tvm.benchmarks.profile import profile_vm
    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.support.tokenize import position_ids

    work, loops, classes = works(a.q, a.target)
    thresholds = [t for t in a.thresholds.split(",") if t]  # "LINEAR/ATTENTION/OTHER" triples
    models = [CompiledModel(a.par_out), CompiledModel(a.ser_out)]
    m0 = models[0].manifest
    rng = np.random.default_rng(0)
    load0 = os.getloadavg()
    rows = []
    for shape in a.shapes.split(","):
        b, s = (int(x) for x in shape.split("x"))
        ids = rng.integers(1000, int(m0["vocab"]), (b, s)).astype(np.int64)
        mask = np.ones((b, s), np.int64)
        enc = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros((b, s), np.int64),
               "position_ids": position_ids(ids, mask, m0["family"], int(m0["pad_id"])).astype(np.int64)}
        outs = [m.run_ids(enc) for m in models]
        if not np.array_equal(outs[0], outs[1]):
            print(f"error: {shape}: the serial build's output differs", file=sys.stderr)
            return 2
        per = [{} for _ in models]  # name -> [ms per call, ...]
        calls = {}
        cats = [{} for _ in models]  # category -> [ms per run, ...]
        totals = [[] for _ in models]
        for r in range(a.rounds):
            for i in ((0, 1) if r % 2 == 0 else (1, 0)):
                p = profile_vm(models[i].vm, lambda m=models[i], e=enc: m.run_ids(e), repeat=3)
                totals[i].append(p["total_ms"])
                for c, ms in p["categories"].items():
                    cats[i].setdefault(c, []).append(ms)
                for k in p["kernels"]:
                    calls[k["name"]] = k["calls"]
                    if k["calls"]:
                        per[i].setdefault(k["name"], []).append(k["ms"] / k["calls"])
        tot = [float(np.median(t)) for t in totals]
        print(f"\n{shape} ({a.policy}): instrumented total parallel {tot[0]:.3f} ms, serial {tot[1]:.3f} ms "
              f"({tot[1] / tot[0]:.3f}x)")
        print(f"{'kernel':40s} {'class':5s} {'work':>12s} {'par us':>9s} {'ser us':>9s} {'ser/par':>8s}")
        for name in sorted(per[0], key=lambda n: evaluate(work[n], b, s) if n in work else -1):
            if name not in work or name not in per[1]:
                continue
            tp, ts = float(np.median(per[0][name])) * 1e3, float(np.median(per[1][name])) * 1e3
            w = evaluate(work[name], b, s)
            if not loops.get(name):
                continue  # no parallel loop: the same kernel in both builds
            rows.append({"shape": shape, "kernel": name, "class": classes[name], "work": w, "par_us": tp, "ser_us": ts})
            print(f"{name:40s} {classes[name]:5s} {w:12d} {tp:9.1f} {ts:9.1f} {ts / tp:8.3f}")
        rows.append({"shape": shape, "kernel": "(total, instrumented)", "par_ms": tot[0], "ser_ms": tot[1]})
        cat_ms = [{c: float(np.median(v)) for c, v in cm.items()} for cm in cats]
        print("where the time goes (ms per inference, instrumented; parallel / serial build): "
              + ", ".join(f"{c} {cat_ms[0][c]:.3f} / {cat_ms[1].get(c, 0):.3f}"
                          for c in sorted(cat_ms[0], key=lambda c: -cat_ms[0][c])))
        rows.append({"shape": shape, "kernel": "(categories, ms)", "parallel": cat_ms[0], "serial": cat_ms[1]})
        n_calls = sum(calls.values())
        launches = {"parallel": sum(c * loops.get(n, 0) for n, c in calls.items())}
        for t in thresholds:
            lim = dict(zip(("linear", "attention", "other"), (int(v) for v in t.split("/"))))
            launches[t] = sum(c * loops.get(n, 0) for n, c in calls.items()
                              if n in work and evaluate(work[n], b, s) > lim[classes[n]])
        rows.append({"shape": shape, "kernel": "(launches per inference)", "vm_calls": n_calls, **launches})
        print(f"VM calls per inference {n_calls}; pool launches per inference: "
              + ", ".join(f"{k if k == 'parallel' else 'threshold ' + k} {v}" for k, v in launches.items()))
    print(f"\nload average: start {load0}, end {os.getloadavg()}")
    if a.output:
        Path(a.output).write_text(json.dumps({"argv": sys.argv[1:], "policy": a.policy, "threads": a.threads,
                                              "rounds": a.rounds, "load_start": load0, "load_end": os.getloadavg(),
                                              "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
