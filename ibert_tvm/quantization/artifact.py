"""The quantized artifact: integer tensors (safetensors) + a JSON of scales and identity.

Layout of a quantized directory ``q/``::

    quantized.safetensors   int8 weights and embedding tables, int32 biases (HF names);
                            2/3/4-bit weights packed (``<linear>.weight.packed`` uint8, the
                            format of ``op/packed_weights.py``) instead of ``<linear>.weight``;
                            LayerNorm gamma/beta as float32 (folded into integers by compile)
    quantization.json       format tag, QuantConfig, model dims, every static scale,
                            source model identity (architecture, sha256), labels
    tokenizer.json          the source tokenizer

Written atomically (:mod:`ibert_tvm.support.fs`): into a temporary sibling directory, then
renamed into place.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import IBertTVMError
from ..support.fs import ArtifactKind, atomic_dir
from .config import QuantConfig

FORMAT = "ibert-tvm-quantized/1"
TENSORS = "quantized.safetensors"
META = "quantization.json"
TOKENIZER = "tokenizer.json"
# every file ``QuantizedModel.save`` writes: ``calibrate -o`` replaces a directory holding only these
ARTIFACT = ArtifactKind("quantized model", FORMAT, META, frozenset({TENSORS, META, TOKENIZER}))


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

    # -- I/O ------------------------------------------------------------------------------
    def save(self, out_dir: str | os.PathLike) -> Path:
        from safetensors.numpy import save_file

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
            (tmp / META).write_text(json.dumps(meta, indent=1))
            (tmp / TOKENIZER).write_text(self.tokenizer_json, encoding="utf-8")
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> "QuantizedModel":
        from safetensors.numpy import load_file

        p = Path(path)
        if not p.is_dir():
            raise IBertTVMError(f"quantized model directory {p} does not exist")
        try:
            meta = json.loads((p / META).read_text())
        except FileNotFoundError:
            raise IBertTVMError(f"{p} is not a quantized model: {META} is missing (run `ibert-tvm calibrate`)") from None
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise IBertTVMError(f"{p}/{META} is corrupt: {e}") from None
        if not isinstance(meta, dict):
            raise IBertTVMError(f"{p}/{META} is corrupt: a JSON object expected")
        if meta.get("format") != FORMAT:
            raise IBertTVMError(f"{p}/{META} has format {meta.get('format')!r}, expected {FORMAT!r}")
        try:
            tensors = load_file(str(p / TENSORS))
            tok = (p / TOKENIZER).read_text(encoding="utf-8")
        except Exception as e:  # noqa: BLE001 - safetensors raises several kinds
            raise IBertTVMError(f"{p} is incomplete or corrupt: {e}") from None
        try:
            bits_map = {str(k): int(v) for k, v in (meta.get("weight_bits") or {}).items()}
            if bits_map:
                from ..op.packed_weights import PACK_FORMAT, check_weight_bits, unpack_np

                if meta.get("pack_format") != PACK_FORMAT:
                    raise IBertTVMError(f"{p}/{META}: packed weights in format {meta.get('pack_format')!r}, "
                                        f"this version reads {PACK_FORMAT!r}")
                for prefix, bits in bits_map.items():
                    check_weight_bits(bits)
                    packed = tensors.pop(prefix + ".weight.packed")
                    n, k = (int(d) for d in meta["packed_shapes"][prefix])
                    if packed.shape[0] != n:
                        raise ValueError(f"{prefix}.weight.packed has {packed.shape[0]} rows, expected {n}")
                    tensors[prefix + ".weight"] = unpack_np(packed, bits, k)
            return cls(
                config=QuantConfig.from_dict(meta["config"]),
                dims=meta["dims"],
                scales=meta["scales"],
                tensors=tensors,
                source=meta["source"],
                tokenizer_json=tok,
                labels=meta.get("labels", []),
                weight_bits_map=bits_map,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise IBertTVMError(f"{p}/{META} is corrupt: bad or missing entry {e}") from None

