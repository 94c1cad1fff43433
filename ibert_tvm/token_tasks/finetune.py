"""FP32 fine-tuning of MiniLM into a token classifier (NER) on the packaged tweets, cached locally.

The bundled all-MiniLM-L6-v2 encoder (``BertModel``) gets a ``BertForTokenClassification`` head
(one linear layer per token, 21 BIO labels over ten types) and is fine-tuned with AdamW on the
seeded *train* split of :func:`ibert_tvm.token_tasks.data.wnut_splits` (1915 tweets). Each word's label is
put on its first sub-token; the other sub-tokens and [CLS]/[SEP] are ignored by the loss (-100).
A few minutes on 2 CPU cores.

The result is a plain Hugging Face directory (``config.json``, ``model.safetensors``,
``tokenizer.json``) under ``<cache>/models/minilm-ner-<key>/``, ``<key>`` hashing the source
model, the data split and the hyper-parameters. ``python -m ibert_tvm.token_tasks.finetune`` prints the
directory (training it if needed).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import IBertTVMError
from ..support.fs import ArtifactKind

FORMAT = "ibert-tvm-finetuned-ner/1"
FINETUNE_META = "finetune.json"
ARTIFACT = ArtifactKind("fine-tuned NER model", FORMAT, FINETUNE_META,
                        frozenset({"config.json", "model.safetensors", "tokenizer.json", FINETUNE_META}))


@dataclass(frozen=True)
class NerFinetuneConfig:
    epochs: int = 3
    batch_size: int = 16
    lr: float = 1e-4
    warmup: float = 0.1
    seed: int = 0
    train_examples: int | None = None  # first N of the train split (None: all 1915)


def ner_model_dir(cfg: NerFinetuneConfig = NerFinetuneConfig(), source: str = "default") -> Path:
    from ..quantization.finetune import config_params, finetuned_model_dir
    from .data import NER_SEED, NER_TEST_FRACTION, NER_WHEEL_SHA256

    return finetuned_model_dir("ner", source, config_params(cfg), NER_WHEEL_SHA256, NER_SEED, NER_TEST_FRACTION)


def word_labels_to_tokens(word_ids, word_tags, label2id: dict[str, int]) -> list[int]:
    """Per-token training labels: a word's label on its first sub-token, -100 elsewhere."""
    out, seen = [], set()
    for w in word_ids:
        if w is None or w in seen:
            out.append(-100)
        else:
            seen.add(w)
            out.append(label2id[word_tags[w]])
    return out


def finetune_ner(cfg: NerFinetuneConfig = NerFinetuneConfig(), *, source: str = "default", progress=None,
                 log=print) -> Path:
    """The fine-tuned token classifier's directory; trains it (once) if it is not cached."""
    out = ner_model_dir(cfg, source)
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    import torch
    import transformers

    from ..model.hf_loader import load_checkpoint, load_tokenizer_json
    from ..quantization.calibrate import torch_inputs
    from ..quantization.finetune import epoch_batches, save_finetuned, train_fp32
    from ..support.tokenize import Tokenizer
    from .data import (
        encode_words,
        label_list,
        prepare_ner_data,
        read_conll,
        wnut_splits,
    )

    base = load_checkpoint(source)
    if base.architecture != "BertModel":
        raise IBertTVMError(f"NER fine-tuning starts from a BertModel encoder, got {base.architecture}")
    labels = label_list(read_conll(prepare_ner_data()))
    label2id = {n: i for i, n in enumerate(labels)}
    train = wnut_splits()["train"][: cfg.train_examples]
    log(f"fine-tuning {base.path.name if source != 'default' else 'all-MiniLM-L6-v2'} for NER on {len(train)} "
        f"train tweets ({cfg.epochs} epochs, FP32, CPU) -> {out}")
    torch.manual_seed(cfg.seed)
    model = transformers.BertForTokenClassification.from_pretrained(
        str(base.path), local_files_only=True, dtype=torch.float32, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id=label2id,
    )
    tok_json = load_tokenizer_json(base.path)
    tok = Tokenizer(tok_json, base.max_positions, "bert", base.pad_token_id)
    encs, word_ids = encode_words(tok_json, train, base.max_positions)
    tok_labels = [word_labels_to_tokens(w, s.tags, label2id) for w, s in zip(word_ids, train)]
    n = len(train)
    steps = epoch_batches(n, cfg, np.random.default_rng(cfg.seed))

    def loss(idx):
        enc = tok.pad([encs[i] for i in idx])
        S = enc["input_ids"].shape[1]
        lab = torch.tensor([tok_labels[i] + [-100] * (S - len(tok_labels[i])) for i in idx])
        return model(**torch_inputs(enc), labels=lab).loss

    losses, seconds = train_fp32(model, steps, loss, cfg, progress)
    save_finetuned(out, ARTIFACT, model, tok_json, FINETUNE_META,
                   {"format": FORMAT, "config": asdict(cfg), "source": str(base.path), "source_hash": base.model_hash,
                    "train_examples": n, "steps": len(steps), "loss_first20": float(np.mean(losses[:20])),
                    "final_loss": float(np.mean(losses[-20:])), "seconds": seconds}, log)
    return out


if __name__ == "__main__":
    from tqdm.auto import tqdm

    print(finetune_ner(progress=lambda it: tqdm(it, desc="fine-tune", unit="batch", mininterval=10)))
