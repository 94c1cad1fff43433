"""``ibert-tvm eval --task T``: FP32 vs integer-only vs int8 peers on one task, in one run
(the scoring lives in :mod:`ibert_tvm.evaluate`)."""

from __future__ import annotations

import json

from ..errors import IBertTVMError
from .argtypes import positive_int
from .common import report_path


# -- the command ------------------------------------------------------------------------------------------
def cmd(args) -> int:
    from ..evaluate import (
        calibration_sentences,
        check_pair,
        check_task_model,
        compile_cached,
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
    task = load_task(args.task).head(args.limit)
    out_json = report_path(args.output, "the markdown table goes")
    compiled = None
    ckpt = resolve_model(args.task, args.model)
    check_task_model(task, ckpt)
    from ..deploy.runtime import CompiledModel

    if args.artifact:
        compiled = CompiledModel(args.artifact)
    else:
        from ..quantization.calibrate import calibrate
        from ..quantization.config import QUANTIZATION, QuantConfig

        sentences = calibration_sentences(args.task)
        print(f"calibrating {ckpt.path} on {len(sentences)} training sentences ({args.scheme}, "
              f"{args.calibration or QUANTIZATION[args.scheme].calibration})")
        config = QUANTIZATION[args.scheme]
        if args.calibration:
            config = QuantConfig.from_dict({**config.to_dict(), "calibration": args.calibration})
        qm = calibrate(ckpt, sentences, config,
                       progress=lambda it: progress_fn()(it, "calibrate"))
        compiled = CompiledModel(compile_cached(qm))
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


def add_parser(sub) -> None:
    from ..evaluate import PEERS

    p = sub.add_parser(
        "eval", help="accuracy: FP32 vs integer-only vs int8 peers on a task",
        description="Score the FP32 PyTorch model, the compiled integer-only TVM model and optional dynamic-int8 "
        "peers on one task in one run; writes a JSON report and a markdown table.",
    )
    p.add_argument("--task", required=True,
                   help="stsb (STS-B dev, Spearman), sentiment (seeded test split, accuracy) or tsv:PATH "
                   "(a GLUE-format TSV with a header; accuracy or Spearman)")
    p.add_argument("--model", default="default",
                   help="Hugging Face model directory, or 'default' (all-MiniLM-L6-v2; for --task sentiment, its "
                   "fine-tuned sentiment classifier, trained once and cached)")
    p.add_argument("--artifact", help="compiled out/ of the same model (default: calibrate and compile it now)")
    p.add_argument("--peers", help=f"comma-separated peers to score as well: {', '.join(PEERS)}")
    p.add_argument("--calibration", choices=["minmax", "percentile"],
                   help="activation range statistic when compiling without --artifact (default: the scheme's)")
    p.add_argument("--scheme", default="ibert-w8a8",
                   help="quantization scheme when compiling without --artifact (default ibert-w8a8)")
    p.add_argument("--limit", type=positive_int, help="score only the first N examples")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("-o", "--output", default="eval.json", help="JSON report path; the table goes to the same "
                   "name with .md (default eval.json)")
    p.set_defaults(func=cmd)


