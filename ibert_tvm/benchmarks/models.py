"""The benchmarked models and their calibration.

* ``minilm`` (alias ``default``): all-MiniLM-L6-v2, the project's default model (6 layers,
  hidden 384, 12 heads, intermediate 1536), calibrated like ``ibert-tvm calibrate default``
  (the first 300 STS-B train sentences), so the artifact matches the CLI's.
* ``bert-base``: a BERT-Base-shaped ``BertModel`` (12 layers, hidden 768, 12 heads,
  intermediate 3072, vocabulary 30522, 512 positions) with random weights (seed 0), saved once
  under ``<cache>/models/bert-base-random`` with the MiniLM tokenizer (same BERT vocabulary) and
  calibrated on random text (:func:`random_sentences`).
* any other value: a local Hugging Face model directory, calibrated on STS-B sentences.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import IBertTVMError

BUILTIN = ("minilm", "bert-base")
BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 vocab_size=30522, max_position_embeddings=512, type_vocab_size=2)


@dataclass(frozen=True)
class BenchModel:
    """What the harness and the engines need to know about one model (JSON-serialisable)."""

    name: str
    path: str  # Hugging Face model directory
    family: str  # bert | roberta
    head: str  # embedding | classifier
    pad_id: int
    vocab: int
    type_vocab: int
    max_seq: int
    layers: int
    hidden: int
    heads: int
    intermediate: int
    calibration: str  # "stsb:N" | "random:N"
    pooling: str = "mean"  # an embedding's pooling (the model dir's sentence-transformers config)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BenchModel":
        return cls(**d)

    def linear_shapes(self) -> list[tuple[str, int, int]]:
        """(role, N, K) of each distinct int8 linear of a layer (weights ``[N, K]``)."""
        h, i = self.hidden, self.intermediate
        return [("qkv/attn-out", h, h), ("ffn-up", i, h), ("ffn-down", h, i)]

    def linear_ops(self, batch: int, seq: int) -> int:
        """Integer multiply-adds x 2 of every encoder linear in one forward pass."""
        h, i = self.hidden, self.intermediate
        per_token = 4 * h * h + 2 * h * i  # q, k, v, attention output; FFN up and down
        return 2 * batch * seq * per_token * self.layers


def model_slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def random_sentences(n: int, *, seed: int = 0, tokenizer_json: str | None = None) -> list[str]:
    """``n`` sentences of 6-60 random whole words from the BERT vocabulary (seeded)."""
    import json

    import numpy as np

    from ..model.hf_loader import default_model_dir

    if tokenizer_json is None:
        tokenizer_json = (default_model_dir() / "tokenizer.json").read_text(encoding="utf-8")
    vocab = json.loads(tokenizer_json)["model"]["vocab"]
    words = sorted(w for w in vocab if w.isalpha() and w.isascii() and len(w) > 1)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(6, 61))
        out.append(" ".join(words[j] for j in rng.integers(0, len(words), k)) + ".")
    return out


def build_bert_base(path: Path, *, seed: int = 0) -> Path:
    """Save a randomly initialised BERT-Base ``BertModel`` + the MiniLM tokenizer in ``path`` (once)."""
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return path
    import torch
    import transformers

    from ..model.hf_loader import default_model_dir
    from ..support.fs import atomic_dir

    torch.manual_seed(seed)
    config = transformers.BertConfig(**BERT_BASE, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = transformers.BertModel(config).eval()
    with atomic_dir(path, None) as tmp:  # only a missing or empty directory: never a user's files
        model.save_pretrained(str(tmp))
        shutil.copy(default_model_dir() / "tokenizer.json", tmp / "tokenizer.json")
    return path


def resolve(name: str, cache: Path) -> BenchModel:
    """A model name (``minilm``, ``bert-base``) or a local HF directory -> :class:`BenchModel`."""
    from ..model.hf_loader import SUPPORTED, default_model_dir, resolve_model_dir, sentence_pooling

    if name in ("minilm", "default"):
        path, label, calib = default_model_dir(), "minilm", "stsb:300"
    elif name == "bert-base":
        path, label, calib = build_bert_base(cache / "models" / "bert-base-random"), "bert-base", "random:128"
    else:
        path = resolve_model_dir(name)
        label, calib = model_slug(Path(name).name), "stsb:300"
    import json

    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise IBertTVMError(f"{path}/config.json is unreadable: {e}") from None
    arch = (cfg.get("architectures") or [None])[0]
    if arch not in SUPPORTED:
        raise IBertTVMError(f"unsupported architecture {arch!r} in {path}; supported: {', '.join(SUPPORTED)}")
    family, head = SUPPORTED[arch]
    if head not in ("embedding", "classifier"):
        raise IBertTVMError(f"{path}/config.json: architectures {arch}: the bench compares sentence embeddings "
                            f"and sequence classifiers; its {head} head is not benchmarked")
    pooling = sentence_pooling(Path(path))[0]

    def field(*names):  # DistilBertConfig names its fields dim, n_layers, n_heads, hidden_dim
        for n in names:
            if n in cfg:
                try:
                    return int(cfg[n])
                except (TypeError, ValueError):
                    raise IBertTVMError(f"{path}/config.json: {n} must be an integer") from None
        raise IBertTVMError(f"{path}/config.json: {names[0]} is missing")

    pad = int(cfg.get("pad_token_id", 0) or 0)
    n_pos = field("max_position_embeddings")
    return BenchModel(
        name=label, path=str(path), family=family, head=head, pad_id=pad, vocab=field("vocab_size"),
        type_vocab=int(cfg.get("type_vocab_size", 0 if arch.startswith("DistilBert") else 2)),
        max_seq=n_pos - (pad + 1) if family == "roberta" else n_pos,
        layers=field("num_hidden_layers", "n_layers"), hidden=field("hidden_size", "dim"),
        heads=field("num_attention_heads", "n_heads"), intermediate=field("intermediate_size", "hidden_dim"),
        calibration=calib, pooling=pooling,
    )


def calibration_sentences(model: BenchModel) -> list[str]:
    kind, n = model.calibration.split(":")
    if kind == "random":
        return random_sentences(int(n))
    from ..datasets import default_calibration_sentences

    return default_calibration_sentences(int(n))


def quantized(model: BenchModel, cache: Path, *, log=print):
    """The model's :class:`QuantizedModel` (ibert-w8a8), calibrated once and cached."""
    from ..model.hf_loader import hash_model_dir, load_checkpoint
    from ..quantization.artifact import QuantizedModel
    from ..deploy.export import compiler_hash
    from ..quantization.calibrate import calibrate

    q = cache / "quantized" / (f"{model_slug(model.name)}-{hash_model_dir(Path(model.path))[:12]}-"
                               f"{model.calibration.replace(':', '')}-{compiler_hash()}")
    if (q / "quantization.json").is_file():
        return QuantizedModel.load(q)
    sentences = calibration_sentences(model)
    log(f"calibrating {model.name} on {len(sentences)} sentences ({model.calibration})")
    qm = calibrate(load_checkpoint(model.path), sentences)
    qm.save(q)
    return qm


def bench_inputs(model: BenchModel, batch: int, seq: int, *, seed: int = 0) -> dict:
    """Random token ids (fixed seed), no padding: ``[batch, seq]`` int64 inputs of every engine."""
    import numpy as np

    from ..support.tokenize import position_ids

    if seq > model.max_seq:
        raise IBertTVMError(f"sequence {seq} exceeds {model.name}'s maximum {model.max_seq}")
    rng = np.random.default_rng(seed * 1_000_003 + batch * 1009 + seq)
    lo = 1000 if model.vocab > 2000 else 1
    ids = rng.integers(lo, model.vocab, (batch, seq)).astype(np.int64)
    mask = np.ones((batch, seq), np.int64)
    tt = np.zeros((batch, seq), np.int64)
    pos = position_ids(ids, mask, model.family, model.pad_id).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt, "position_ids": pos}
