"""Fidelity: per sentence, the cosine between the integer-only and the FP32 embedding, per slice.

A task score averages; a retrieval user meets the single worst sentence. So this reports the
tail of each slice: n, mean, median, 1st percentile, worst, and the share below 0.90.

    report = fidelity_report(slices, ckpt, integer_embedder(artifact), batch_size=32)
    print(fidelity_table(report))

The integer side is a compiled ``out/`` (:class:`~ibert_tvm.deploy.runtime.CompiledModel`) or a
quantized ``q/`` run through the numpy golden executor (bit-identical to any compiled build of it,
``model/golden.py``). Texts longer than the model's maximum are truncated on both sides alike.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import IBertTVMError

THRESHOLD = 0.90
Embedder = Callable[[Sequence[str]], np.ndarray]  # texts -> [N, H] float64 embeddings, rows in input order


def stats(cos: np.ndarray) -> dict:
    """n, mean, median, 1st percentile (linear interpolation), worst, share below 0.90."""
    c = np.asarray(cos, dtype=np.float64)
    if c.size == 0:
        return dict(n=0, mean=None, median=None, p1=None, worst=None, below_090=None)
    return dict(n=int(c.size), mean=float(c.mean()), median=float(np.median(c)), p1=float(np.percentile(c, 1)),
                worst=float(c.min()), below_090=float(np.mean(c < THRESHOLD)))


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-300)


# -- embedders ------------------------------------------------------------------------------------------------
def _tokenizer_of(ckpt):
    from .model.hf_loader import load_tokenizer_json
    from .support.tokenize import Tokenizer

    return Tokenizer(load_tokenizer_json(ckpt.path), ckpt.max_positions, ckpt.family, ckpt.pad_token_id)


def fp32_embedder(ckpt, *, batch_size: int = 32, progress=None) -> Embedder:
    """The FP32 PyTorch model: its last hidden state pooled as the model dir says (mean by default)."""
    from .deploy.batching import run_batched
    from .evaluate import torch_encoder

    if ckpt.head != "embedding":
        raise IBertTVMError(f"fidelity compares sentence embeddings; {ckpt.path} is a classifier "
                            f"({ckpt.architecture}): use an embedding model (e.g. --model default)")
    run = torch_encoder(ckpt.model, "embedding", ckpt.pooling)
    tok = _tokenizer_of(ckpt)
    return lambda texts: run_batched(run, tok, list(texts), batch_size=batch_size, truncate=True, progress=progress)


def compiled_embedder(compiled, *, batch_size: int = 32, progress=None) -> Embedder:
    scale = compiled.output_scale
    return lambda texts: compiled.run_text(list(texts), batch_size=batch_size, truncate=True,
                                           progress=progress).astype(np.float64) * scale


def golden_embedder(qm, *, batch_size: int = 32, progress=None) -> Embedder:
    """A quantized ``q/`` through the numpy golden executor (exact integers; float64 matmuls that
    are exact at these sizes, :func:`ibert_tvm.quantization.qat.integer_forward`)."""
    from .deploy.batching import run_batched
    from .model.plan import ModelPlan
    from .quantization.qat import integer_forward
    from .support.tokenize import Tokenizer

    d = qm.dims
    plan = ModelPlan(qm)
    tok = Tokenizer(qm.tokenizer_json, d["max_seq"], d["family"], d["pad_id"])
    scale = plan.out_scale

    def run(enc):
        return integer_forward(plan, {k: v.astype(np.int32) for k, v in enc.items()})[0]

    return lambda texts: run_batched(run, tok, list(texts), batch_size=batch_size, truncate=True,
                                     progress=progress).astype(np.float64) * scale


def open_integer(path, ckpt, *, batch_size: int = 32, progress=None) -> tuple[Embedder, dict]:
    """``path`` is a compiled ``out/`` (has ``manifest.json``) or a quantized ``q/``; it must come
    from ``ckpt``. -> (embedder, description for the report)."""
    from .quantization.artifact import META

    p = Path(path)
    if (p / "manifest.json").is_file():
        from .deploy.runtime import CompiledModel
        from .evaluate import check_pair
        from .model.hf_loader import load_tokenizer_json

        compiled = CompiledModel(p)
        check_pair(ckpt, compiled, load_tokenizer_json(ckpt.path))
        m = compiled.manifest
        if m.get("head") != "embedding":
            raise IBertTVMError(f"{p} has a {m.get('head')} head: fidelity compares sentence embeddings")
        desc = dict(path=str(p), kind="compiled", target=m.get("target"),
                    quantization=(m.get("model") or {}).get("quantization"),
                    identity=(m.get("model") or {}).get("identity"))
        return compiled_embedder(compiled, batch_size=batch_size, progress=progress), desc
    if (p / META).is_file():
        from .quantization.artifact import QuantizedModel

        qm = QuantizedModel.load(p)
        src = (qm.source or {}).get("model_hash")
        if src != ckpt.model_hash:
            raise IBertTVMError(f"{p} was not calibrated from {ckpt.path}: its {META} source.model_hash is "
                                f"{str(src)[:12]}..., the model's is {ckpt.model_hash[:12]}...")
        if qm.dims.get("head") != "embedding":
            raise IBertTVMError(f"{p} has a {qm.dims.get('head')} head: fidelity compares sentence embeddings")
        desc = dict(path=str(p), kind="quantized (golden executor, bit-identical to compiled)",
                    quantization=qm.config.to_dict(), identity=qm.identity)
        return golden_embedder(qm, batch_size=batch_size, progress=progress), desc
    raise IBertTVMError(f"--artifact {p}: neither a compiled out/ (manifest.json) nor a quantized q/ ({META})")


# -- the report -----------------------------------------------------------------------------------------------
def fidelity_report(slices: dict[str, list[str]], reference: Embedder, columns: dict[str, Embedder], *,
                    worst_examples: int = 5, log=print) -> dict:
    """Cosine of each column's embedding to ``reference``'s, per sentence; stats per slice and overall."""
    order = [(name, s) for name, sents in slices.items() for s in sents]
    if not order:
        raise IBertTVMError("fidelity needs at least one sentence")
    texts = [s for _, s in order]
    t0 = time.time()
    ref = reference(texts)
    log(f"fp32: {len(texts)} sentences in {time.time() - t0:.1f} s")
    results = {}
    for col, emb in columns.items():
        t0 = time.time()
        cos = cosine_rows(emb(texts), ref)
        log(f"{col}: {len(texts)} sentences in {time.time() - t0:.1f} s")
        per, i = {}, 0
        for name, sents in slices.items():
            c = cos[i : i + len(sents)]
            worst = np.argsort(c, kind="stable")[:worst_examples]
            per[name] = {**stats(c), "worst_sentences": [[float(c[j]), sents[j]] for j in worst]}
            i += len(sents)
        per["all"] = stats(cos)
        results[col] = {"slices": per, "cosines": [round(float(x), 6) for x in cos]}
    return {"format": "ibert-tvm-fidelity/1", "threshold": THRESHOLD, "slices": {k: len(v) for k, v in slices.items()},
            "results": results}


def fidelity_table(report: dict) -> str:
    lines = []
    for col, r in report["results"].items():
        lines += [f"| {col}: slice | n | mean | median | 1st pct | worst | share < 0.90 |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, s in r["slices"].items():
            if not s["n"]:
                lines.append(f"| {name} | 0 | | | | | |")
                continue
            lines.append(f"| {name} | {s['n']} | {s['mean']:.4f} | {s['median']:.4f} | {s['p1']:.4f} | "
                         f"{s['worst']:.4f} | {100 * s['below_090']:.1f}% |")
        lines.append("")
    return "\n".join(lines)


def read_text_file(path) -> list[str]:
    """One sentence per non-empty line of a UTF-8 text file (``--text``), inner whitespace collapsed."""
    from .datasets import read_sentences

    return [" ".join(ln.split()) for ln in read_sentences(path, "--text")]
