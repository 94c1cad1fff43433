"""``ibert-tvm eval --task T``: FP32 vs integer-only vs int8 peers on one task, in one run
(the scoring lives in :mod:`ibert_tvm.evaluate`)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import IBertTVMError
from .argtypes import positive_int
from .common import report_path


# -- the command ------------------------------------------------------------------------------------------
def cmd(args) -> int:
    from ..evaluate import (
        check_pair,
        check_task_model,
        evaluate,
        markdown_table,
        parse_peers,
        progress_fn,
        resolve_model,
        write_atomic,
    )

    from ..tasks import load_task

    peers = parse_peers(args.peers)
    from ..quantization.config import QUANTIZATION

    if args.scheme not in QUANTIZATION:
        raise IBertTVMError(f"unknown quantization scheme {args.scheme!r}; known: {', '.join(QUANTIZATION)}")
    if args.gelu and args.artifact:
        raise IBertTVMError(f"--gelu {args.gelu} applies when compiling without --artifact; the GELU of "
                            f"{args.artifact} is the one it was calibrated with")
    if args.task == "fidelity":
        return cmd_fidelity(args, peers)
    if args.text or args.per_slice:
        raise IBertTVMError("--text and --per-slice belong to --task fidelity")

    task = load_task(args.task).head(args.limit)
    out_json = report_path(args.output, "the markdown table goes")
    ckpt = resolve_model(args.task, args.model)
    check_task_model(task, ckpt)
    from ..deploy.runtime import CompiledModel

    compiled = CompiledModel(_integer_artifact(args, ckpt, args.task))
    from ..model.hf_loader import load_tokenizer_json

    check_pair(ckpt, compiled, load_tokenizer_json(ckpt.path))  # before any scoring
    print(f"evaluating {task.name}: {len(task.examples)} examples ({task.kind}); columns: fp32, integer"
          + "".join(f", {p}" for p in peers))
    report = evaluate(task, ckpt, compiled=compiled, peers=peers, batch_size=args.batch_size,
                      progress=progress_fn())
    import shlex
    import sys

    report["command"] = "ibert-tvm " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    table = markdown_table(report)
    write_atomic(out_json, json.dumps(report, indent=1))
    write_atomic(out_json.with_suffix(".md"), table)
    print(table, end="")
    print(f"wrote {out_json} and {out_json.with_suffix('.md')}")
    return 0


def _integer_artifact(args, ckpt, task_name: str):
    """--artifact, or the model calibrated (scheme, calibration, GELU) and compiled for this CPU now (cached)."""
    from ..evaluate import calibration_sentences, compile_cached, progress_fn
    from ..quantization.calibrate import calibrate
    from ..quantization.config import QUANTIZATION

    if args.artifact:
        return args.artifact
    config = QUANTIZATION[args.scheme].with_calibration(args.calibration).with_gelu(args.gelu)
    sentences = calibration_sentences(task_name)
    print(f"calibrating {ckpt.path} on {len(sentences)} training sentences ({config.name}, {config.calibration})")
    qm = calibrate(ckpt, sentences, config, progress=lambda it: progress_fn()(it, "calibrate"))
    return compile_cached(qm)


def cmd_fidelity(args, peers) -> int:
    """--task fidelity: per-slice cosine of the integer (and peer) embeddings to FP32."""
    import shlex
    import sys

    from .. import fidelity as F
    from ..evaluate import progress_fn, resolve_model, write_atomic

    out_json = report_path(args.output, "the markdown table goes")
    if args.text and args.per_slice:
        raise IBertTVMError("--per-slice sizes the probe set's slices; with --text each file is scored whole "
                            "(use --limit N for its first N lines)")
    if args.text:  # the user's files, before any slow work
        names = [Path(t).name for t in args.text]
        slices = {(n if names.count(n) == 1 else t): F.read_text_file(t) for n, t in zip(names, args.text)}
        data = {"files": [str(t) for t in args.text]}
    else:
        slices = None
    ckpt = resolve_model("fidelity", args.model)
    if ckpt.head != "embedding":
        raise IBertTVMError(f"--task fidelity compares sentence embeddings; {ckpt.path} is a classifier "
                            f"({ckpt.architecture}): use an embedding model (e.g. --model default)")
    art = _integer_artifact(args, ckpt, "fidelity")
    integer, desc = F.open_integer(art, ckpt, batch_size=args.batch_size, progress=progress_fn())
    if slices is None:
        from .. import probe

        slices = probe.probe_slices(args.per_slice or probe.PER_SLICE)
        data = {"probe": probe.sources_info(), "per_slice": args.per_slice or probe.PER_SLICE,
                "sha256": probe.slices_digest(slices), "rebuild": "python -m ibert_tvm.probe -o probe.tsv"}
    if args.limit:
        slices = {k: v[: args.limit] for k, v in slices.items()}
        data["limit_per_slice"] = args.limit
    import tempfile

    columns = {"integer": integer}
    with tempfile.TemporaryDirectory(prefix="ibert-tvm-fidelity-") as workdir:  # the ONNX peers' files
        for p in peers:
            try:
                columns[p] = _peer_embedder(p, ckpt, args.batch_size, Path(workdir))
            except Exception as e:  # noqa: BLE001 - a peer that cannot be built is skipped, as in eval
                reason = (f"{e.name} is not installed (pip install onnxruntime onnx)" if isinstance(e, ModuleNotFoundError)
                          else f"{type(e).__name__}: {e}".splitlines()[0][:300])
                print(f"skipping {p}: {reason}")
        print(f"fidelity: {sum(map(len, slices.values()))} sentences in {len(slices)} slices; columns: "
              + ", ".join(columns))
        report = F.fidelity_report(slices, F.fp32_embedder(ckpt, batch_size=args.batch_size), columns)
    report.update(task="fidelity", data=data, artifact=desc,
                  model={"path": str(ckpt.path), "architecture": ckpt.architecture, "source_hash": ckpt.model_hash},
                  command="ibert-tvm " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    table = F.fidelity_table(report)
    write_atomic(out_json, json.dumps(report, indent=1))
    write_atomic(out_json.with_suffix(".md"), table)
    print(table, end="")
    print(f"wrote {out_json} and {out_json.with_suffix('.md')}")
    return 0


def _peer_embedder(name, ckpt, batch_size, workdir):
    """A dynamic-int8 peer as a texts -> embeddings function (the peers of ``eval``); ONNX files go
    to ``workdir``."""
    from ..deploy.batching import run_batched
    from ..evaluate import ort_encoder, torch_int8_encoder
    from ..fidelity import _tokenizer_of

    tok = _tokenizer_of(ckpt)
    if name == "torch-int8":
        run = torch_int8_encoder(ckpt)
    else:
        run = ort_encoder(ckpt, tok, workdir, "int8" if name == "ort-int8" else "uint8")
    return lambda texts: run_batched(run, tok, list(texts), batch_size=batch_size, truncate=True)


def add_parser(sub) -> None:
    from ..evaluate import PEERS
    from ..quantization.config import GELU_FORMS

    p = sub.add_parser(
        "eval", help="accuracy: FP32 vs integer-only vs int8 peers on a task",
        description="Score the FP32 PyTorch model, the compiled integer-only TVM model and optional dynamic-int8 "
        "peers on one task in one run; writes a JSON report and a markdown table.",
    )
    p.add_argument("--task", required=True,
                   help="stsb (STS-B dev, Spearman), sentiment (seeded test split, accuracy), tsv:PATH "
                   "(a GLUE-format TSV with a header; accuracy or Spearman), or fidelity (per-slice cosine of the "
                   "integer embedding to FP32 on the probe set or --text files: mean, median, 1st percentile, "
                   "worst, share < 0.90)")
    p.add_argument("--model", default="default",
                   help="Hugging Face model directory, or 'default' (all-MiniLM-L6-v2; for --task sentiment, its "
                   "fine-tuned sentiment classifier, trained once and cached)")
    p.add_argument("--artifact", help="compiled out/ of the same model (default: calibrate and compile it now); "
                   "for --task fidelity also a quantized q/, run by the golden executor (bit-identical)")
    p.add_argument("--text", action="append", metavar="FILE",
                   help="--task fidelity: a UTF-8 file of one sentence per line, scored as its own slice instead "
                   "of the probe set (repeatable)")
    p.add_argument("--per-slice", type=positive_int,
                   help="--task fidelity: sentences per probe slice (default 400; the probe set is built from "
                   "pinned pip/npm packages, fetched once into $IBERT_TVM_CACHE)")
    p.add_argument("--peers", help=f"comma-separated peers to score as well: {', '.join(PEERS)}")
    p.add_argument("--calibration", choices=["minmax", "percentile"],
                   help="activation range statistic when compiling without --artifact (default: the scheme's)")
    p.add_argument("--scheme", default="ibert-w8a8",
                   help="quantization scheme when compiling without --artifact (default ibert-w8a8)")
    p.add_argument("--gelu", choices=GELU_FORMS, metavar="{ibert,poly4..poly8}",
                   help="integer GELU when compiling without --artifact, as in calibrate --gelu (default: the scheme's)")
    p.add_argument("--limit", type=positive_int, help="score only the first N examples (fidelity: per slice)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("-o", "--output", default="eval.json", help="JSON report path; the table goes to the same "
                   "name with .md (default eval.json)")
    p.set_defaults(func=cmd)


