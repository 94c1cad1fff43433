"""One kernel built three ways, timed under a thread wait policy: TVM's default TIR pipeline (a
launch per parallel loop), ``passes.pipeline.TIR_PIPELINE`` (``schedules/one_launch.py``: one
launch with a barrier) and every loop serial.

    python bench/one_launch.py [--policy passive|spin] [--shapes bert-qkv:plain,...] [--rows 32]
                               [--target x86-amx] [--copies 40] [--rounds 9] [-o out.json]

The kernels are ``bench/kernel_epilogue.py``'s (the TE the model lowers to), scheduled by the
target's linear rule (``AmxLinearRule`` / ``VnniLinearRule``), checked bit for bit against the
numpy reference in every build. ``--copies`` weight copies are fed in rotation so that the weight
streams from L3 as in the model at 1 x 32. The policy is set for this process before TVM's pool
starts (``passive``: ``TVM_THREAD_POOL_SPIN_COUNT=0``, idle pool threads sleep). Median time per
call over the interleaved rounds; timings are for reading, never asserted; use a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = ("default", "one-launch", "serial")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", choices=("passive", "spin"), default="passive")
    ap.add_argument("--shapes", default="bert-qkv:plain,bert-ffn-in:gelu,bert-ffn-out:residual",
                    help="SHAPE:KIND list (kernel_epilogue.SHAPES; kinds plain, gelu, residual, gemm)")
    ap.add_argument("--rows", type=int, default=32, help="M: 32 (1 x 32), 128, 256 or 1024 (8 x 128)")
    ap.add_argument("--target", choices=("x86-amx", "x86"), default="x86-amx")
    ap.add_argument("--copies", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--output")
    a = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(a.threads)
    if a.policy == "passive":
        os.environ["TVM_THREAD_POOL_SPIN_COUNT"] = "0"
    else:
        os.environ.pop("TVM_THREAD_POOL_SPIN_COUNT", None)
    import numpy as np
    import tvm

    import kernel_epilogue as ke
    from ibert_tvm.passes.pipeline import register_tir_pipeline
    from ibert_tvm.schedules import serial_when_small as sws
    from ibert_tvm.schedules import x86_amx, x86_vnni
    from ibert_tvm.targets import get_target

    if a.target == "x86-amx":
        from ibert_tvm.support.amx import require_amx

        require_amx("bench/one_launch.py")
    rule = x86_amx.AmxLinearRule() if a.target == "x86-amx" else x86_vnni.VnniLinearRule()
    tgt = get_target(a.target).tvm_target()

    cells = []
    for spec in a.shapes.split(","):
        shape, kind = spec.split(":")
        k, n, _ = ke.SHAPES[shape]
        func, make_args = ke.make_kernel(kind, k, n)
        with tgt:
            sch = rule.apply(func, tgt, False)
        if sch is None:
            print(f"error: {spec}: the {a.target} linear rule did not apply", file=sys.stderr)
            return 2
        sched = sch.mod["main"].with_attr("global_symbol", "main")
        args_np, want = make_args(*ke.LEAD[a.rows])
        for variant in VARIANTS:
            f = sched.with_body(sws._serial(sched.body)) if variant == "serial" else sched
            kw = {"tir_pipeline": register_tir_pipeline()} if variant == "one-launch" else {}
            lib = tvm.compile(tvm.IRModule({"main": f}), target=tgt, **kw)
            launches = lib.mod.inspect_source("ll").count("@__TVMBackendParallelLaunch, align")
            cell = ke.rotating_cell(lib, args_np, want, a.copies, f"{spec} ({variant})",
                                    spec=spec, variant=variant, launch_sites=launches)
            if cell is None:
                return 2
            cells.append(cell)
            print(f"built {spec} M={a.rows} {variant}: {launches} launch site(s), bit-identical", flush=True)
    load0 = os.getloadavg()
    ke.time_rotating_weights(cells, a.rounds)
    load1 = os.getloadavg()
    print(f"\n{a.target}, {a.threads} threads, {a.policy} policy, M={a.rows}, load {load0[0]:.2f} -> {load1[0]:.2f}")
    print(f"| kernel | {' | '.join(VARIANTS)} |\n|---|{'---|' * len(VARIANTS)}")
    rows = []
    for spec in dict.fromkeys(c["spec"] for c in cells):
        med = {c["variant"]: float(np.median(c["times"])) * 1e6 for c in cells if c["spec"] == spec}
        print(f"| {spec} | " + " | ".join(f"{med[v]:.1f} us" for v in VARIANTS) + " |")
        rows.append({"spec": spec, "median_us": med})
    if a.output:
        Path(a.output).write_text(json.dumps({"policy": a.policy, "target": a.target, "rows": a.rows,
                                              "threads": a.threads, "load": [load0[0], load1[0]],
                                              "kernels": rows,
                                              "launch_sites": {f"{c['spec']}/{c['variant']}": c["launch_sites"]
                                                               for c in cells}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
