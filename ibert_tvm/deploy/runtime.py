"""Run a compiled ``out/`` with the TVM runtime, numpy and ``tokenizers`` only.

No PyTorch, no transformers, no Relax compiler import: this is what runs on a board.
``tvm.runtime.vm.VirtualMachine`` works with a runtime-only TVM install.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import IBertTVMError
from .batching import DEFAULT_BATCH_SIZE, run_batched
from .tokenize import Tokenizer

FORMAT = "ibert-tvm-compiled/1"
REQUIRED = ("target", "inputs", "params", "output", "family", "head", "max_seq", "vocab", "type_vocab", "pad_id",
            "tokenizer")


def sha256_file(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class CompiledModel:
    def __init__(self, out_dir, device: str | None = None):
        self.dir = Path(out_dir)
        if not self.dir.is_dir():
            raise IBertTVMError(f"{self.dir} is not a directory (expected the output of `ibert-tvm compile`)")
        mpath = self.dir / "manifest.json"
        if not mpath.is_file():
            raise IBertTVMError(f"{self.dir} is not an ibert-tvm compiled model: manifest.json is missing")
        try:
            self.manifest = json.loads(mpath.read_text())
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise IBertTVMError(f"{mpath} is corrupt: {e}") from None
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != FORMAT:
            raise IBertTVMError(f"{mpath} is not an ibert-tvm manifest (format {FORMAT!r} expected)")
        m = self.manifest
        missing = [k for k in REQUIRED if k not in m]
        if missing:
            raise IBertTVMError(f"{mpath} is corrupt: missing {', '.join(missing)}")
        try:
            with np.load(self.dir / "params.npz") as z:
                self.params = [z[f"p{i:04d}"] for i in range(len(m["params"]))]
        except Exception as e:  # noqa: BLE001 - OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError
            raise IBertTVMError(f"{self.dir}/params.npz is missing or corrupt: {e}") from None
        lib_path = self.dir / "model.so"
        if not lib_path.is_file():
            raise IBertTVMError(f"{self.dir}/model.so is missing")
        if m.get("lib_sha256") and sha256_file(lib_path) != m["lib_sha256"]:
            raise IBertTVMError(f"{lib_path} does not match its manifest (sha256 differs): corrupt or replaced")
        import tvm
        from tvm.runtime.vm import VirtualMachine

        try:
            lib = tvm.runtime.load_module(str(lib_path))
        except Exception as e:  # noqa: BLE001
            raise IBertTVMError(
                f"cannot load {lib_path} (built for target {m.get('target')!r}; a library for another "
                f"architecture cannot be loaded here): {e}"
            ) from None
        if device is None:  # CUDA builds run on the first GPU (untested here: no GPU was available)
            device = "cuda" if str(m.get("target", "")).startswith("cuda") else "cpu"
        dev = tvm.cpu() if device == "cpu" else tvm.device(device)
        self.vm = VirtualMachine(lib, dev)
        self._lock = threading.Lock()  # one VM, shared by every thread: see run_ids
        self._tvm_params = [tvm.runtime.tensor(p, dev) for p in self.params]
        self.dev = dev
        try:
            tokenizer_json = (self.dir / m["tokenizer"]).read_text(encoding="utf-8")
        except (OSError, ValueError) as e:
            raise IBertTVMError(f"{self.dir}/{m['tokenizer']} is missing or unreadable: {e}") from None
        self.tokenizer = Tokenizer(tokenizer_json, m["max_seq"], m["family"], m["pad_id"])

    @property
    def output_scale(self) -> float:
        return float(self.manifest["output"]["scale"])

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        m = self.manifest
        out = {}
        shape = None
        for name in m["inputs"]:
            if name not in inputs:
                raise IBertTVMError(f"missing input {name!r}")
            a = np.asarray(inputs[name])
            if a.ndim != 2 or not np.issubdtype(a.dtype, np.integer):
                raise IBertTVMError(f"input {name} must be a 2-D integer array [batch, seq], got {a.dtype} {a.shape}")
            if shape is None:
                shape = a.shape
            elif a.shape != shape:
                raise IBertTVMError(f"input {name} has shape {a.shape}, expected {shape}")
            out[name] = a  # range-checked below before the cast to int32 (which could wrap)
        if shape[0] < 1 or shape[1] < 1:
            raise IBertTVMError(f"empty batch {shape}")
        if shape[1] > m["max_seq"]:
            raise IBertTVMError(f"sequence length {shape[1]} exceeds the model's maximum {m['max_seq']}")
        ids = out["input_ids"]
        if ids.min() < 0 or ids.max() >= m["vocab"]:
            bad = int(ids[(ids < 0) | (ids >= m["vocab"])][0])
            raise IBertTVMError(f"token id {bad} is outside the vocabulary [0, {m['vocab']})")
        tt = out["token_type_ids"]
        if tt.min() < 0 or tt.max() >= m["type_vocab"]:
            raise IBertTVMError(f"token_type_ids must be in [0, {m['type_vocab']})")
        mask = out["attention_mask"]
        if not np.isin(mask, (0, 1)).all():
            raise IBertTVMError("attention_mask must contain only 0 and 1")
        pos = out.get("position_ids")  # rows of the position table: RoBERTa's starts past pad_id
        n_pos = m["max_seq"] + (m["pad_id"] + 1 if m["family"] == "roberta" else 0)
        if pos is not None and (pos.min() < 0 or pos.max() >= n_pos):
            raise IBertTVMError(f"position_ids must be in [0, {n_pos})")
        return {k: v.astype(np.int32) for k, v in out.items()}

    def run_ids(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Integer inputs -> integer output (``[B, H]`` embedding or ``[B, labels]`` logits), as one batch.

        Thread-safe: the Relax VM keeps per-call state, so calls on one model are serialised by
        a lock (eight threads sharing a VM without it crashed the process). Each call already
        runs its kernels on TVM's thread pool, so running two at once would gain nothing; the
        uncontended lock costs well under a microsecond against a millisecond-scale call.
        """
        import tvm

        x = self.check_inputs(inputs)
        with self._lock:
            args = [tvm.runtime.tensor(x[n], self.dev) for n in self.manifest["inputs"]]
            return self.vm["forward"](*args, *self._tvm_params).numpy()

    def run_text(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
                 batch_size: int = DEFAULT_BATCH_SIZE, truncate: bool = False, progress=None) -> np.ndarray:
        """Texts (and sentence pairs) -> integer outputs in input order, in length-sorted batches
        of at most ``batch_size`` rows (bounded memory; identical to one text at a time).
        A text over the model's maximum is an error unless ``truncate``."""
        return run_batched(self.run_ids, self.tokenizer, texts, pairs, batch_size=batch_size, truncate=truncate,
                           progress=progress)
