"""The x86-amx tile GEMM's software prefetch in isolation, weights streamed from L3.

    python bench/amx_prefetch.py [--shapes bert-ffn-in:gelu,bert-ffn-out:residual,...] [--rows 32]
                                 [--modes none,ahead,next-panel] [--copies 40] [--rounds 7] [-o out.json]

Each kernel is ``bench/kernel_epilogue.py``'s (the TE the model lowers to: a VNNI linear and its
fused epilogue, ``plain`` / ``gelu`` / ``residual`` / ``gemm``), scheduled by ``AmxLinearRule``
with the tile's prefetch mode set (``schedules.x86_amx.PREFETCH_MODES``: ``ahead``, what compile
builds; ``none``; ``next-panel``), built for x86-amx and checked bit for bit against the numpy
references. In the model a 1 x 32 linear reads its weight from L3 (BERT-Base: 85 MB a forward);
here ``--copies`` copies of the weight (40 x 2.4 MB) are fed in rotation so that it does too
(one copy would stay in L2 and hide what prefetching is for). Time per call, median over rounds
of the modes interleaved; ratios against the first mode. Timings are for reading, never
asserted; use a quiet machine (``uptime``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="bert-ffn-in:gelu,bert-ffn-in:plain,bert-ffn-out:residual,"
                    "minilm-ffn-in:plain,minilm-ffn-out:residual", help="SHAPE:KIND list (kernel_epilogue.SHAPES)")
    ap.add_argument("--rows", type=int, default=32, help="M: 32 (1 x 32), 128, 256 or 1024 (8 x 128)")
    ap.add_argument("--modes", default="none,ahead,next-panel")
    ap.add_argument("--copies", type=int, default=40, help="weight copies fed in rotation (default 40)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--output")
    a = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(a.threads)
    import numpy as np

    import kernel_epilogue as ke
    from ibert_tvm.schedules import x86_amx
    from ibert_tvm.support.amx import require_amx

    require_amx("bench/amx_prefetch.py")
    cells = []
    for spec in a.shapes.split(","):
        shape, kind = spec.split(":")
        k, n, _ = ke.SHAPES[shape]
        func, make_args = ke.make_kernel(kind, k, n)
        args_np, want = make_args(*ke.LEAD[a.rows])
        for mode in a.modes.split(","):
            x86_amx.PREFETCH = mode
            try:
                lib = ke.build(func, x86_amx.AmxLinearRule(), "x86-amx")
            finally:
                x86_amx.PREFETCH = "ahead"
            cell = ke.rotating_cell(lib, args_np, want, a.copies, f"{spec} ({mode})", spec=spec, mode=mode)
            if cell is None:
                return 2
            cells.append(cell)
            print(f"built {spec} M={a.rows} prefetch={mode}: bit-identical", flush=True)
    load0 = os.getloadavg()
    ke.time_rotating_weights(cells, a.rounds)
    print(f"\n{a.threads} threads, M={a.rows}, {a.copies} weight copies, {a.rounds} rounds; "
          f"load {load0} -> {os.getloadavg()}")
    rows, first = [], {}
    for c in cells:
        us = float(np.median(c["times"])) * 1e6
        first.setdefault(c["spec"], us)
        rows.append({"spec": c["spec"], "mode": c["mode"], "us": us, "vs_first": us / first[c["spec"]],
                     "times_us": [t * 1e6 for t in c["times"]]})
        print(f"{c['spec']:28s} {c['mode']:11s} {us:8.1f} us  {us / first[c['spec']]:.3f}x")
    if a.output:
        Path(a.output).write_text(json.dumps({"argv": sys.argv[1:], "rows": rows, "load_start": load0,
                                              "load_end": os.getloadavg(),
                                              "time": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
