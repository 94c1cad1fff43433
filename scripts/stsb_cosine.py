"""Cosine of a compiled embedding model to its FP32 model on the STS-B dev sentences.

    python scripts/stsb_cosine.py MODEL_DIR OUT_DIR [-o result.json]

Every distinct sentence of the 1,500 STS-B dev pairs (``ibert_tvm.datasets.stsb("dev")``, 2,910),
in input order, batches of 32 padded to their longest: the compiled integer embedding
(``ibert_tvm.load(OUT_DIR).encode_int``) against the FP32 PyTorch model of ``MODEL_DIR``, pooled as
the dir says (``op.pooling.float_pool``). Prints n, mean, median, 1st percentile, worst and the
share below 0.90 as JSON. (Used for all-mpnet-base-v2 in docs/fidelity.md.)
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("artifact")
    ap.add_argument("-n", type=int, default=0, help="only the first N sentences")
    ap.add_argument("-o", "--output")
    a = ap.parse_args(argv)

    import torch

    import ibert_tvm
    from ibert_tvm.datasets import stsb
    from ibert_tvm.errors import IBertTVMError
    from ibert_tvm.model.hf_loader import load_checkpoint, load_tokenizer_json
    from ibert_tvm.op.pooling import float_pool
    from ibert_tvm.quantization.calibrate import torch_inputs
    from ibert_tvm.support.tokenize import Tokenizer

    try:
        ckpt = load_checkpoint(a.model)
        model = ibert_tvm.load(a.artifact)
    except IBertTVMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sents = list(dict.fromkeys(s for p in stsb("dev") for s in (p.sentence1, p.sentence2)))
    sents = sents[: a.n] if a.n else sents
    t = time.perf_counter()
    q, _ = model.encode_int(sents, batch_size=32)
    t_int = time.perf_counter() - t
    tok = Tokenizer(load_tokenizer_json(ckpt.path), ckpt.max_positions, ckpt.family, ckpt.pad_token_id)
    takes = inspect.signature(ckpt.model.forward).parameters  # MPNet, DistilBERT: no token_type_ids
    refs, t = [], time.perf_counter()
    for i in range(0, len(sents), 32):
        enc = tok(sents[i : i + 32])
        with torch.no_grad():
            h = ckpt.model(**torch_inputs({k: v for k, v in enc.items() if k in takes})).last_hidden_state
        refs.append(float_pool(ckpt.pooling, h.double().numpy(), enc["attention_mask"]))
    t_fp32 = time.perf_counter() - t
    ref, ours = np.concatenate(refs), q.astype(np.float64)
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    res = dict(n=len(sents), mean=float(cos.mean()), median=float(np.median(cos)), p1=float(np.percentile(cos, 1)),
               worst=float(cos.min()), below_090=float((cos < 0.9).mean()), integer_seconds=t_int, fp32_seconds=t_fp32)
    print(json.dumps(res))
    if a.output:
        with open(a.output, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
