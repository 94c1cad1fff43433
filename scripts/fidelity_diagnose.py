"""Diagnose the fidelity tail of a quantized model (docs/fidelity.md was written from its output).

    python scripts/fidelity_diagnose.py Q_DIR [--model default|MODEL_DIR] [--report base.json]
        [--per-slice N] [-o diag.json]

Any supported architecture: the points and linears are found through ``HFCheckpoint.module``
(the architecture's name map), so DistilBERT, ALBERT and MPNet work as BERT does.

1. Saturation counts per quantization point on the calibration text (STS-B train, 300) and on
   the probe set: how many FP32 values fall outside the calibrated integer range.
2. The saturating channels of the GELU outputs: calibration max vs probe max per channel.
3. ``diagnose.ablate`` (one kind of point quantized alone) on the worst probe sentences of an
   ``eval --task fidelity`` report (``--report``) and on a random probe sample.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    from ibert_tvm.datasets import default_calibration_sentences
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.probe import probe_slices
    from ibert_tvm.quantization.artifact import QuantizedModel
    from ibert_tvm.quantization.diagnose import ablate, format_table, saturation, saturation_table

    ap = argparse.ArgumentParser()
    ap.add_argument("q")
    ap.add_argument("--model", default="default")
    ap.add_argument("--report", help="an eval --task fidelity JSON of this q/ (for the worst sentences)")
    ap.add_argument("--worst", type=int, default=10)
    ap.add_argument("--per-slice", type=int, help="only the first N probe sentences of each slice (a big model)")
    ap.add_argument("--random", type=int, default=100, help="the random probe sample that is ablated")
    ap.add_argument("--ablate-slice", action="append", default=[], help="also ablate on this slice (repeatable)")
    ap.add_argument("--no-saturation", action="store_true", help="ablations only (a big model on a busy machine)")
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    ckpt = load_checkpoint(args.model)
    qm = QuantizedModel.load(args.q)
    calib = default_calibration_sentences(300)
    slices = probe_slices()
    if args.per_slice:
        slices = {k: v[: args.per_slice] for k, v in slices.items()}
    probe = [s for v in slices.values() for s in v]
    res: dict = {}
    if not args.no_saturation:
        sats = {}
        for name, sents in (("calibration", calib), ("probe", probe)):
            sats[name] = saturation(ckpt, qm, sents)
            print(f"\n## saturation on {name} ({len(sents)} sentences)\n")
            print(saturation_table(sats[name]))
        res["saturation"] = {k: {p: {kk: (vv.tolist() if isinstance(vv, np.ndarray) else vv) for kk, vv in o.items()}
                                 for p, o in v.items()} for k, v in sats.items()}
        # per-slice saturation of the gelu points
        print("\n## gelu saturation per slice (share of tokens with any saturated channel, all layers)\n")
        res["gelu_by_slice"] = {}
        for sl, sents in slices.items():
            s = saturation(ckpt, qm, sents)
            g = {p: o for p, o in s.items() if p.endswith(".gelu")}
            toks = sum(o["tokens"] for o in g.values())
            hit = sum(o["tokens_saturated"] for o in g.values())
            sent = max(o["sentences_saturated"] for o in g.values())
            res["gelu_by_slice"][sl] = dict(token_share=hit / max(toks, 1), sentences_max_layer=sent, n=len(sents))
            print(f"| {sl} | {hit / max(toks, 1):.2%} of tokens | up to {sent}/{len(sents)} sentences in one layer |")
        # which gelu channels
        print("\n## GELU channels that saturate on the probe set\n")
        rows = []
        for p, o in sats["probe"].items():
            if not p.endswith(".gelu"):
                continue
            scale = np.asarray(qm.scale(p))
            for c in np.argsort(-o["channel_saturated"])[:5]:
                if o["channel_saturated"][c] == 0:
                    break
                cal_ratio = sats["calibration"][p]["channel_ratio"][c]
                rows.append((p, int(c), int(o["channel_saturated"][c]), float(scale[c] * 127), float(o["channel_ratio"][c]),
                             float(cal_ratio), float(np.median(scale) * 127), float(scale.max() * 127)))
        print("| point | channel | saturated values (probe) | calibrated range | probe max / range | calib max / range "
              "| median channel range | largest channel range |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in sorted(rows, key=lambda r: -r[2])[:25]:
            print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.3g} | {r[4]:.1f}x | {r[5]:.2f}x | {r[6]:.3g} | {r[7]:.3g} |")
        res["gelu_channels"] = rows
    if args.report:
        rep = json.loads(Path(args.report).read_text())
        cos = np.array(rep["results"]["integer"]["cosines"])
        if len(cos) != len(probe):
            ap.error(f"--report has {len(cos)} cosines, the probe set here has {len(probe)} sentences (same --per-slice?)")
        worst = [probe[i] for i in np.argsort(cos, kind="stable")[: args.worst]]
        print(f"\n## ablation on the {args.worst} worst probe sentences\n")
        for s in worst:
            print("-", s[:100])
        rows = ablate(ckpt, qm, worst, softmax_bits=(8, 16))
        print(format_table(rows))
        res["ablate_worst"] = rows
    rng = np.random.default_rng(0)
    sample = [probe[i] for i in np.sort(rng.choice(len(probe), min(args.random, len(probe)), replace=False))]
    print(f"\n## ablation on {len(sample)} random probe sentences\n")
    rows = ablate(ckpt, qm, sample, softmax_bits=(8, 16))
    print(format_table(rows))
    res["ablate_random100"] = rows
    for sl in args.ablate_slice:
        print(f"\n## ablation on the {sl} slice ({len(slices[sl])} sentences)\n")
        rows = ablate(ckpt, qm, slices[sl], softmax_bits=(8, 16))
        print(format_table(rows))
        res[f"ablate_{sl}"] = rows
    if args.output:
        Path(args.output).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
