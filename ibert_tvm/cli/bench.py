"""``ibert-tvm bench``: integer-only TVM against every engine a user would pick, side by side.

    ibert-tvm bench                                         # MiniLM + BERT-Base, all engines, 4 shapes
    ibert-tvm bench --models minilm --engines tvm-int8,ort-int8 --shapes 1x32 --runs 20
    ibert-tvm bench --trials 64 --profile -o bench/results/bench.json
    ibert-tvm bench --compare bench/results/bench.json -o new.json   # what changed since

Engines (``ibert_tvm.benchmarks.engines``): tvm-int8 (ours), tvm-fp32, torch-fp32, torch-int8,
ort-fp32, ort-int8 (``all``), and on request tvm-int8-untuned (ours without a tuning database). Each runs in its own worker process with the same number of threads;
engines are interleaved in repeated rounds; each latency is the median of >= ``--runs`` timed
runs after warm-up, with its interquartile range. An engine that cannot run (a missing
package, a failed export) is skipped with the reason; the run goes on.

Writes ``OUT.json`` (every timing, machine, load average, versions, git commit), ``OUT.md``
(latency, speedups vs PyTorch FP32 and ONNX Runtime int8, sizes, memory, GEMM throughput vs the
measured int8 peak, where the time goes) and ``OUT.png`` (chart).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .argtypes import (
    nonneg_int,
    positive_float,
    positive_int,
)
from ..errors import IBertTVMError
from .common import report_path



def parse_shapes(s: str) -> list[tuple[int, int]]:
    shapes = []
    for part in s.split(","):
        part = part.strip().lower()
        if not part:
            continue
        try:
            b, q = part.split("x")
            shapes.append((int(b), int(q)))
        except ValueError:
            raise IBertTVMError(f"bad shape {part!r}: use BATCHxSEQ, e.g. 8x128") from None
        if shapes[-1][0] < 1 or shapes[-1][1] < 1:
            raise IBertTVMError(f"bad shape {part!r}: batch and sequence must be >= 1")
    if not shapes:
        raise IBertTVMError("no shape given")
    return shapes


def parse_list(s: str, known=None, what="engine", extra=()) -> list[str]:
    items = [x.strip() for x in s.split(",") if x.strip()]
    if known is not None:
        items = [y for x in items for y in (known if x == "all" else [x])]
        items = list(dict.fromkeys(items))
        bad = [x for x in items if x not in known and x not in extra]
        if bad:
            raise IBertTVMError(f"unknown {what} {', '.join(bad)}; known: {', '.join((*known, *extra))}")
    if not items:
        raise IBertTVMError(f"no {what} given")
    return items


def cmd(args) -> int:
    from tqdm.auto import tqdm

    from ..benchmarks.engines import DEFAULT_ENGINES, EXTRA_ENGINES
    from ..benchmarks.harness import BenchConfig, run_bench
    from ..benchmarks.report import write_outputs

    out_json = report_path(args.output, "the .md and .png go")
    prev = None
    if args.compare:
        try:
            prev = json.loads(Path(args.compare).read_text())
        except (OSError, ValueError) as e:
            raise IBertTVMError(f"--compare {args.compare}: not a readable JSON report ({e})") from None
        if not isinstance(prev, dict) or prev.get("format") != "ibert-tvm-bench/1":
            raise IBertTVMError(f"--compare {args.compare} is not an ibert-tvm bench report")
    cfg = BenchConfig(
        models=parse_list(args.models, what="model"), engines=parse_list(args.engines, DEFAULT_ENGINES, extra=EXTRA_ENGINES),
        shapes=parse_shapes(args.shapes), runs=args.runs, rounds=args.rounds, warmup=args.warmup,
        threads=args.threads, trials=args.trials, fp32_trials=args.fp32_trials, target=args.target, profile=args.profile,
        max_run_seconds=args.max_run_seconds, cache=args.cache or "", peak=not args.no_peak,
        wait_policy=args.wait_policy,
    )
    print(f"bench: models {', '.join(cfg.models)}; engines {', '.join(cfg.engines)}; shapes "
          f"{', '.join(f'{b}x{s}' for b, s in cfg.shapes)}; {cfg.threads} threads; >= {cfg.runs} runs in {cfg.rounds} rounds")
    report = run_bench(cfg, progress=lambda total, desc: tqdm(total=total, desc=desc, unit="block", leave=False,
                                                              disable=None))
    if prev is not None:
        from ..benchmarks.report import compare

        report["compare"] = compare(report, prev, str(args.compare))
    paths = write_outputs(report, out_json)
    from ..benchmarks.report import loaded

    for t in report.get("targets", []):
        mark = "n/a" if t["reached"] is None else ("reached" if t["reached"] else "NOT reached")
        print(f"  {t['target']}: {t['display']} ({mark})")
    if loaded(report):
        print(f"note: load average {report['load_average']} on {os.cpu_count()} CPUs: figures are indicative only")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def add_parser(sub) -> None:
    from ..benchmarks.engines import DEFAULT_ENGINES, EXTRA_ENGINES

    p = sub.add_parser(
        "bench", help="latency of integer-only TVM vs PyTorch / ONNX Runtime / TVM FP32, side by side",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models", default="minilm,bert-base",
                   help="comma-separated: minilm (the default model), bert-base (BERT-Base shape, random weights, "
                   "calibrated on random text), or Hugging Face model directories (default minilm,bert-base)")
    p.add_argument("--engines", default="all",
                   help=f"comma-separated: all (= {', '.join(DEFAULT_ENGINES)}), any of those, or "
                   f"{', '.join(EXTRA_ENGINES)} (ours without a tuning database: what tuning changes); default all")
    p.add_argument("--shapes", default="1x32,8x32,1x128,8x128", help="BATCHxSEQ list (default 1x32,8x32,1x128,8x128)")
    p.add_argument("--runs", type=positive_int, default=20, help="timed runs per engine and shape, at least (default 20)")
    p.add_argument("--rounds", type=positive_int, default=5, help="interleaved rounds the runs are split into (default 5)")
    p.add_argument("--warmup", type=nonneg_int, default=2, help="untimed runs per shape when an engine starts (default 2)")
    p.add_argument("--threads", type=positive_int, default=2, help="threads of every engine (default 2)")
    p.add_argument("--trials", type=nonneg_int, default=0,
                   help="MetaSchedule budget. The integer model uses its tuning database (tuning_logs/, found by "
                   "`ibert-tvm tune`'s lookup) when there is one, else is tuned with this many trials (0: untuned); "
                   "TVM FP32 is tuned per shape with the integer database's trial count, else with this (default 0)")
    p.add_argument("--fp32-trials", type=nonneg_int, default=None,
                   help="TVM FP32's MetaSchedule budget per shape, overriding the rule above (0: untuned)")
    p.add_argument("--target", choices=["llvm", "x86"],
                   help="target of the integer model (default: x86 when this CPU has VNNI and the project has it, else llvm)")
    p.add_argument("--profile", action="store_true",
                   help="add per-kernel tables (top kernels of TVM int8, and a TVM FP32 profile) to the report")
    p.add_argument("--max-run-seconds", type=positive_float, default=30.0,
                   help="skip an engine's shape (and larger ones) when one run takes longer (default 30)")
    p.add_argument("--wait-policy", choices=["auto", "spin", "passive"], default="auto",
                   help="idle threads of every engine spin (the libraries' default) or sleep (passive); auto: passive "
                   "when the load average exceeds half the CPUs at start (default auto)")
    p.add_argument("--no-peak", action="store_true", help="do not measure the int8 GEMM peak")
    p.add_argument("--compare", metavar="PREV.json",
                   help="an earlier report: add a section comparing its medians and speedups with this run's")
    p.add_argument("--cache", help="cache of built artifacts (default ~/.cache/ibert-tvm/bench)")
    p.add_argument("-o", "--output", default="bench.json",
                   help="JSON report; OUT.md and OUT.png are written next to it (default bench.json)")
    p.set_defaults(func=cmd)
