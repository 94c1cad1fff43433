"""A/B latency of several compiled ``out/`` dirs of the same model, interleaved in one process.

    python bench/ab_outs.py OLD_OUT NEW_OUT [MORE_OUT ...] [--shapes 1x32,1x128,8x128] [--rounds 15]
                            [--policy spin|passive]

What a code change costs when the compiled model changes but the model does not (a compile path,
a calibration rule): every out/ runs the same random ids, in rounds that alternate the dirs (A B C,
B C A, ...), on the TVM runtime only. Prints the median latency per dir and shape, its ratio to
the first dir, and checks that the outputs are identical where they should be (``--same``) or
reports how many differ. Timings are for reading, never asserted; run it on a quiet machine
(``uptime``) and compare ratios from the same run only. On a shared machine, ``--threads 1
--clock cpu`` times the process's CPU time instead of the wall clock: it does not count the time
the process waited for a core (it still counts what other processes cost it through shared caches).

``OUT@spin`` / ``OUT@passive`` loads OUT fed that table of serial/parallel thresholds (an x86 build
since they are run-time data, ``schedules/serial_when_small.py``; the same dir may appear with
both); a plain OUT gets the loader's choice (``deploy.runtime.serial_table``: passive under
``--policy passive`` unless ``$IBERT_TVM_SERIAL_THRESHOLDS`` says otherwise). ``--policy passive``
sets ``TVM_THREAD_POOL_SPIN_COUNT=0`` before TVM starts (idle pool threads sleep), as the bench's
passive wait policy does; ``spin`` (the default) unsets it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outs", nargs="+", help="compiled out/ dirs (the first is the baseline)")
    ap.add_argument("--shapes", default="1x32,1x128,8x128", help="BATCHxSEQ list")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    ap.add_argument("--runs", type=int, default=4, help="timed runs per dir, shape and round (default 4)")
    ap.add_argument("--threads", type=int, default=2, help="TVM_NUM_THREADS (default 2)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: perf_counter (default); cpu: process CPU time (use with --threads 1: "
                         "with more threads it adds up every thread's time, spinning included)")
    ap.add_argument("--policy", choices=("spin", "passive"), default="spin",
                    help="TVM's wait policy: passive sets TVM_THREAD_POOL_SPIN_COUNT=0 (default spin: unset)")
    ap.add_argument("--same", action="store_true", help="fail unless every dir gives identical integers")
    ap.add_argument("-o", "--output", help="write the figures as JSON here")
    a = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(a.threads)
    os.environ.pop("TVM_THREAD_POOL_SPIN_COUNT", None)
    if a.policy == "passive":
        os.environ["TVM_THREAD_POOL_SPIN_COUNT"] = "0"
    clock = time.perf_counter if a.clock == "wall" else time.process_time

    import numpy as np

    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.support.tokenize import position_ids

    def load(arg):  # OUT, OUT@spin or OUT@passive
        path, _, table = arg.rpartition("@") if arg.rsplit("@", 1)[-1] in ("spin", "passive") else (arg, "", None)
        return CompiledModel(path, serial_thresholds=table)

    models = [load(o) for o in a.outs]
    m0 = models[0].manifest
    shapes = [tuple(int(x) for x in s.split("x")) for s in a.shapes.split(",")]
    rng = np.random.default_rng(0)
    results: dict = {"outs": a.outs, "shapes": a.shapes, "rounds": a.rounds, "runs": a.runs,
                     "threads": a.threads, "clock": a.clock, "policy": a.policy,
                     "serial_thresholds": [m.serial_thresholds for m in models],
                     "load_average_start": os.getloadavg(), "latency_ms": {}, "identical": {}}
    for b, s in shapes:
        ids = rng.integers(1000, int(m0["vocab"]), (b, s)).astype(np.int64)
        mask = np.ones((b, s), np.int64)
        enc = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros((b, s), np.int64),
               "position_ids": position_ids(ids, mask, m0["family"], int(m0["pad_id"])).astype(np.int64)}
        outs = [m.run_ids(enc) for m in models]  # warm-up, and the outputs compared
        for m in models:
            m.run_ids(enc)
        same = [bool(np.array_equal(outs[0], o)) for o in outs]
        results["identical"][f"{b}x{s}"] = same
        if a.same and not all(same):
            print(f"error: {b}x{s}: outputs differ from {a.outs[0]}: {same}", file=sys.stderr)
            return 2
        times = [[] for _ in models]
        for r in range(a.rounds):
            order = [(r + i) % len(models) for i in range(len(models))]
            for i in order:
                for _ in range(a.runs):
                    t = clock()
                    models[i].run_ids(enc)
                    times[i].append((clock() - t) * 1e3)
        med = [float(np.median(t)) for t in times]
        q = [(float(np.percentile(t, 25)), float(np.percentile(t, 75))) for t in times]
        results["latency_ms"][f"{b}x{s}"] = [{"median": m, "q1": lo, "q3": hi} for m, (lo, hi) in zip(med, q)]
        cells = "  ".join(f"{Path(o).name or o}: {m:.2f} ms [{lo:.2f}-{hi:.2f}] ({m / med[0]:.3f}x)"
                          for o, m, (lo, hi) in zip(a.outs, med, q))
        print(f"{b}x{s}  {cells}  identical: {same}", flush=True)
    results["load_average_end"] = os.getloadavg()
    print(f"load average: start {results['load_average_start']}, end {results['load_average_end']}")
    if a.output:
        Path(a.output).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
