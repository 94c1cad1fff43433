"""Screen calibration levers for the fidelity tail (docs/fidelity.md, "Levers").

    python scripts/fidelity_levers.py [--per-slice 100] [--golden] [-o levers.json]

Each lever is a QuantConfig variant (and/or a calibration corpus). The default MiniLM is
calibrated with it, then scored on the probe set (the first --per-slice sentences of each
slice): by default with the float fake-quant screen (every activation point rounded to its
grid in the FP32 model: fast), with --golden through the integer golden executor (exact, slow).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LEVERS = {
    "baseline (max per channel)": {},
    "gelu floor 1/16": dict(gelu_channel_floor=1 / 16),
    "gelu floor 1/8": dict(gelu_channel_floor=1 / 8),
    "gelu floor 1/4": dict(gelu_channel_floor=1 / 4),
    "gelu per-tensor": dict(gelu_channel_floor=1.0),
    "gelu headroom 2": dict(gelu_channel_headroom=2.0),
    "gelu headroom 4": dict(gelu_channel_headroom=4.0),
    "gelu headroom 2 + floor 1/8": dict(gelu_channel_headroom=2.0, gelu_channel_floor=1 / 8),
    "ln headroom 2": dict(ln_channel_headroom=2.0),
    "gelu floor 1/8 + ln headroom 2": dict(gelu_channel_floor=1 / 8, ln_channel_headroom=2.0),
    "percentile (q/k/v/ctx)": dict(calibration="percentile"),
    "gelu floor 1/3": dict(gelu_channel_floor=1 / 3),
    "gelu floor 1/2": dict(gelu_channel_floor=1 / 2),
    "gelu floor 1/4 + ln headroom 2": dict(gelu_channel_floor=1 / 4, ln_channel_headroom=2.0),
    "gelu floor 1/4 + ln floor 1/4": dict(gelu_channel_floor=1 / 4, ln_channel_floor=1 / 4),
    "w8 per-tensor acts": dict(per_channel_acts=False),
    "w4 g128 folded (old low-bit default)": dict(weight_bits=4, weight_groups=128),
    "w4 g128 per-tensor acts (new low-bit default)": dict(weight_bits=4, weight_groups=128, per_channel_acts=False),
}


def main() -> int:
    from ibert_tvm.datasets import default_calibration_sentences
    from ibert_tvm.fidelity import golden_embedder, cosine_rows, fp32_embedder, stats
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.probe import probe_slices
    from ibert_tvm.quantization.calibrate import calibrate
    from ibert_tvm.quantization.config import QuantConfig
    from ibert_tvm.quantization.diagnose import fake_quant_cosines

    ap = argparse.ArgumentParser()
    ap.add_argument("--per-slice", type=int, default=100)
    ap.add_argument("--offset", type=int, default=0, help="skip the first N sentences of each slice (the screen "
                    "used the first 100: confirm a choice on the next ones)")
    ap.add_argument("--golden", action="store_true")
    ap.add_argument("--only", help="comma-separated lever names")
    ap.add_argument("--calibration-n", type=int, default=300)
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    ckpt = load_checkpoint("default")
    slices = {k: v[args.offset : args.offset + args.per_slice] for k, v in probe_slices().items()}
    texts = [s for v in slices.values() for s in v]
    calib = default_calibration_sentences(args.calibration_n)
    ref = fp32_embedder(ckpt)(texts) if args.golden else None
    levers = {k: v for k, v in LEVERS.items() if not args.only or k in args.only.split(",")}
    base = dict(gelu_channel_floor=1e-4)  # the rule before issue 15: levers are relative to it
    res = {}
    for name, kw in levers.items():
        t0 = time.time()
        qm = calibrate(ckpt, calib, QuantConfig(**{**QuantConfig().to_dict(), **base, **kw}))
        if args.golden:
            cos = cosine_rows(golden_embedder(qm)(texts), ref)
        else:
            cos = fake_quant_cosines(ckpt, qm, texts)
        per, i = {}, 0
        for k, v in slices.items():
            per[k] = stats(cos[i : i + len(v)])
            i += len(v)
        per["all"] = stats(cos)
        res[name] = per
        worst_p1 = min(s["p1"] for k, s in per.items() if k != "all")
        worst = min(s["worst"] for k, s in per.items() if k != "all")
        print(f"| {name} | {per['all']['mean']:.4f} | {per['all']['p1']:.4f} | {worst_p1:.4f} | {worst:.4f} | "
              f"{100 * per['all']['below_090']:.1f}% | ({time.time() - t0:.0f} s)", flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
