"""Screen scale-only levers on a slice's worst sentences in the exact integer model (golden).

    python scripts/fidelity_worst_screen.py --report fid.json [--slice non-ascii] [--worst 8]
        [--text cal.txt] [-o screen.json]

Each lever is a QuantConfig change from the default scheme; the default MiniLM is recalibrated
on the default 300 STS-B train sentences (or ``--text``) and the worst sentences of the report
(the default artifact's) are scored through the golden executor (bit-identical to compiled).
A screen only: a lever that pays here must then be measured on every slice (eval --task fidelity).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LEVERS = {
    "default": {},
    "residual headroom 4": dict(residual_headroom=4.0),
    "ln headroom 2": dict(ln_channel_headroom=2.0),
    "gelu headroom 2": dict(gelu_channel_headroom=2.0),
    "gelu floor 1/2": dict(gelu_channel_floor=0.5),
    "ln headroom 2 + gelu headroom 2 + residual 4": dict(ln_channel_headroom=2.0, gelu_channel_headroom=2.0,
                                                          residual_headroom=4.0),
}


def main() -> int:
    from ibert_tvm.datasets import default_calibration_sentences
    from ibert_tvm.fidelity import cosine_rows, fp32_embedder, golden_embedder
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.probe import probe_slices
    from ibert_tvm.quantization.calibrate import calibrate
    from ibert_tvm.quantization.config import QuantConfig

    ap = argparse.ArgumentParser()
    ap.add_argument("--report", required=True)
    ap.add_argument("--slice", default="non-ascii")
    ap.add_argument("--worst", type=int, default=8)
    ap.add_argument("--only")
    ap.add_argument("--text", help="calibration text (one sentence a line) instead of the default 300")
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    ckpt = load_checkpoint("default")
    slices = probe_slices()
    off = 0
    for k, v in slices.items():
        if k == args.slice:
            break
        off += len(v)
    cos = np.array(json.loads(Path(args.report).read_text())["results"]["integer"]["cosines"])
    sents = slices[args.slice]
    idx = np.argsort(cos[off : off + len(sents)], kind="stable")[: args.worst]
    texts = [sents[i] for i in idx]
    ref = fp32_embedder(ckpt)(texts)
    calib = ([ln for ln in Path(args.text).read_text(encoding="utf-8").splitlines() if ln.strip()] if args.text
             else default_calibration_sentences(300))
    res = {}
    print(f"| lever ({args.slice}, {len(texts)} worst, golden) | mean | min |\n|---|---:|---:|")
    for name, kw in LEVERS.items():
        if args.only and name not in args.only.split(","):
            continue
        qm = calibrate(ckpt, calib, QuantConfig(**{**QuantConfig().to_dict(), **kw}))
        c = cosine_rows(golden_embedder(qm, batch_size=8)(texts), ref)
        res[name] = c.tolist()
        print(f"| {name} | {c.mean():.4f} | {c.min():.4f} |", flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
