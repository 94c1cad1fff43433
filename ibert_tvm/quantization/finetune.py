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


def epoch_batches(n: int, cfg, rng) -> list[np.ndarray]:
    """``cfg.epochs`` shuffled passes over ``n`` examples, in batches of ``cfg.batch_size``."""
    steps = []  # one permutation per epoch
    for _ in range(cfg.epochs):
        order = rng.permutation(n)
        steps += [order[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
    return steps


def train_fp32(model, steps, loss_of, cfg, progress=None) -> tuple[list[float], float]:
    """The FP32 fine-tuning loop the sentiment, NER and QA heads share: AdamW (weight decay
    0.01) at ``cfg.lr`` with a linear warm-up over ``cfg.warmup`` of the steps then a linear
    decay to 0, one step per batch of ``steps``; ``loss_of(idx)`` is the batch's loss tensor.
    Returns the per-step losses and the seconds taken; leaves the model in eval mode."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    warm = max(1, int(cfg.warmup * len(steps)))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (len(steps) - s) / max(1, len(steps) - warm)))
    )
    model.train()
    t0 = time.time()
    losses = optimize(steps, loss_of, opt, sched.step, progress)
    model.eval()
    return losses, round(time.time() - t0, 1)


def optimize(steps, loss_of, opt, after_step, progress=None) -> list[float]:
    """One optimizer step per batch of ``steps``: ``loss_of(idx)``, backward, ``opt.step()``, then
    ``after_step()`` (the LR schedule; QAT's re-derivation of its integer parameters). Returns the
    per-step losses; a tqdm-like ``progress`` shows the mean of the last 20."""
    losses: list[float] = []
    it = progress(steps) if progress else steps
    for idx in it:
        loss = loss_of(idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        after_step()
        losses.append(float(loss.detach()))
        if hasattr(it, "set_postfix"):
            it.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    return losses


def save_finetuned(out: Path, artifact: ArtifactKind, model, tokenizer_json: str, meta_name: str, meta: dict,
                   log=print) -> None:
    """Write a fine-tuned model (``save_pretrained``, its tokenizer, the metadata) to ``out`` atomically."""
    with atomic_dir(out, artifact) as tmp:
        model.save_pretrained(str(tmp))
        (tmp / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        (tmp / meta_name).write_text(json.dumps(meta, indent=1))
    log(f"fine-tuned in {meta['seconds']:.0f} s (final loss {meta['final_loss']:.4f})")


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

    from ..model.hf_loader import load_checkpoint, load_tokenizer_json
    from ..support.tokenize import Tokenizer
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
    n = len(train)
    steps = epoch_batches(n, cfg, np.random.default_rng(cfg.seed))
    labels = torch.tensor([int(e.label) for e in train])

    def loss(idx):
        return model(**torch_inputs(tok([train[i].text for i in idx])), labels=labels[idx]).loss

    losses, seconds = train_fp32(model, steps, loss, cfg, progress)
    save_finetuned(out, ARTIFACT, model, tok_json, FINETUNE_META,
                   {"format": FORMAT, "config": asdict(cfg), "source": str(base.path), "source_hash": base.model_hash,
                    "train_examples": n, "final_loss": float(np.mean(losses[-20:])), "seconds": seconds}, log)
    return out


if __name__ == "__main__":
    from tqdm.auto import tqdm

    print(finetune_sentiment(progress=lambda it: tqdm(it, desc="fine-tune", unit="batch")))
