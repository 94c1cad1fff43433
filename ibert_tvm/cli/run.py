"""``ibert-tvm run out/ TEXT [TEXT ...]``: the embedding or the label of each text."""

from __future__ import annotations

import time

from ..deploy.batching import DEFAULT_BATCH_SIZE
from ..errors import IBertTVMError
from .argtypes import positive_int
from .common import progress


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run a compiled model on text", description=
                       "Tokenize, execute with the TVM runtime (no PyTorch), print the embedding or the label.")
    p.add_argument("compiled", help="directory written by `ibert-tvm compile`")
    p.add_argument("texts", nargs="*", help="texts (each a batch row)")
    p.add_argument("--pair", action="store_true", help="treat the two texts as one sentence pair")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                   help=f"texts per batch (default {DEFAULT_BATCH_SIZE}); texts are sorted by length and "
                   "batched, so memory stays bounded however many texts are given")
    p.add_argument("--truncate", action="store_true", help="cut texts longer than the model's maximum "
                   "sequence length (default: such a text is an error)")
    p.set_defaults(func=cmd)


def _check_utf8(texts) -> None:
    """Texts from argv that were not UTF-8 arrive with each bad byte as a lone surrogate
    (``surrogateescape``): name the argument and the byte instead of failing in the tokenizer."""
    for i, t in enumerate(texts, 1):
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:
            c = ord(t[e.start])
            what = f"byte 0x{c - 0xDC00:02x}" if 0xDC80 <= c <= 0xDCFF else f"code point U+{c:04X}"
            raise IBertTVMError(f"text {i} is not valid UTF-8 ({what} at character {e.start}): "
                                "pass texts in UTF-8") from None


def cmd(args) -> int:
    import numpy as np

    from ..deploy.runtime import CompiledModel

    _check_utf8(args.texts)
    model = CompiledModel(args.compiled)
    texts = args.texts
    if not texts:
        raise IBertTVMError("give at least one text to run")
    pairs = None
    if args.pair:
        if len(texts) != 2:
            raise IBertTVMError("--pair takes exactly two texts (a sentence pair)")
        texts, pairs = [texts[0]], [texts[1]]
    t0 = time.perf_counter()
    out = model.run_text(texts, pairs, batch_size=args.batch_size, truncate=args.truncate,
                         progress=progress("run") if len(texts) > args.batch_size else None)
    ms = (time.perf_counter() - t0) * 1000
    scale = model.output_scale
    m = model.manifest
    if m["head"] in ("token_classifier", "qa"):
        from ..deploy.api import token_head_lines

        lengths = [len(ids) for ids, _ in model.tokenizer.encode(texts, pairs, truncate=args.truncate)]
        print("\n".join(token_head_lines(m, texts, out, lengths)))
    elif m["head"] == "classifier":
        labels = m["labels"] or [f"LABEL_{i}" for i in range(out.shape[1])]
        for t, row in zip(texts, out):
            k = int(np.argmax(row))
            print(f"{labels[k]}\t{t}")
            print("  logits (int32 x scale {:.4g}): {}".format(scale, ", ".join(f"{labels[i]}={v}" for i, v in enumerate(row))))
    else:
        for t, row in zip(texts, out):
            norm = float(np.sqrt((row.astype(np.int64) ** 2).sum())) * scale
            print(f"{t!r}: embedding[{row.size}] int32 x scale {scale:.4g}; norm {norm:.4f}; "
                  f"first values {np.array2string(row[:6].astype(np.float64) * scale, precision=4)}")
        if len(texts) >= 2:
            a, b = out[0].astype(np.float64), out[1].astype(np.float64)
            cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
            print(f"cosine(text 1, text 2) = {cos:.4f}")
    print(f"({ms:.1f} ms, target {m['target']}, integer-only)")
    return 0
