"""FP32 fine-tuning of MiniLM into a binary sentiment classifier, cached locally.

The bundled all-MiniLM-L6-v2 encoder (``BertModel``) gets a ``BertForSequenceClassification``
head (pooler dense + tanh on [CLS], then a 2-way linear; the pooler starts from the checkpoint's
pooler weights) and is fine-tuned with AdamW on the seeded *train* split of the sentiment task
(:mod:`ibert_tvm.tasks`, 2400 sentences). A few minutes on 2 CPU cores.

The result is a plain Hugging Face directory (``config.json``, ``model.safetensors``,
``tokenizer.json``) under ``<cache>/models/minilm-sentiment-<key>/``, where ``<key>`` hashes the
source model, the data split and the hyper-parameters: a change of any of them trains anew.
``python -m ibert_tvm.quantization.finetune`` prints the directory (training it if needed).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import IBertTVMError
from ..support.fs import ArtifactKind, atomic_dir

LABELS = ("negative", "positive")
FORMAT = "ibert-tvm-finetuned/1"
FINETUNE_META = "finetune.json"
# what save_pretrained + this module write: only these are ever replaced in a cache entry
ARTIFACT = ArtifactKind("fine-tuned model", FORMAT, FINETUNE_META,
                        frozenset({"config.json", "model.safetensors", "tokenizer.json", FINETUNE_META}))


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 3
    batch_size: int = 16
    lr: float = 5e-5
    warmup: float = 0.1  # fraction of steps with a linear warm-up
    seed: int = 0
    train_examples: int | None = None  # first N of the train split (None: all 2400)


def config_params(cfg) -> dict:
    """A fine-tuning config's fields for its cache key (``train_examples=None``, all of the split, left out)."""
    return {k: v for k, v in asdict(cfg).items() if not (k == "train_examples" and v is None)}


def finetuned_model_dir(name: str, source: str, params: dict, *data_identity) -> Path:
    """Where a fine-tuned ``minilm-<name>`` is cached: keyed by the source model's hash, the
    hyper-parameters and what identifies the training data (package, split seed and fraction...)."""
    from ..model.hf_loader import hash_model_dir, resolve_model_dir
    from ..tasks import cache_dir

    blob = json.dumps([hash_model_dir(resolve_model_dir(source)), params, *data_identity, 1])
    return cache_dir() / "models" / f"minilm-{name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def sentiment_model_dir(cfg: FinetuneConfig = FinetuneConfig(), source: str = "default") -> Path:
    from ..tasks import SENTIMENT_PACKAGE, SENTIMENT_SEED, SENTIMENT_TEST_FRACTION

    return finetuned_model_dir("sentiment", source, config_params(cfg), SENTIMENT_PACKAGE, SENTIMENT_SEED,
                               SENTIMENT_TEST_FRACTION)


def finetune_sentiment(cfg: FinetuneConfig = FinetuneConfig(), *, source: str = "default", progress=None,
                       log=print) -> Path:
    """The fine-tuned classifier's directory; trains it (once) if it is not cached."""
    out = sentiment_model_dir(cfg, source)
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    import torch
    import transformers

    from ..support.tokenize import Tokenizer
    from ..model.hf_loader import load_checkpoint, load_tokenizer_json
    from ..tasks import sentiment_task
    from .calibrate import torch_inputs

    base = load_checkpoint(source)
    if base.architecture != "BertModel":
        raise IBertTVMError(f"sentiment fine-tuning starts from a BertModel encoder, got {base.architecture}")
    train = sentiment_task("train").examples[: cfg.train_examples]
    log(f"fine-tuning {base.path.name if source != 'default' else 'all-MiniLM-L6-v2'} on {len(train)} sentiment "
        f"train sentences ({cfg.epochs} epochs, FP32, CPU) -> {out}")
    torch.manual_seed(cfg.seed)
    model = transformers.BertForSequenceClassification.from_pretrained(
        str(base.path), local_files_only=True, dtype=torch.float32, num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
    )
    tok_json = load_tokenizer_json(base.path)
    tok = Tokenizer(tok_json, base.max_positions, "bert", base.pad_token_id)
    rng = np.random.default_rng(cfg.seed)
    n = len(train)
    steps = []  # one permutation per epoch
    for _ in range(cfg.epochs):
        order = rng.permutation(n)
        steps += [order[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    warm = max(1, int(cfg.warmup * len(steps)))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (len(steps) - s) / max(1, len(steps) - warm)))
    )
    labels = torch.tensor([int(e.label) for e in train])
    model.train()
    t0 = time.time()
    losses = []
    it = progress(steps) if progress else steps
    for idx in it:
        enc = tok([train[i].text for i in idx])
        res = model(**torch_inputs(enc), labels=labels[idx])
        opt.zero_grad()
        res.loss.backward()
        opt.step()
        sched.step()
        losses.append(float(res.loss.detach()))
        if hasattr(it, "set_postfix"):
            it.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    model.eval()
    with atomic_dir(out, ARTIFACT) as tmp:
        model.save_pretrained(str(tmp))
        (tmp / "tokenizer.json").write_text(tok_json, encoding="utf-8")
        (tmp / FINETUNE_META).write_text(json.dumps(
            {"format": FORMAT, "config": asdict(cfg), "source": str(base.path), "source_hash": base.model_hash,
             "train_examples": n, "final_loss": float(np.mean(losses[-20:])), "seconds": round(time.time() - t0, 1)},
            indent=1))
    log(f"fine-tuned in {time.time() - t0:.0f} s (final loss {np.mean(losses[-20:]):.4f})")
    return out


if __name__ == "__main__":
    from tqdm.auto import tqdm

    print(finetune_sentiment(progress=lambda it: tqdm(it, desc="fine-tune", unit="batch")))
