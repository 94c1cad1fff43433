"""The quantized artifact: integer tensors (safetensors) + a JSON of scales and identity.

Layout of a quantized directory ``q/``::

    quantized.safetensors   int8 weights and embedding tables, int32 biases (HF names);
                            2/3/4-bit weights packed (``<linear>.weight.packed`` uint8, the
                            format of ``op/packed_weights.py``) instead of ``<linear>.weight``;
                            LayerNorm gamma/beta as float32 (folded into integers by compile)
    quantization.json       format tag, QuantConfig, model dims, every static scale,
                            source model identity (architecture, sha256), labels, and
                            ``files``: the sha256 of the two other files
    tokenizer.json          the source tokenizer

Written atomically (:mod:`ibert_tvm.support.fs`): into a temporary sibling directory, then
renamed into place.

:meth:`QuantizedModel.load` is the one gate into the compiler: it checks the file hashes, then
every field against the others and against the tensors (:meth:`QuantizedModel.validate`), so a
damaged or hand-edited ``q/`` is an :class:`~ibert_tvm.errors.IBertTVMError` naming the file and
the field, never a wrong model or an exception deep in the plan or op code. A ``q/`` without
``files`` (written before they were recorded) is refused: re-run ``calibrate``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import IBertTVMError
from ..support.fs import ArtifactKind, atomic_dir
from ..op.pooling import POOLINGS as POOLING_MODES
from .config import QuantConfig

FORMAT = "ibert-tvm-quantized/1"
TENSORS = "quantized.safetensors"
META = "quantization.json"
TOKENIZER = "tokenizer.json"
# every file ``QuantizedModel.save`` writes: ``calibrate -o`` replaces a directory holding only these
ARTIFACT = ArtifactKind("quantized model", FORMAT, META, frozenset({TENSORS, META, TOKENIZER}))

HASHED = (TENSORS, TOKENIZER)  # every file but META, whose ``files`` records their sha256

FAMILIES = ("bert", "roberta")
HEAD_ACTS = ("tanh", "relu", "gelu")  # dims.head_act of a classifier (absent: tanh)
_HEAD_ACT_SCALES = {"tanh": "head.pre_tanh", "relu": "head.relu", "gelu": "head.pre_gelu"}
HEADS = ("embedding", "classifier", "token_classifier", "qa")
DIMS = {  # integer dims -> smallest allowed value (sizes are checked against the tensors too)
    "hidden": 1, "heads": 1, "layers": 1, "intermediate": 1, "vocab": 1, "type_vocab": 0,  # 0: no token types
    "max_positions": 1, "max_seq": 1, "pad_id": 0, "num_labels": 0,
}


@dataclass
class QuantizedModel:
    """Integer tensors + static scales of one BERT-family model."""

    config: QuantConfig
    dims: dict  # hidden, heads, layers, intermediate, vocab, max_positions, type_vocab, pad_id, family, head, num_labels
    scales: dict  # name -> float (per-tensor) or list[float] (per-channel)
    tensors: dict[str, np.ndarray]
    source: dict  # path, architecture, model_hash
    tokenizer_json: str
    labels: list[str] = field(default_factory=list)
    # linear prefix -> weight bits for the linears stored packed (bits < 8); ``tensors`` always
    # holds their unpacked int8 values under ``<prefix>.weight``
    weight_bits_map: dict = field(default_factory=dict)

    def scale(self, name: str):
        try:
            s = self.scales[name]
        except KeyError:
            raise IBertTVMError(f"quantized model has no scale {name!r}") from None
        return np.asarray(s, dtype=np.float64) if isinstance(s, list) else float(s)

    def tensor(self, name: str) -> np.ndarray:
        try:
            return self.tensors[name]
        except KeyError:
            raise IBertTVMError(f"quantized model has no tensor {name!r}") from None

    def weight_bits(self, prefix: str) -> int:
        """Weight bits of the linear ``prefix`` (8 unless stored packed)."""
        return int(self.weight_bits_map.get(prefix, 8))

    def packed_weight(self, prefix: str) -> np.ndarray:
        """The packed uint8 ``[N, row_bytes(K, bits)]`` weight of a < 8-bit linear."""
        from ..op.packed_weights import pack_np

        bits = self.weight_bits(prefix)
        if bits == 8:
            raise IBertTVMError(f"{prefix} has 8-bit weights: nothing is packed")
        return pack_np(self.tensor(prefix + ".weight"), bits)

    def stored_tensors(self) -> dict[str, np.ndarray]:
        """What ``save`` writes: every tensor, with low-bit weights replaced by their packed bytes."""
        out = dict(self.tensors)
        for prefix in self.weight_bits_map:
            del out[prefix + ".weight"]
            out[prefix + ".weight.packed"] = self.packed_weight(prefix)
        return out

    def weight_bytes(self) -> dict[str, int]:
        """Bytes of the stored integer weights: ``total``, ``embeddings`` and ``encoder``
        (the encoder linears, packed where low-bit) and ``other`` (head, pooler, biases)."""
        out = {"embeddings": 0, "encoder_linears": 0, "other": 0}
        for k, v in self.stored_tensors().items():
            if k.startswith("embeddings.") and v.dtype.kind in "iu" and "LayerNorm" not in k:
                out["embeddings"] += v.nbytes
            elif k.startswith("encoder.layer.") and (k.endswith(".weight") or k.endswith(".weight.packed")):
                out["encoder_linears"] += v.nbytes
            else:
                out["other"] += v.nbytes
        out["total"] = sum(out.values())
        return out

    @property
    def identity(self) -> str:
        """A short id: source model hash + scheme (tuning logs and artifacts are keyed by it)."""
        return f"{self.source['model_hash'][:12]}-{self.config.name}"

    # -- validation -----------------------------------------------------------------------
    @property
    def stored_layers(self) -> int:
        """Layers with their own tensors and scales: 1 when one layer is applied ``dims.layers`` times
        (``dims.shared_layers``, ALBERT), else ``dims.layers``."""
        return 1 if self.dims.get("shared_layers") else self.dims["layers"]

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """Linear prefix -> weight shape ``(out, in)`` the dims call for (encoder, and head)."""
        d = self.dims
        H, I = d["hidden"], d["intermediate"]
        out = {}
        if "embedding_size" in d:  # factorized embeddings: E -> H after the embedding LayerNorm
            out["embeddings.project"] = (H, d["embedding_size"])
        for i in range(self.stored_layers):
            hp = f"encoder.layer.{i}."
            for n in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
                out[hp + n] = (H, H)
            out[hp + "intermediate.dense"] = (I, H)
            out[hp + "output.dense"] = (H, I)
        if d["head"] == "classifier":
            out["head.dense"] = (H, H)
            out["head.out"] = (d["num_labels"], H)
        elif d["head"] in ("token_classifier", "qa"):
            out["head.out"] = (d["num_labels"], H)
        return out

    def expected_tensors(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Tensor name -> (dtype, shape) of every tensor the dims call for (nothing else is allowed)."""
        d = self.dims
        H = d["hidden"]
        E = d.get("embedding_size", H)
        out = {
            "embeddings.word": ("int8", (d["vocab"], E)),
            "embeddings.position": ("int8", (d["max_positions"], E)),
        }
        if d["type_vocab"] > 0:
            out["embeddings.token_type"] = ("int8", (d["type_vocab"], E))
        out["embeddings.LayerNorm.gamma"] = out["embeddings.LayerNorm.beta"] = ("float32", (E,))
        norms = [f"encoder.layer.{i}.{n}.LayerNorm" for i in range(self.stored_layers) for n in ("attention.output", "output")]
        for n in norms:
            out[n + ".gamma"] = out[n + ".beta"] = ("float32", (H,))
        if d.get("rel_buckets", 0) > 0:  # MPNet's relative position bias (op/rel_pos_bias.py)
            out["encoder.relative_attention_bias"] = ("float32", (d["rel_buckets"], d["heads"]))
            out["encoder.relative_attention_bucket"] = ("int32", (2 * d["max_seq"] - 1,))
        for prefix, (rows, cols) in self.linear_shapes().items():
            out[prefix + ".weight"] = ("int8", (rows, cols))
            out[prefix + ".bias"] = ("int32", (rows,))
        return out

    def expected_scales(self) -> dict[str, int | None]:
        """Scale name -> its number of channels (``None``: one per-tensor scale)."""
        d = self.dims
        H, I = d["hidden"], d["intermediate"]
        pc = self.config.per_channel_acts
        tables = ("word", "position", "token_type", "sum") if d["type_vocab"] > 0 else ("word", "position", "sum")
        out: dict[str, int | None] = {f"embeddings.{n}": None for n in tables}
        out["embeddings.ln"] = d.get("embedding_size", H) if pc else None
        if "embedding_size" in d:
            out["embeddings.project"] = H if pc else None
        for i in range(self.stored_layers):
            p = f"layer{i}."
            out.update({p + n: None for n in ("q", "k", "v", "ctx", "res1", "inter", "res2")})
            out.update({p + "ln1": H if pc else None, p + "gelu": I if pc else None, p + "ln2": H if pc else None})
        if d["head"] == "classifier":
            act = d.get("head_act", "tanh")
            out.update({_HEAD_ACT_SCALES[act]: None, "head.logits": None})
            if act == "gelu":
                out["head.gelu"] = H if pc else None
        elif d["head"] in ("token_classifier", "qa"):
            out["head.logits"] = None
        for prefix, (rows, _) in self.linear_shapes().items():
            out[prefix + ".weight"] = rows
            out[prefix + ".input"] = None
        return out

    def _dims_seen_in_tensors(self) -> dict[str, tuple[int, str]]:
        """Dim -> (its value in the tensors, which tensor says so), for the dims tensors fix."""
        seen = {}
        width = "embedding_size" if "embedding_size" in self.dims else "hidden"  # of the embedding tables
        factorized = (("hidden", "embeddings.project.weight", 0),) if width != "hidden" else ()
        for dim, tensor, axis in (("vocab", "embeddings.word", 0), (width, "embeddings.word", 1), *factorized,
                                  ("max_positions", "embeddings.position", 0),
                                  ("type_vocab", "embeddings.token_type", 0),
                                  ("intermediate", "encoder.layer.0.intermediate.dense.weight", 0),
                                  ("num_labels", "head.out.weight", 0)):
            t = self.tensors.get(tensor)
            if t is not None and t.ndim > axis:
                seen[dim] = (int(t.shape[axis]), f"{tensor} dimension {axis}")
        layers = {k.split(".")[2] for k in self.tensors if k.startswith("encoder.layer.")}
        if not self.dims.get("shared_layers"):
            seen["layers"] = (len(layers), "encoder.layer.* tensors")
        elif len(layers) != 1:
            seen["shared_layers"] = (len(layers), "encoder.layer.* tensors: one shared layer expected")
        return seen

    def validate(self, meta_file: str = META, tensors_file: str = TENSORS) -> None:
        """Raise ``IBertTVMError`` naming the file and the field unless every dim is a known value,
        every tensor the dims call for is present with its dtype and shape (and nothing else),
        every float tensor is finite and every scale is a positive finite number (a list of one
        per channel where the scheme has per-channel scales). ``meta_file`` / ``tensors_file``
        name where the fields / tensors came from in the messages."""
        d = self.dims
        if not isinstance(d, dict):
            raise IBertTVMError(f"{meta_file}: field 'dims' must be an object, got {d!r}")
        for name, values in (("family", FAMILIES), ("head", HEADS)):
            if d.get(name) not in values:
                raise IBertTVMError(f"{meta_file}: dims.{name} is {d.get(name)!r}; known: {', '.join(values)}")
        for name, lo in DIMS.items():
            v = d.get(name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise IBertTVMError(f"{meta_file}: dims.{name} must be an integer >= {lo}, got {v!r}")
        unknown = sorted(set(d) - set(DIMS) - {"family", "head", "pooling", "normalize", "head_act", "embedding_size",
                                               "shared_layers", "rel_buckets"})
        if unknown:
            raise IBertTVMError(f"{meta_file}: unknown dims {', '.join(unknown)}")
        e = d.get("embedding_size", 1)
        if isinstance(e, bool) or not isinstance(e, int) or e < 1:
            raise IBertTVMError(f"{meta_file}: dims.embedding_size must be an integer >= 1, got {e!r}")
        if d.get("shared_layers", True) is not True or ("shared_layers" in d and "embedding_size" not in d):
            raise IBertTVMError(f"{meta_file}: dims.shared_layers must be true when present, and with "
                                f"dims.embedding_size (the shared layer's first input is the projection), "
                                f"got {d.get('shared_layers')!r}")
        if "pooling" in d and (d["head"] != "embedding" or d["pooling"] not in POOLING_MODES):
            raise IBertTVMError(f"{meta_file}: dims.pooling is {d['pooling']!r}; an embedding head pools with one of "
                                f"{', '.join(POOLING_MODES)}")
        if "head_act" in d and (d["head"] != "classifier" or d["head_act"] not in HEAD_ACTS):
            raise IBertTVMError(f"{meta_file}: dims.head_act is {d['head_act']!r}; a classifier head's activation is one "
                                f"of {', '.join(HEAD_ACTS)}")
        if "normalize" in d and (d["head"] != "embedding" or not isinstance(d["normalize"], bool)):
            raise IBertTVMError(f"{meta_file}: dims.normalize must be true or false (embedding heads only), "
                                f"got {d['normalize']!r}")
        rb = d.get("rel_buckets", 0)
        if isinstance(rb, bool) or not isinstance(rb, int) or rb < 0:
            raise IBertTVMError(f"{meta_file}: dims.rel_buckets must be an integer >= 0 (0: no relative position "
                                f"bias), got {rb!r}")
        if d["hidden"] % d["heads"]:
            raise IBertTVMError(f"{meta_file}: dims.hidden {d['hidden']} is not a multiple of dims.heads {d['heads']}")
        if d["pad_id"] >= d["vocab"]:
            raise IBertTVMError(f"{meta_file}: dims.pad_id {d['pad_id']} is outside the vocabulary of {d['vocab']}")
        want_seq = d["max_positions"] - (d["pad_id"] + 1 if d["family"] == "roberta" else 0)
        if d["max_seq"] != want_seq:
            raise IBertTVMError(f"{meta_file}: dims.max_seq {d['max_seq']} does not follow from dims.max_positions "
                                f"{d['max_positions']} ({want_seq} for {d['family']})")
        n_labels = d["num_labels"] if d["head"] != "embedding" else 0
        if (d["head"] != "embedding") != (d["num_labels"] > 0) or len(self.labels) not in (0, n_labels):
            raise IBertTVMError(f"{meta_file}: dims.num_labels {d['num_labels']} does not fit head "
                                f"{d['head']!r} and {len(self.labels)} labels")
        if not all(isinstance(x, str) for x in self.labels):
            raise IBertTVMError(f"{meta_file}: labels must be strings")
        if self.config.layer_weight_bits and len(self.config.layer_weight_bits) != d["layers"]:
            raise IBertTVMError(f"{meta_file}: config.layer_weight_bits has {len(self.config.layer_weight_bits)} "
                                f"entries for dims.layers {d['layers']}")
        lsb = self.config.layer_softmax_bits
        if lsb and len(lsb) != d["layers"]:
            raise IBertTVMError(f"{meta_file}: config.layer_softmax_bits has {len(lsb)} entries for dims.layers "
                                f"{d['layers']}")
        if lsb and d.get("shared_layers") and len(set(lsb)) > 1:
            raise IBertTVMError(f"{meta_file}: config.layer_softmax_bits {list(lsb)}: one shared layer has one "
                                "softmax width")
        for name, (value, source) in self._dims_seen_in_tensors().items():
            if value != d[name]:
                raise IBertTVMError(f"{meta_file}: dims.{name} is {d[name]}, but {tensors_file} holds {value} ({source})")
        want = self.expected_tensors()
        for name, (dtype, shape) in want.items():
            t = self.tensors.get(name)
            if t is None:
                raise IBertTVMError(f"{tensors_file}: tensor {name} is missing")
            if t.dtype != np.dtype(dtype) or t.shape != shape:
                raise IBertTVMError(f"{tensors_file}: tensor {name} is {t.dtype} {list(t.shape)}, expected {dtype} "
                                    f"{list(shape)} (from the dims in {meta_file})")
            if t.dtype.kind == "f" and not np.isfinite(t).all():
                raise IBertTVMError(f"{tensors_file}: tensor {name} is not finite (NaN or inf)")
        bucket = self.tensors.get("encoder.relative_attention_bucket")
        if rb and bucket is not None and bucket.size and (int(bucket.min()) < 0 or int(bucket.max()) >= rb):
            raise IBertTVMError(f"{tensors_file}: tensor encoder.relative_attention_bucket has values outside "
                                f"[0, {rb}) (dims.rel_buckets in {meta_file})")
        extra = sorted(set(self.tensors) - set(want))
        if extra:
            raise IBertTVMError(f"{tensors_file}: unexpected tensors {', '.join(extra[:10])}"
                                f"{' ...' if len(extra) > 10 else ''} (the dims in {meta_file} do not call for them)")
        if not isinstance(self.scales, dict):
            raise IBertTVMError(f"{meta_file}: field 'scales' must be an object")
        want_s = self.expected_scales()
        for name, channels in want_s.items():
            if name not in self.scales:
                raise IBertTVMError(f"{meta_file}: scales.{name} is missing")
            _check_scale(self.scales[name], channels, f"{meta_file}: scales.{name}")
        extra = sorted(set(self.scales) - set(want_s))
        if extra:
            raise IBertTVMError(f"{meta_file}: unknown scales {', '.join(f'scales.{n}' for n in extra[:10])}")
        if d.get("shared_layers") and self.scales["embeddings.project"] != self.scales["layer0.ln2"]:
            # the shared layer's input: the projection (application 0) and its own output (the rest)
            raise IBertTVMError(f"{meta_file}: scales.embeddings.project differs from scales.layer0.ln2: the shared "
                                "layer's weights fold one input scale for every application")

    # -- I/O ------------------------------------------------------------------------------
    def save(self, out_dir: str | os.PathLike) -> Path:
        from safetensors.numpy import save_file

        from ..support.hashing import sha256_file

        out = Path(out_dir)
        meta = {
            "format": FORMAT,
            "config": self.config.to_dict(),
            "dims": self.dims,
            "scales": self.scales,
            "source": self.source,
            "labels": self.labels,
            "weight_bits": dict(sorted(self.weight_bits_map.items())),
        }
        if self.weight_bits_map:
            from ..op.packed_weights import PACK_FORMAT

            meta["pack_format"] = PACK_FORMAT
            meta["packed_shapes"] = {k: list(self.tensors[k + ".weight"].shape) for k in sorted(self.weight_bits_map)}
        with atomic_dir(out, ARTIFACT) as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in self.stored_tensors().items()}, str(tmp / TENSORS))
            (tmp / TOKENIZER).write_text(self.tokenizer_json, encoding="utf-8")
            meta["files"] = {name: sha256_file(tmp / name) for name in HASHED}
            (tmp / META).write_text(json.dumps(meta, indent=1))
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> "QuantizedModel":
        """Read and check ``q/``: file hashes first, then every field (:meth:`validate`)."""
        from safetensors.numpy import load_file

        from ..support.hashing import check_files

        p = Path(path)
        if not p.is_dir():
            raise IBertTVMError(f"quantized model directory {p} does not exist")
        mpath = p / META
        try:
            meta = json.loads(mpath.read_text())
        except FileNotFoundError:
            raise IBertTVMError(f"{p} is not a quantized model: {META} is missing (run `ibert-tvm calibrate`)") from None
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise IBertTVMError(f"{mpath} is corrupt: {e}") from None
        if not isinstance(meta, dict):
            raise IBertTVMError(f"{mpath} is corrupt: a JSON object expected")
        if meta.get("format") != FORMAT:
            raise IBertTVMError(f"{mpath} has format {meta.get('format')!r}, expected {FORMAT!r}")
        check_files(p, meta.get("files"), mpath, HASHED, "ibert-tvm calibrate")
        try:
            tensors = load_file(str(p / TENSORS))
            tok = (p / TOKENIZER).read_text(encoding="utf-8")
        except Exception as e:  # noqa: BLE001 - safetensors raises several kinds
            raise IBertTVMError(f"{p} is incomplete or corrupt: {e}") from None
        for key, kind in (("config", dict), ("dims", dict), ("scales", dict), ("source", dict), ("labels", list),
                          ("weight_bits", dict)):
            if not isinstance(meta.get(key, kind()), kind):
                raise IBertTVMError(f"{mpath}: field {key!r} must be a JSON {'object' if kind is dict else 'array'}")
        try:
            bits_map = {str(k): int(v) for k, v in meta.get("weight_bits", {}).items()}
            if bits_map:
                from ..op.packed_weights import PACK_FORMAT, check_weight_bits, unpack_np

                if meta.get("pack_format") != PACK_FORMAT:
                    raise IBertTVMError(f"{mpath}: packed weights in format {meta.get('pack_format')!r}, "
                                        f"this version reads {PACK_FORMAT!r}")
                for prefix, bits in bits_map.items():
                    check_weight_bits(bits)
                    packed = tensors.pop(prefix + ".weight.packed")
                    n, k = (int(d) for d in meta["packed_shapes"][prefix])
                    if packed.shape[0] != n:
                        raise ValueError(f"{prefix}.weight.packed has {packed.shape[0]} rows, expected {n}")
                    tensors[prefix + ".weight"] = unpack_np(packed, bits, k)
            config = QuantConfig.from_dict(meta["config"])
            source = meta["source"]
            if not all(isinstance(source.get(k), str) for k in ("architecture", "model_hash")):
                raise ValueError("source.architecture and source.model_hash must be strings")
        except (KeyError, TypeError, ValueError) as e:
            raise IBertTVMError(f"{mpath} is corrupt: bad or missing entry {e}") from None
        qm = cls(
            config=config,
            dims=meta["dims"],
            scales=meta["scales"],
            tensors=tensors,
            source=source,
            tokenizer_json=tok,
            labels=meta.get("labels", []),
            weight_bits_map=bits_map,
        )
        qm.validate(str(mpath), str(p / TENSORS))
        return qm


def _check_scale(v, channels: int | None, what: str) -> None:
    """``v`` is a positive finite number (``channels is None``) or a list of ``channels`` of them."""
    def ok(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0

    if channels is None:
        if not ok(v):
            raise IBertTVMError(f"{what} must be a positive finite number, got {v!r}")
        return
    if not isinstance(v, list) or len(v) != channels:
        raise IBertTVMError(f"{what} must be a list of {channels} per-channel scales, got "
                            f"{f'{len(v)} values' if isinstance(v, list) else repr(v)}")
    bad = next((i for i, x in enumerate(v) if not ok(x)), None)
    if bad is not None:
        raise IBertTVMError(f"{what}[{bad}] must be a positive finite number, got {v[bad]!r}")

