"""``ibert-tvm eval``: accuracy of FP32, integer-only and dynamic-int8 peers on one task, in one run.

    ibert-tvm eval --task stsb --model default [--artifact out/] [--peers torch-int8,ort-int8]
    ibert-tvm eval --task sentiment --model default          # the fine-tuned MiniLM classifier
    ibert-tvm eval --task tsv:glue/SST-2/dev.tsv --model my-sst2-model/ --artifact out/

Columns:

* ``fp32``: the PyTorch model as loaded.
* ``integer``: the compiled integer-only TVM artifact (``--artifact out/``, run through
  :class:`~ibert_tvm.deploy.runtime.CompiledModel`). Without ``--artifact`` the model is
  calibrated (``--scheme``, ``--calibration``) on 300 training sentences (the sentiment train
  split for ``sentiment``, STS-B train otherwise; never the evaluated split) and compiled for
  this CPU first (minutes for MiniLM; the result is cached under ``<cache>/compiled/``).
* peers (``--peers``): ``torch-int8`` = ``torch.ao.quantization.quantize_dynamic`` (int8 Linear
  weights, activations quantized per batch at run time, float everything else); ``ort-int8`` and
  ``ort-uint8`` = the model exported to ONNX and quantized by ``onnxruntime.quantization.
  quantize_dynamic`` (QInt8 / QUInt8 weights). A peer that cannot run is skipped with the reason.

Metrics: ``similarity`` tasks (STS-B, pair TSVs with real scores) = Spearman correlation of the
cosine of mean-pooled embeddings with the gold score; ``classification`` = accuracy.
Output: a JSON file and a markdown table (``-o``), both written only when everything succeeded.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import IBertTVMError
from .support.tokenize import INPUTS

PEERS = ("torch-int8", "ort-int8", "ort-uint8")


# -- metrics ----------------------------------------------------------------------------------
def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties get their average rank (scipy.stats.rankdata's 'average')."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(a, b) -> float:
    """Spearman's rank correlation (scipy if installed, else ranks + Pearson in numpy)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise IBertTVMError(f"spearman needs two equal-length vectors of >= 2 values, got {a.shape}, {b.shape}")
    try:
        from scipy.stats import spearmanr
    except ImportError:
        ra, rb = rankdata(a), rankdata(b)
        ra -= ra.mean()
        rb -= rb.mean()
        den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
        return float((ra * rb).sum() / den) if den > 0 else float("nan")
    return float(spearmanr(a, b).statistic)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-30)


# -- scoring one column -----------------------------------------------------------------------
Encoder = Callable[[dict], np.ndarray]  # tokenized batch -> [B, H] embeddings or [B, labels] logits


def score(task, tokenizer, run: Encoder, *, batch_size: int = 32, progress=None, desc: str = "") -> float:
    """Run one encoder over ``task`` and return its metric."""
    ex = task.examples
    if task.kind == "similarity":
        # embed each unique sentence once, longest-first batches of similar length (little padding)
        uniq = sorted({s for e in ex for s in (e.text, e.text_b)}, key=lambda s: (len(s), s))
        vecs = {}
        chunks = [uniq[i : i + batch_size] for i in range(0, len(uniq), batch_size)]
        for chunk in progress(chunks, desc) if progress else chunks:
            out = run(tokenizer(chunk))
            vecs.update(zip(chunk, out.astype(np.float64)))
        a = np.stack([vecs[e.text] for e in ex])
        b = np.stack([vecs[e.text_b] for e in ex])
        return spearman(cosine_rows(a, b), task.labels)
    chunks = [ex[i : i + batch_size] for i in range(0, len(ex), batch_size)]
    preds = []
    for chunk in progress(chunks, desc) if progress else chunks:
        texts = [e.text for e in chunk]
        pairs = [e.text_b for e in chunk] if task.pairs else None
        preds.append(np.argmax(run(tokenizer(texts, pairs)), axis=1))
    return float(np.mean(np.concatenate(preds) == task.labels.astype(np.int64)))


# -- encoders -----------------------------------------------------------------------------------
def _pool(hs: np.ndarray, mask: np.ndarray, pooling: str = "mean") -> np.ndarray:
    from .op.pooling import float_pool

    return float_pool(pooling, hs, mask)


def torch_encoder(model, head: str, pooling: str = "mean") -> Encoder:
    import torch

    from .quantization.calibrate import torch_inputs

    def run(enc):
        with torch.no_grad():
            res = model(**torch_inputs(enc))
        if head == "classifier":
            return res.logits.double().numpy()
        return _pool(res.last_hidden_state.double().numpy(), enc["attention_mask"], pooling)

    return run


def compiled_encoder(compiled) -> Encoder:
    scale = compiled.output_scale
    return lambda enc: compiled.run_ids(enc).astype(np.float64) * scale


def torch_int8_encoder(ckpt) -> Encoder:
    import copy

    import torch

    model = torch.ao.quantization.quantize_dynamic(copy.deepcopy(ckpt.model), {torch.nn.Linear}, dtype=torch.qint8)
    return torch_encoder(model, ckpt.head, ckpt.pooling)


_ONNX_INPUTS = INPUTS


def ort_encoder(ckpt, tokenizer, workdir: Path, weight_type: str) -> Encoder:
    """Export to ONNX (legacy TorchScript exporter), check it against PyTorch, quantize dynamically."""
    import warnings

    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from .model.reference import reference_module
    from .quantization.calibrate import torch_inputs

    head = ckpt.head

    probe = tokenizer(["A short probe sentence.", "A somewhat longer second probe sentence, with padding after."])
    args = tuple(torch_inputs(probe)[n] for n in _ONNX_INPUTS)
    fp32_path, q_path = workdir / "model.onnx", workdir / f"model-{weight_type}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(reference_module(ckpt.model, head, ckpt.pooling), args, str(fp32_path),
                          input_names=list(_ONNX_INPUTS),
                          output_names=["out"], dynamic_axes={n: {0: "batch", 1: "seq"} for n in _ONNX_INPUTS},
                          opset_version=17, dynamo=False)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # the exporter drops inputs the model ignores (DistilBERT: token_type_ids, position_ids): feed
    # the session the inputs it names
    feeds = lambda s, enc: {i.name: enc[i.name].astype(np.int64) for i in s.get_inputs()}  # noqa: E731
    ref = torch_encoder(ckpt.model, head, ckpt.pooling)(probe)
    fp32_sess = ort.InferenceSession(str(fp32_path), opts, providers=["CPUExecutionProvider"])
    got = fp32_sess.run(None, feeds(fp32_sess, probe))[0]
    if not np.allclose(got, ref, atol=1e-3, rtol=1e-3):
        raise RuntimeError(f"the ONNX export disagrees with PyTorch (max diff {np.abs(got - ref).max():.3g})")
    quantize_dynamic(str(fp32_path), str(q_path),
                     weight_type=QuantType.QInt8 if weight_type == "int8" else QuantType.QUInt8)
    sess = ort.InferenceSession(str(q_path), opts, providers=["CPUExecutionProvider"])

    def run(enc):
        return sess.run(None, feeds(sess, enc))[0].astype(np.float64)

    return run


# -- model / artifact pairing -----------------------------------------------------------------------
def check_pair(ckpt, compiled, tokenizer_json: str) -> None:
    """Refuse a compiled artifact that was not built from ``ckpt`` (source hash, tokenizer, head)."""
    m = compiled.manifest
    src = (m.get("model") or {}).get("source_hash")
    where = compiled.dir
    if src != ckpt.model_hash:
        raise IBertTVMError(
            f"{where} was not compiled from {ckpt.path}: its manifest's model.source_hash is "
            f"{str(src)[:12]}..., the model's is {ckpt.model_hash[:12]}... (pass the matching --model, or omit "
            "--artifact to compile this model)"
        )
    try:
        art_tok = (compiled.dir / m["tokenizer"]).read_text(encoding="utf-8")
    except OSError as e:
        raise IBertTVMError(f"{where}: tokenizer unreadable: {e}") from None
    if json.loads(art_tok) != json.loads(tokenizer_json):
        raise IBertTVMError(f"{where}/tokenizer.json differs from the tokenizer of {ckpt.path}: not the same model")
    if m.get("head") != ckpt.head:
        raise IBertTVMError(f"{where} has a {m.get('head')} head, the model {ckpt.path} a {ckpt.head} head")


def check_task_model(task, ckpt) -> None:
    if task.kind == "similarity":
        if ckpt.head != "embedding":
            raise IBertTVMError(f"task {task.name} scores sentence embeddings; {ckpt.path} is a classifier "
                                f"({ckpt.architecture}): use an embedding model (e.g. --model default)")
        if not all(e.text_b is not None for e in task.examples):
            raise IBertTVMError(f"task {task.name} has real-valued labels but no sentence pairs to compare")
    else:
        if ckpt.head != "classifier":
            raise IBertTVMError(f"task {task.name} is classification; {ckpt.path} ({ckpt.architecture}) has no "
                                "classification head (pass a *ForSequenceClassification model)")
        n = len(ckpt.labels)
        if task.num_labels > n:
            raise IBertTVMError(f"task {task.name} has labels 0..{task.num_labels - 1}, the model only {n} classes")


def calibration_sentences(task_name: str, n: int = 300) -> list[str]:
    """Calibration text from the task's *training* data (never the evaluated split)."""
    if task_name == "sentiment":
        from .tasks import sentiment_task

        return [e.text for e in sentiment_task("train").examples[:n]]
    from .datasets import default_calibration_sentences

    return default_calibration_sentences(n)


def compiled_cache_dir(qm, target: str = "llvm") -> Path:
    """``<cache>/compiled/<model hash>-<target>-<compiler hash>``: where :func:`compile_cached` puts ``qm``."""
    from .deploy.export import compiler_hash, quantized_hash
    from .tasks import cache_dir

    return cache_dir() / "compiled" / f"{quantized_hash(qm)[:16]}-{target}-{compiler_hash()}"


def compile_cached(qm, *, target: str = "llvm", log=print) -> Path:
    """Compile ``qm`` for ``target`` (default: this CPU, generic) into :func:`compiled_cache_dir`
    (reused when present: same model, target and compiler sources)."""
    from .deploy.export import compile_quantized

    out = compiled_cache_dir(qm, target)
    if (out / "manifest.json").is_file():
        log(f"using the cached compiled model {out}")
        return out
    log(f"compiling the integer-only model for {target} into {out} (MiniLM takes 1-3 minutes; cached afterwards)")
    compile_quantized(qm, out, target=target, log=log)
    return out


def resolve_model(task_name: str, model: str, *, log=print):
    """``default`` means all-MiniLM-L6-v2, or for ``sentiment`` its fine-tuned classifier."""
    from .model.hf_loader import load_checkpoint

    if task_name == "sentiment" and model == "default":
        from .quantization.finetune import finetune_sentiment

        return load_checkpoint(finetune_sentiment(progress=progress_fn(), log=log))
    return load_checkpoint(model)


def progress_fn():
    from tqdm.auto import tqdm

    return lambda it, desc="": tqdm(it, desc=desc or None, unit="batch", leave=False, disable=None)


# -- the report -------------------------------------------------------------------------------------
def markdown_table(report: dict) -> str:
    metric = report["metric"]
    fp32 = report["results"].get("fp32", {}).get("value")
    lines = [f"| {report['task']} ({report['examples']} examples) | {metric} | vs FP32 |", "|---|---|---|"]
    for name, r in report["results"].items():
        v = r.get("value")
        if v is None:
            lines.append(f"| {name} | skipped: {r.get('skipped')} | |")
            continue
        scale = 100.0 if metric == "accuracy" else 1.0
        fmt = "{:.2f}" if metric == "accuracy" else "{:.4f}"
        delta = "" if name == "fp32" or fp32 is None else ("{:+.2f}" if metric == "accuracy" else "{:+.4f}").format(
            (v - fp32) * scale)
        lines.append(f"| {name} | {fmt.format(v * scale)} | {delta} |")
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def parse_peers(s: str | None) -> list[str]:
    if not s:
        return []
    peers = [p.strip() for p in s.split(",") if p.strip()]
    bad = [p for p in peers if p not in PEERS]
    if bad:
        raise IBertTVMError(f"unknown peer {', '.join(bad)}; known: {', '.join(PEERS)}")
    return peers


def evaluate(task, ckpt, *, compiled=None, peers: Sequence[str] = (), batch_size: int = 32, progress=None,
             log=print, extra_columns: dict[str, Encoder] | None = None) -> dict:
    """Score FP32, the compiled integer model and ``peers`` on ``task``; returns the report dict."""
    import tempfile

    from .support.tokenize import Tokenizer
    from .model.hf_loader import load_tokenizer_json

    check_task_model(task, ckpt)
    tok_json = load_tokenizer_json(ckpt.path)
    if compiled is not None:
        check_pair(ckpt, compiled, tok_json)
    tokenizer = Tokenizer(tok_json, ckpt.max_positions, ckpt.family, ckpt.pad_token_id)
    columns: list[tuple[str, Callable[[], Encoder]]] = [("fp32", lambda: torch_encoder(ckpt.model, ckpt.head, ckpt.pooling))]
    if compiled is not None:
        columns.append(("integer", lambda: compiled_encoder(compiled)))
    for name, enc in (extra_columns or {}).items():
        columns.append((name, lambda enc=enc: enc))
    workdir = tempfile.TemporaryDirectory(prefix="ibert-tvm-eval-")
    for p in peers:
        if p == "torch-int8":
            columns.append((p, lambda: torch_int8_encoder(ckpt)))
        else:
            wt = "int8" if p == "ort-int8" else "uint8"
            columns.append((p, lambda wt=wt: ort_encoder(ckpt, tokenizer, Path(workdir.name), wt)))
    results: dict[str, dict] = {}
    try:
        for name, make in columns:
            t0 = time.time()
            try:
                run = make()
            except Exception as e:  # noqa: BLE001 - a peer that cannot be built is skipped, not fatal
                if name in ("fp32", "integer"):
                    raise
                reason = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                if isinstance(e, ModuleNotFoundError):
                    reason = f"{e.name} is not installed (pip install onnxruntime onnx)"
                log(f"skipping {name}: {reason}")
                results[name] = {"value": None, "skipped": reason}
                continue
            value = score(task, tokenizer, run, batch_size=batch_size, progress=progress, desc=name)
            results[name] = {"value": value, "seconds": round(time.time() - t0, 1)}
    finally:
        workdir.cleanup()
    metric = "spearman" if task.kind == "similarity" else "accuracy"
    report = {
        "format": "ibert-tvm-eval/1",
        "task": task.name,
        "kind": task.kind,
        "metric": metric,
        "examples": len(task.examples),
        "data": task.source,
        "model": {"path": str(ckpt.path), "architecture": ckpt.architecture, "source_hash": ckpt.model_hash},
        "artifact": None if compiled is None else {
            "path": str(compiled.dir), "target": compiled.manifest.get("target"),
            "quantization": (compiled.manifest.get("model") or {}).get("quantization"),
            "identity": (compiled.manifest.get("model") or {}).get("identity"),
        },
        "results": results,
    }
    return report
