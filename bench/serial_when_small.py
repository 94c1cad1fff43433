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


def works(q_dir: str, target: str) -> tuple[dict, dict]:
    """``({kernel: work PrimExpr}, {kernel: parallel loops})`` of the model's kernels: the work of
    the fused kernel, the parallel loops of the scheduled one (each is one pool launch per call:
    none of our schedules nests a parallel loop in another loop)."""
    import tvm_ffi
    from tvm import tirx

    from ibert_tvm.frontend.lower import integer_module
    from ibert_tvm.passes.pipeline import fuse
    from ibert_tvm.quantization.artifact import QuantizedModel
    from ibert_tvm.schedules import linear_strategy, schedule_pass
    from ibert_tvm.schedules.serial_when_small import work_estimate
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
    work = {gv.name_hint: work_estimate(f) for gv, f in fused.functions.items() if isinstance(f, tirx.PrimFunc)}
    return work, loops


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
    ap.add_argument("--thresholds", default="", help="comma list: pool launches per inference at each")
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

    work, loops = works(a.q, a.target)
    thresholds = [int(t) for t in a.thresholds.split(",")] if a.thresholds else []
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
        totals = [[] for _ in models]
        for r in range(a.rounds):
            for i in ((0, 1) if r % 2 == 0 else (1, 0)):
                p = profile_vm(models[i].vm, lambda m=models[i], e=enc: m.run_ids(e), repeat=3)
                totals[i].append(p["total_ms"])
                for k in p["kernels"]:
                    calls[k["name"]] = k["calls"]
                    if k["calls"]:
                        per[i].setdefault(k["name"], []).append(k["ms"] / k["calls"])
        tot = [float(np.median(t)) for t in totals]
        print(f"\n{shape} ({a.policy}): instrumented total parallel {tot[0]:.3f} ms, serial {tot[1]:.3f} ms "
              f"({tot[1] / tot[0]:.3f}x)")
        print(f"{'kernel':40s} {'work':>12s} {'par us':>9s} {'ser us':>9s} {'ser/par':>8s}")
        for name in sorted(per[0], key=lambda n: evaluate(work[n], b, s) if n in work else -1):
            if name not in work or name not in per[1]:
                continue
            tp, ts = float(np.median(per[0][name])) * 1e3, float(np.median(per[1][name])) * 1e3
            if abs(tp - ts) < 1e-9 and name.startswith("int_layernorm"):
                pass
            w = evaluate(work[name], b, s)
            rows.append({"shape": shape, "kernel": name, "work": w, "par_us": tp, "ser_us": ts})
            print(f"{name:40s} {w:12d} {tp:9.1f} {ts:9.1f} {ts / tp:8.3f}")
        rows.append({"shape": shape, "kernel": "(total, instrumented)", "par_ms": tot[0], "ser_ms": tot[1]})
        n_calls = sum(calls.values())
        launches = {"parallel": sum(c * loops.get(n, 0) for n, c in calls.items())}
        for t in thresholds:
            launches[str(t)] = sum(c * loops.get(n, 0) for n, c in calls.items()
                                   if n in work and evaluate(work[n], b, s) > t)
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
