"""Which integer approximation costs the most? The golden executor with one kind of integer op
replaced by its exact float counterpart on the same integer grids (docs/fidelity.md).

    python scripts/fidelity_hybrid.py Q_DIR --report fid.json [--slice non-ascii] [--worst 8]

For the worst sentences of a slice (from an ``eval --task fidelity`` report of Q_DIR), the cosine
to FP32 of the integer model (golden executor) with:

* ``softmax exact``: i-softmax replaced by the float softmax of the same int32 scores, rounded to
  the same uint8 grid (2^-8): what i-exp's polynomial costs;
* ``softmax 16-bit``: i-softmax with uint16 outputs (2^-16; its P V products in exact int64):
  what the uint8 probability grid costs;
* ``gelu exact``: i-GELU replaced by the float GELU of the same int16 input, rounded to the same
  per-channel int8 output grid;
* ``layernorm exact``: every i-LayerNorm replaced by the float LayerNorm of the same int32 input,
  rounded to the same per-channel int8 grid;
* all of them exact (the remaining loss is the grids and the int8 weights).

A diagnosis tool only: the replacements are float and are never compiled.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class ExactSoftmax:
    def __init__(self, sm):
        self.scale, self.sm = sm.exp.scale, sm
        # each entry <= 256 p + 1/2, so a row sums to <= 2^8 + L/2 (as IntSoftmax's 8-bit bound)
        self.row_sum_bound = 256 + sm.max_len // 2

    def numpy(self, x, mask):
        z = x.astype(np.float64) * self.scale
        m = mask.astype(bool)[:, None, None, :]
        z = np.where(m, z, -np.inf)
        z = z - z.max(-1, keepdims=True)
        e = np.where(m, np.exp(z), 0.0)
        p = e / e.sum(-1, keepdims=True)
        return np.clip(np.floor(p * 256 + 0.5), 0, 255).astype(np.uint8)


class ExactGelu:
    def __init__(self, g, s_out):
        self.s_in, self.s_out = g.scale, np.asarray(s_out, np.float64)

    def numpy_q(self, q):
        from scipy.special import erf

        x = q.astype(np.float64) * self.s_in
        y = 0.5 * x * (1 + erf(x / math.sqrt(2)))
        return np.clip(np.round(y / self.s_out), -128, 127).astype(np.int8)


class ExactLayerNorm:
    def __init__(self, gamma, beta, s_out, eps):
        self.g, self.b, self.s, self.eps = gamma, beta, np.asarray(s_out, np.float64), eps

    def numpy(self, x):
        x = x.astype(np.float64)
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        # the input's scale does not matter but for eps (1e-12 here: negligible at any scale)
        y = (x - mu) / np.sqrt(var + self.eps / 1e6) * self.g + self.b
        return np.clip(np.round(y / self.s), -128, 127).astype(np.int8)


def variant(plan, qm, which: set):
    from ibert_tvm.op.int_softmax import IntSoftmax
    from ibert_tvm.op.requantize import Requantize

    p2 = copy.copy(plan)
    p2.layers = [copy.copy(L) for L in plan.layers]
    eps = 1e-12
    for i, L in enumerate(p2.layers):
        pre, hp = f"layer{i}.", f"encoder.layer.{i}."
        if "softmax16" in which:
            L.softmax = IntSoftmax(L.softmax.exp.scale, max_len=L.softmax.max_len, out_bits=16)
            s_v, s_ctx = qm.scale(pre + "v"), qm.scale(pre + "ctx")
            L.ctx = Requantize(2.0**-16 * s_v / s_ctx, in_bits=32, out_bits=8)
        if "softmax" in which:
            L.softmax = ExactSoftmax(L.softmax)
        if "gelu" in which:
            L.gelu = ExactGelu(L.gelu, qm.scale(pre + "gelu"))
        if "layernorm" in which:
            for ln, name, pt in (("ln1", "attention.output.LayerNorm", "ln1"), ("ln2", "output.LayerNorm", "ln2")):
                setattr(L, ln, ExactLayerNorm(qm.tensor(hp + name + ".gamma").astype(np.float64),
                                              qm.tensor(hp + name + ".beta").astype(np.float64),
                                              qm.scale(pre + pt), eps))
    if "layernorm" in which:
        p2.emb_ln = ExactLayerNorm(qm.tensor("embeddings.LayerNorm.gamma").astype(np.float64),
                                   qm.tensor("embeddings.LayerNorm.beta").astype(np.float64),
                                   qm.scale("embeddings.ln"), eps)
    return p2


def main() -> int:
    import ibert_tvm.model.golden as golden
    from ibert_tvm.deploy.batching import run_batched
    from ibert_tvm.fidelity import cosine_rows, fp32_embedder
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.model.plan import ModelPlan
    from ibert_tvm.probe import probe_slices
    from ibert_tvm.quantization.artifact import QuantizedModel
    from ibert_tvm.quantization.qat import _fast_matmuls
    from ibert_tvm.support.tokenize import Tokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("q")
    ap.add_argument("--report", required=True)
    ap.add_argument("--slice", default="non-ascii")
    ap.add_argument("--worst", type=int, default=8)
    ap.add_argument("--variants", default="base,softmax,softmax16,gelu,layernorm,softmax+gelu+layernorm")
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    ckpt = load_checkpoint("default")
    qm = QuantizedModel.load(args.q)
    slices = probe_slices()
    off = 0
    for k, v in slices.items():
        if k == args.slice:
            break
        off += len(v)
    cos = np.array(json.loads(Path(args.report).read_text())["results"]["integer"]["cosines"])
    sents = slices[args.slice]
    cos = cos[off : off + len(sents)]
    idx = np.argsort(cos, kind="stable")[: args.worst]
    texts = [sents[i] for i in idx]
    ref = fp32_embedder(ckpt)(texts)
    plan = ModelPlan(qm)
    d = qm.dims
    tok = Tokenizer(qm.tokenizer_json, d["max_seq"], d["family"], d["pad_id"])
    # uint16 probabilities (softmax16): golden's P V takes them with the softmax's row sum bound
    res = {}
    print(f"| integer model variant ({args.slice}, {len(texts)} worst) | mean | min |\n|---|---:|---:|")
    for v in args.variants.split(","):
        which = set() if v == "base" else set(v.split("+"))
        p2 = variant(plan, qm, which)

        def run(enc, p2=p2):
            with _fast_matmuls():
                return golden.run_golden(p2, **{k: x.astype(np.int32) for k, x in enc.items()})

        out = run_batched(run, tok, texts, batch_size=8, truncate=True).astype(np.float64)
        c = cosine_rows(out, ref)
        res[v] = c.tolist()
        print(f"| {v} | {c.mean():.4f} | {c.min():.4f} |", flush=True)
    print("\nreport's cosines of these sentences: mean %.4f, min %.4f" % (cos[idx].mean(), cos[idx].min()))
    if args.output:
        Path(args.output).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
