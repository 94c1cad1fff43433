"""The board-side runner: ``python -m ibert_tvm.deploy.run OUT/ "text" ...``.

What a user runs on a device after copying a compiled ``out/`` there. It imports only the TVM
runtime library (through ``tvm_ffi``, not the ``tvm`` package: :mod:`ibert_tvm.deploy.light`),
numpy, ``tokenizers`` and :mod:`ibert_tvm.deploy.runtime` / ``.tokenize`` (no PyTorch, no
transformers, no Relax compiler), so a runtime-only TVM install is enough.

    python -m ibert_tvm.deploy.run out-arm/ "A plane is taking off." "An air plane is taking off."
    python -m ibert_tvm.deploy.run out-arm/ --ids-json batch.json --print-ints

``--ids-json FILE`` (``-`` for stdin) takes integer inputs instead of texts: a JSON object
``{"input_ids": [[...]], "attention_mask": [[...]], "token_type_ids": [[...]],
"position_ids": [[...]]}``, or a list of such batches. ``--print-ints`` prints the raw int32
output as one JSON object ``{"output": [[...]], "scale": s, "target": t, "ms": t, "runtime": r}`` on stdout
(``"outputs": [...]`` and ``"ms": [...]``, one per batch, for a list), for exact comparison
between builds; ``ms`` is the fastest of ``--repeat`` runs; ``runtime`` says what ran the model
(``tvm_ffi + libtvm_runtime.so``, or ``import tvm (why)``). Errors print ``error: ...`` and
exit 2; a ``model.so`` built for another CPU architecture is named as such before the runtime
tries to load it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from ..errors import IBertTVMError
from ..support.elf import elf_machine

_HOST_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "i686": "x86", "i386": "x86"}


def check_architecture(out_dir: Path) -> None:
    """Refuse a ``model.so`` built for another CPU architecture, with a clear message."""
    lib = out_dir / "model.so"
    arch = elf_machine(lib)
    host = platform.machine().lower()
    host = _HOST_ALIASES.get(host, host)
    if arch is None or arch == host:
        return
    target = "?"
    try:
        target = json.loads((out_dir / "manifest.json").read_text()).get("target", "?")
    except (OSError, ValueError, AttributeError):
        pass
    hint = "--target aarch64" if host == "aarch64" else "--target llvm"
    raise IBertTVMError(
        f"{lib} is built for {arch} (target {target!r}) but this machine is {host}: "
        f"compile the model for this machine (ibert-tvm compile ... {hint})"
    )


def _read_ids(path: str) -> tuple[list[dict], bool]:
    """The batches in an ``--ids-json`` file: one object, or a list of objects."""
    import numpy as np

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        data = json.loads(text)
    except (OSError, ValueError) as e:
        raise IBertTVMError(f"--ids-json {path}: not readable JSON: {e}") from None
    batches = data if isinstance(data, list) else [data]
    if not batches or not all(isinstance(b, dict) for b in batches):
        raise IBertTVMError(f"--ids-json {path}: expected an object (or a list of objects) of input name -> [[int]]")
    out = []
    for b in batches:
        arrays = {}
        for k, v in b.items():
            try:
                a = np.asarray(v)
            except ValueError as e:  # ragged rows
                raise IBertTVMError(f"--ids-json {path}: input {k!r} is not a rectangular array: {e}") from None
            if a.size and not np.issubdtype(a.dtype, np.integer):
                raise IBertTVMError(f"--ids-json {path}: input {k!r} must hold integers, got {a.dtype}")
            arrays[k] = a.astype(np.int64)
        out.append(arrays)
    return out, isinstance(data, list)


def _print_human(model, texts, out, ms: float, lengths=None) -> None:
    import numpy as np

    m = model.manifest
    scale = model.output_scale
    if m["head"] in ("token_classifier", "qa"):
        from .api import token_head_lines

        print("\n".join(token_head_lines(m, texts, out, lengths)))
    elif m["head"] == "classifier":
        labels = m.get("labels") or [f"LABEL_{i}" for i in range(out.shape[1])]
        for t, row in zip(texts, out):
            print(f"{labels[int(np.argmax(row))]}\t{t}")
            print("  logits (int32 x scale {:.4g}): {}".format(
                scale, ", ".join(f"{labels[i]}={v}" for i, v in enumerate(row))))
    else:
        for t, row in zip(texts, out):
            print(f"{t!r}: embedding[{row.size}] int32 x scale {scale:.4g}; first values {row[:6].tolist()}")
        if len(texts) >= 2:
            a, b = out[0].astype(np.int64), out[1].astype(np.int64)
            cos = float(a @ b) / float(np.sqrt(float(a @ a) * float(b @ b)) or 1.0)
            print(f"cosine(text 1, text 2) = {cos:.4f}")
    print(f"({ms:.1f} ms, target {m['target']}, {platform.machine()}, integer-only)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m ibert_tvm.deploy.run",
        description="Run a compiled ibert-tvm model with the TVM runtime only (what runs on a board).",
    )
    ap.add_argument("compiled", help="the out/ directory written by `ibert-tvm compile`")
    ap.add_argument("texts", nargs="*", help="texts to embed or classify")
    ap.add_argument("--pair", action="store_true", help="the two texts are one sentence pair (classifiers)")
    ap.add_argument("--ids-json", metavar="FILE", help="integer inputs as JSON instead of texts ('-' = stdin)")
    ap.add_argument("--print-ints", action="store_true", help="print the raw int32 output as JSON (for exact comparison)")
    ap.add_argument("--repeat", type=int, default=1, help="run N times and report the fastest (default 1)")
    a = ap.parse_args(argv)
    try:
        if a.repeat < 1:
            raise IBertTVMError("--repeat must be >= 1")
        if a.ids_json and a.texts:
            raise IBertTVMError("give texts or --ids-json, not both")
        if not a.ids_json and not a.texts:
            raise IBertTVMError("give at least one text (or --ids-json FILE)")
        out_dir = Path(a.compiled)
        if out_dir.is_dir():
            check_architecture(out_dir)
        from .runtime import CompiledModel

        model = CompiledModel(out_dir)  # checks out/ first; then tvm_ffi + libtvm_runtime.so, no torch
        if a.ids_json:
            batches, many = _read_ids(a.ids_json)
            texts = None
        else:
            texts, pairs = a.texts, None
            if a.pair:
                if len(texts) != 2:
                    raise IBertTVMError("--pair takes exactly two texts (a sentence pair)")
                texts, pairs = [texts[0]], [texts[1]]
            batches, many = [model.tokenizer(texts, pairs)], False
        outs, ms = [], []
        for inputs in batches:
            best = float("inf")
            for _ in range(a.repeat):
                t0 = time.perf_counter()
                out = model.run_ids(inputs)
                best = min(best, (time.perf_counter() - t0) * 1000)
            outs.append(out)
            ms.append(round(best, 3))
        if a.print_ints:
            res = {"outputs": [o.tolist() for o in outs], "ms": ms} if many else {"output": outs[0].tolist(), "ms": ms[0]}
            res.update(scale=model.output_scale, target=model.manifest["target"], runtime=model.runtime_note,
                       threads=model.threads_note)
            print(json.dumps(res))
        else:
            for i, out in enumerate(outs):
                mask = batches[i].get("attention_mask")
                lengths = [int(n) for n in (mask != 0).sum(axis=1)] if mask is not None else [out.shape[1]] * len(out)
                _print_human(model, texts or [f"batch {i} row {r}" for r in range(len(out))], out, ms[i], lengths)
    except IBertTVMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
