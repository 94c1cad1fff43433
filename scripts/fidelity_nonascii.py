"""Diagnose the non-ascii probe slice's tail on the default MiniLM (docs/fidelity.md, "The non-ascii tail").

    python scripts/fidelity_nonascii.py Q_DIR --report fid.json [--worst 20] [-o nonascii.json]

``--report``: an ``eval --task fidelity`` JSON of Q_DIR (or of its compiled out/: identical
cosines) on the full probe set. For the non-ascii slice it prints:

1. the token make-up of each sentence (tokens, share of [UNK], tokens per word) against its
   cosine, and the rank correlation of each with the cosine;
2. ``diagnose.ablate`` (one kind of point rounded alone, the softmax output included) on the
   worst sentences, and the leave-one-kind-out fake-quant (every activation point rounded but
   one kind): which kind's removal recovers the most;
3. saturation per point on the worst sentences (against the calibration text);
4. through the golden executor's trace on the worst sentences: the per-layer cosine of the
   hidden state to FP32, and the per-token cosine of the last hidden state split by token type
   ([CLS], [SEP], [UNK], other): is the error made by a few tokens or everywhere?
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> int:
    import torch

    from ibert_tvm.datasets import default_calibration_sentences
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.model.plan import ModelPlan
    from ibert_tvm.probe import probe_slices
    from ibert_tvm.quantization.artifact import QuantizedModel
    from ibert_tvm.quantization.qat import _fast_matmuls
    from ibert_tvm.quantization.calibrate import quantization_points, torch_inputs
    from ibert_tvm.quantization.diagnose import (_kind, ablate, fake_quant_cosines, format_table, saturation,
                                                 saturation_table)
    from ibert_tvm.support.tokenize import Tokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("q")
    ap.add_argument("--report", required=True)
    ap.add_argument("--slice", default="non-ascii")
    ap.add_argument("--worst", type=int, default=20)
    ap.add_argument("--trace", type=int, default=8, help="golden-trace this many of the worst sentences")
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    ckpt = load_checkpoint("default")
    qm = QuantizedModel.load(args.q)
    slices = probe_slices()
    rep = json.loads(Path(args.report).read_text())
    allcos = np.array(rep["results"]["integer"]["cosines"])
    off = 0
    for k, v in slices.items():
        if k == args.slice:
            break
        off += len(v)
    sents = slices[args.slice]
    cos = allcos[off : off + len(sents)]
    d = qm.dims
    tok = Tokenizer(qm.tokenizer_json, d["max_seq"], d["family"], d["pad_id"])
    vocab = json.loads(qm.tokenizer_json)["model"]["vocab"]
    unk = vocab["[UNK]"]
    res: dict = {}

    # 1. token make-up
    n_tok, unk_share, per_word = [], [], []
    for s in sents:
        ids = tok([s], truncate=True)["input_ids"][0]
        real = ids[ids != d["pad_id"]][1:-1]
        n_tok.append(len(real))
        unk_share.append(float(np.mean(real == unk)) if len(real) else 0.0)
        per_word.append(len(real) / max(len(s.split()), 1))
    n_tok, unk_share, per_word = map(np.array, (n_tok, unk_share, per_word))
    order = np.argsort(cos, kind="stable")
    worst = order[: args.worst]
    rest = order[args.worst :]
    print(f"## {args.slice}: token make-up against the cosine ({len(sents)} sentences)\n")
    print("| | tokens (mean) | [UNK] share (mean) | tokens per word (mean) |")
    print("|---|---:|---:|---:|")
    for name, idx in ((f"worst {args.worst}", worst), ("the rest", rest)):
        print(f"| {name} | {n_tok[idx].mean():.1f} | {unk_share[idx].mean():.1%} | {per_word[idx].mean():.2f} |")
    rho = dict(tokens=spearman(n_tok, cos), unk_share=spearman(unk_share, cos), tokens_per_word=spearman(per_word, cos))
    print("\nSpearman rank correlation with the cosine: " + ", ".join(f"{k} {v:+.2f}" for k, v in rho.items()))
    print(f"\n| cosine | tokens | [UNK] | tokens/word | sentence |\n|---:|---:|---:|---:|---|")
    for i in worst:
        print(f"| {cos[i]:.4f} | {n_tok[i]} | {unk_share[i]:.0%} | {per_word[i]:.2f} | {sents[i][:60]} |")
    res["makeup"] = dict(rho=rho, worst=[dict(cos=float(cos[i]), tokens=int(n_tok[i]), unk=float(unk_share[i]),
                                               per_word=float(per_word[i])) for i in worst],
                         rest=dict(tokens=float(n_tok[rest].mean()), unk=float(unk_share[rest].mean()),
                                   per_word=float(per_word[rest].mean())))
    wsents = [sents[i] for i in worst]

    # 2. ablation, and leave-one-kind-out
    print(f"\n## one kind rounded alone, on the {args.worst} worst\n")
    rows = ablate(ckpt, qm, wsents, softmax_bits=(8, 16))
    print(format_table(rows))
    res["ablate_worst"] = rows
    kinds = sorted({_kind(n) for n, _, _ in quantization_points(ckpt) if n in qm.scales})
    every = fake_quant_cosines(ckpt, qm, wsents)
    print(f"\n## every activation point rounded (float fake-quant): mean {every.mean():.4f}, min {every.min():.4f}; "
          f"the integer model: mean {cos[worst].mean():.4f}, min {cos[worst].min():.4f}\n")
    print("| every point rounded but | mean | min | gain in mean |\n|---|---:|---:|---:|")
    loo = []
    for k in kinds:
        c = fake_quant_cosines(ckpt, qm, wsents, kinds=[x for x in kinds if x != k])
        loo.append((k, float(c.mean()), float(c.min()), float(c.mean() - every.mean())))
    for r in sorted(loo, key=lambda r: -r[3]):
        print(f"| {r[0]} | {r[1]:.4f} | {r[2]:.4f} | {r[3]:+.4f} |")
    res["fake_quant_every"] = dict(mean=float(every.mean()), min=float(every.min()))
    res["leave_one_out"] = loo

    # 3. saturation
    print(f"\n## saturation on the {args.worst} worst\n")
    sat = saturation(ckpt, qm, wsents)
    print(saturation_table(sat, top=12))
    calib = default_calibration_sentences(300)
    res["saturation_worst"] = {p: dict(share=o["saturated"] / max(o["values"], 1),
                                       tokens=o["tokens_saturated"] / max(o["tokens"], 1),
                                       worst_ratio=float(o["channel_ratio"].max())) for p, o in sat.items()}

    # 4. golden trace: per-layer and per-token
    plan = ModelPlan(qm)
    tsents = wsents[: args.trace]
    enc = tok(tsents, truncate=True)
    trace: dict = {}
    with _fast_matmuls():  # exact float64 products, as the golden embedder's
        run_golden(plan, **{k: v.astype(np.int32) for k, v in enc.items()}, trace=trace)
    with torch.no_grad():
        out = ckpt.model(**torch_inputs(enc), output_hidden_states=True)
    hs = [h.double().numpy() for h in out.hidden_states]  # embeddings, layer0 .. layerN-1
    m = enc["attention_mask"].astype(bool)

    def pooled_cos(a, b):
        mm = m[:, :, None]
        pa, pb = (a * mm).sum(1), (b * mm).sum(1)
        return (pa * pb).sum(1) / np.linalg.norm(pa, axis=1) / np.linalg.norm(pb, axis=1)

    print(f"\n## golden trace of the {len(tsents)} worst: pooled cosine of each layer's output to FP32\n")
    print("| layer output | mean pooled cosine | min |\n|---|---:|---:|")
    names = ["embeddings.ln"] + [f"layer{i}.ln2" for i in range(d["layers"])]
    per_layer = []
    for j, n in enumerate(names):
        x = trace[n].astype(np.float64) * np.asarray(qm.scale(n))
        c = pooled_cos(x, hs[j])
        per_layer.append((n, float(c.mean()), float(c.min())))
        print(f"| {n} | {c.mean():.4f} | {c.min():.4f} |")
    res["per_layer"] = per_layer
    last = trace[names[-1]].astype(np.float64) * np.asarray(qm.scale(names[-1]))
    ref = hs[-1]
    tc = (last * ref).sum(-1) / np.maximum(np.linalg.norm(last, axis=-1) * np.linalg.norm(ref, axis=-1), 1e-30)
    ids = enc["input_ids"]
    lengths = m.sum(1)
    kinds_tok = np.full(ids.shape, "other", dtype=object)
    kinds_tok[:, 0] = "[CLS]"
    kinds_tok[np.arange(len(ids)), lengths - 1] = "[SEP]"
    kinds_tok[(ids == unk) & m] = "[UNK]"
    print("\n## per-token cosine of the last hidden state (integer vs FP32), by token\n")
    print("| token | n | mean | min | share of the pooled error |\n|---|---:|---:|---:|---:|")
    # the pooled error: sum over tokens of (int - fp) after scaling int to fp's norm per sentence
    err = np.zeros(ids.shape)
    for b in range(len(ids)):
        pa, pb = (last[b] * m[b][:, None]).sum(0), (ref[b] * m[b][:, None]).sum(0)
        a = pa @ pb / (pa @ pa)  # the integer sum rescaled to FP32's
        err[b] = np.linalg.norm(a * last[b] - ref[b], axis=-1) ** 2 * m[b]
    tok_rows = []
    for k in ("[CLS]", "[SEP]", "[UNK]", "other"):
        sel = (kinds_tok == k) & m
        if sel.any():
            share = float(err[sel].sum() / err.sum())
            tok_rows.append((k, int(sel.sum()), float(tc[sel].mean()), float(tc[sel].min()), share))
            print(f"| {k} | {sel.sum()} | {tc[sel].mean():.4f} | {tc[sel].min():.4f} | {share:.1%} |")
    res["per_token"] = tok_rows
    if args.output:
        Path(args.output).write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
