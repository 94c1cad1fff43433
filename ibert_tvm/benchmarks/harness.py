"""One benchmark run: prepare every engine, time them interleaved, collect sizes and memory.

Per model:

1. **prepare** each engine in a child process (``worker prepare``): calibrate/compile/export,
   cached under ``<cache>/``. A failure (missing package, export error, crash) skips that
   engine with its reason; the run goes on.
2. **load** each prepared engine in its own worker process (``worker serve``), every thread
   pool set to ``threads``; then warm up every shape, smallest first. A shape whose single run
   takes longer than ``max_run_seconds`` is skipped for that engine, with every shape at least
   as large (an untuned TVM FP32 BERT-Base takes minutes per run).
3. **rounds**: ``rounds`` times, for every shape, every engine in turn (the order rotates each
   round and shape) runs one warm-up and ``ceil(runs / rounds)`` timed runs. Engines are thus
   interleaved in time: a burst of load from other processes hits all of them alike.
   Between engines the harness pauses ``pause_s`` so spinning thread pools go idle.
4. **outputs** of every engine on one shape (compared with the FP32 reference in the report),
   **profiles** of the TVM engines (per-kernel times; the integer model's give the GEMM
   throughput), then **quit**: the worker's peak RSS.

Nothing here asserts a speed: the report states what was measured.
"""

from __future__ import annotations

import json
import math
import os
import select
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..errors import IBertTVMError
from .engines import DEFAULT_ENGINES, ENGINES, thread_env
from .machine import WAIT_POLICIES, resolve_wait_policy

DEFAULT_SHAPES = ((1, 32), (8, 32), (1, 128), (8, 128))


@dataclass
class BenchConfig:
    models: list[str]
    engines: list[str] = field(default_factory=lambda: list(DEFAULT_ENGINES))
    shapes: list[tuple[int, int]] = field(default_factory=lambda: list(DEFAULT_SHAPES))
    runs: int = 20  # timed runs per (engine, shape), at least
    rounds: int = 5
    warmup: int = 2  # untimed runs per shape when a worker starts
    threads: int = 2
    trials: int = 0  # MetaSchedule trials for TVM FP32 (and the integer model, via the tuner)
    fp32_trials: int | None = None  # TVM FP32's per-shape budget (None: the integer model's)
    target: str | None = None  # integer target (None: x86 with VNNI, else llvm)
    profile: bool = False  # per-kernel tables in the report (+ TVM FP32 profiles)
    max_run_seconds: float = 30.0
    wait_policy: str = "auto"  # spin | passive | auto (passive when the machine is loaded at start)
    pause_s: float = 0.2
    cache: str = ""
    peak: bool = True
    prebuilt: dict = field(default_factory=dict)  # model name or path -> compiled out/ for tvm-int8
    peak_runs: int = 20
    prepare_timeout_s: float = 6 * 3600

    def __post_init__(self):
        bad = [e for e in self.engines if e not in ENGINES]
        if bad:
            raise IBertTVMError(f"unknown engine {', '.join(bad)}; known: {', '.join(ENGINES)}")
        if not self.models:
            raise IBertTVMError("no model to benchmark")
        if not self.engines:
            raise IBertTVMError("no engine to benchmark")
        self.engines = [e for e in ENGINES if e in self.engines]  # tvm-int8 first: its budget sets TVM FP32's
        for n, what in ((self.runs, "runs"), (self.rounds, "rounds"), (self.threads, "threads")):
            if int(n) < 1:
                raise IBertTVMError(f"{what} must be at least 1")
        if self.wait_policy not in WAIT_POLICIES:
            raise IBertTVMError(f"wait policy {self.wait_policy!r}: use auto, spin or passive")
        if self.trials < 0 or self.warmup < 0:
            raise IBertTVMError("trials and warmup must be >= 0")
        if not self.shapes or any(b < 1 or s < 1 for b, s in self.shapes):
            raise IBertTVMError(f"bad shapes {self.shapes}: batch and sequence must be >= 1")
        self.shapes = sorted({(int(b), int(s)) for b, s in self.shapes}, key=lambda bs: (bs[0] * bs[1], bs))

    @property
    def passive(self) -> bool:
        self.wait_policy = resolve_wait_policy(self.wait_policy)
        return self.wait_policy == "passive"

    @property
    def runs_per_round(self) -> int:
        return math.ceil(self.runs / self.rounds)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shapes"] = [list(s) for s in self.shapes]
        d["runs_per_round"] = self.runs_per_round
        return d


def shape_key(shape) -> str:
    return f"b{shape[0]}_s{shape[1]}"


class WorkerError(RuntimeError):
    pass


class Worker:
    """A ``worker serve`` process; ``request`` sends one JSON line and waits for the answer."""

    def __init__(self, threads: int, log_dir: Path, name: str, passive: bool = False):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ibert_tvm.benchmarks.worker", "serve"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log, env=thread_env(threads, passive), text=True, bufsize=1)

    def stderr_tail(self, n: int = 3) -> str:
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return " | ".join(lines[-n:])[-500:]

    def request(self, req: dict, timeout: float) -> dict:
        if self.proc.poll() is not None:
            raise WorkerError(f"the worker exited (code {self.proc.returncode}): {self.stderr_tail()}")
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerError(f"the worker died: {self.stderr_tail()}") from None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.kill()
            raise WorkerError(f"no answer to {req['cmd']} within {timeout:.0f} s (worker killed)")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            raise WorkerError(f"the worker died (code {self.proc.returncode}): {self.stderr_tail()}")
        ans = json.loads(line)
        if not ans.get("ok"):
            raise WorkerError(ans.get("error") or "unknown error")
        return ans

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def close(self) -> dict:
        ans = {}
        try:
            ans = self.request({"cmd": "quit"}, timeout=60)
        except WorkerError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        self._log.close()
        return ans


def prepare_engine(name: str, ctx: dict, log_dir: Path, *, timeout: float, log=print) -> tuple[dict | None, str | None]:
    """Run ``ENGINES[name].prepare(ctx)`` in a child: (spec, None) or (None, reason)."""
    from .engines import Engine

    if type(ENGINES[name]).prepare is Engine.prepare:  # nothing to build: the worker loads the model itself
        return {}, None
    ctx_path = log_dir / f"prepare-{name}.json"
    res_path = log_dir / f"prepare-{name}.result.json"
    ctx_path.write_text(json.dumps(ctx))
    with open(log_dir / f"prepare-{name}.log", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "ibert_tvm.benchmarks.worker", "prepare", name, str(ctx_path),
                                 str(res_path)], stdout=subprocess.PIPE, stderr=err, text=True, env=thread_env(os.cpu_count() or 1))
        try:
            for line in proc.stdout:  # the prepare's progress lines
                log(f"  [{name}] {line.rstrip()}")
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return None, f"preparing took longer than {timeout:.0f} s"
    if res_path.is_file():
        res = json.loads(res_path.read_text())
        if res.get("ok"):
            return res["spec"], None
        (log_dir / f"prepare-{name}.trace.txt").write_text(res.get("trace") or "")
        return None, res.get("error") or "prepare failed"
    tail = (log_dir / f"prepare-{name}.log").read_text(errors="replace").strip().splitlines()[-2:]
    return None, f"the prepare process died (code {proc.returncode}): {' | '.join(tail)[-300:]}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def measure_peak(cfg: BenchConfig, log_dir: Path, log=print) -> dict | None:
    w = Worker(cfg.threads, log_dir, "peak", cfg.passive)
    try:
        return w.request({"cmd": "peak", "threads": cfg.threads, "runs": cfg.peak_runs}, timeout=900)["peak"]
    except WorkerError as e:
        log(f"could not measure the int8 peak: {e}")
        return {"error": str(e)}
    finally:
        w.close()


def bench_model(model, cfg: BenchConfig, log_dir: Path, *, log=print, progress=None) -> dict:
    """Everything measured for one model (see the module docstring)."""
    res = {"model": model.to_dict(), "engines": {}}
    ctx = {"model": model.to_dict(), "shapes": [list(s) for s in cfg.shapes], "cache": cfg.cache,
           "target": cfg.target, "trials": cfg.trials, "fp32_trials": cfg.fp32_trials,
           "prebuilt": cfg.prebuilt.get(model.name) or cfg.prebuilt.get(model.path)}
    specs = {}
    for name in cfg.engines:
        t0 = time.time()
        log(f"[{model.name}] preparing {name}")
        spec, reason = prepare_engine(name, ctx, log_dir, timeout=cfg.prepare_timeout_s, log=log)
        e = res["engines"][name] = {"label": ENGINES[name].label, "precision": ENGINES[name].precision,
                                    "prepare_s": round(time.time() - t0, 1), "shapes": {}}
        if spec is None:
            log(f"[{model.name}] skipping {name}: {reason}")
            e.update(status="skipped", reason=reason)
            continue
        e.update(status="ok", spec=spec)
        if name == "tvm-int8" and spec.get("trials"):
            ctx["int8_trials"] = spec["trials"]  # TVM FP32 gets the same MetaSchedule budget
        try:
            e["files"] = ENGINES[name].files(model, spec)
            e["size_bytes"] = sum(e["files"].values())
        except OSError as err:
            e["files"], e["size_bytes"] = {}, None
            log(f"[{model.name}] {name}: cannot size the artifacts: {err}")
        specs[name] = spec

    workers: dict[str, Worker] = {}
    active: dict[str, list] = {}

    def fail(name, reason):
        log(f"[{model.name}] {name} failed: {reason}")
        res["engines"][name].update(status="failed", reason=reason)
        active.pop(name, None)
        w = workers.pop(name, None)
        if w is not None:
            w.kill()

    for name, spec in specs.items():
        w = workers[name] = Worker(cfg.threads, log_dir, f"{model.name}-{name}", cfg.passive)
        e = res["engines"][name]
        try:
            ans = w.request({"cmd": "load", "engine": name, "model": model.to_dict(),
                             "spec": {**spec, "passive_wait": cfg.passive},
                             "threads": cfg.threads}, timeout=1800)
            e.update(load_s=round(ans["load_s"], 2), rss_mb_bare=_r1(ans["rss_mb_bare"]),
                     rss_mb_before_load=_r1(ans["rss_mb_before"]), rss_mb_after_load=_r1(ans["rss_mb_after"]))
            if ans.get("serial_thresholds"):  # x86 builds: the table the loader chose (spin / passive)
                e["serial_thresholds"] = ans["serial_thresholds"]
            shapes, too_slow = [], None
            for shape in cfg.shapes:
                if too_slow is not None and shape[0] * shape[1] >= too_slow[0] * too_slow[1]:
                    e["shapes"][shape_key(shape)] = {"skipped": f"not run: {too_slow[0]}x{too_slow[1]} already exceeded "
                                                                f"--max-run-seconds {cfg.max_run_seconds:g}"}
                    continue
                ans = w.request({"cmd": "warmup", "shape": list(shape), "n": max(1, cfg.warmup),
                                 "limit_s": cfg.max_run_seconds}, timeout=max(1800.0, 30 * cfg.max_run_seconds))
                first = ans["seconds"][0]
                if max(ans["seconds"]) > cfg.max_run_seconds:
                    too_slow = shape
                    e["shapes"][shape_key(shape)] = {
                        "skipped": f"one run takes {max(ans['seconds']):.1f} s (> --max-run-seconds {cfg.max_run_seconds:g})",
                        "single_run_ms": max(ans["seconds"]) * 1000}
                    continue
                e["shapes"][shape_key(shape)] = {"first_run_ms": first * 1000, "times_ms": []}
                shapes.append(shape)
            active[name] = shapes
        except WorkerError as err:
            fail(name, str(err))

    # interleaved timing rounds
    blocks = sum(len(s) for s in active.values()) * cfg.rounds
    bar = progress(total=blocks, desc=f"timing {model.name}") if progress else None
    res["load_during"] = []
    for r in range(cfg.rounds):
        for si, shape in enumerate(cfg.shapes):
            names = [n for n in cfg.engines if n in active and shape in active[n]]
            k = (r + si) % len(names) if names else 0
            for name in names[k:] + names[:k]:
                if name not in active:
                    continue
                per_run = max(1e-3, res["engines"][name]["shapes"][shape_key(shape)]["first_run_ms"] / 1000)
                timeout = max(300.0, 20 * per_run * (cfg.runs_per_round + 1))
                try:
                    ans = workers[name].request({"cmd": "time", "shape": list(shape), "runs": cfg.runs_per_round,
                                                 "warmup": 1}, timeout=timeout)
                    res["engines"][name]["shapes"][shape_key(shape)]["times_ms"] += [t * 1000 for t in ans["times_s"]]
                except WorkerError as err:
                    fail(name, str(err))
                if bar is not None:
                    bar.update(1)
                time.sleep(cfg.pause_s)
        res["load_during"].append(_loadavg())
    if bar is not None:
        bar.close()

    # outputs (the same input for every engine), profiles, memory
    out_shape = cfg.shapes[0]
    for name in list(active):
        if out_shape not in active[name]:
            continue
        try:
            res["engines"][name]["output"] = workers[name].request(
                {"cmd": "output", "shape": list(out_shape)}, timeout=600)["output"]
        except WorkerError as err:
            log(f"[{model.name}] {name}: no output: {err}")
    res["output_shape"] = list(out_shape)
    # the deployment's peak RSS: loading, the timed runs and the output, before any profile (a
    # profile loads a second, instrumented copy of the model in the same worker)
    for name in list(active):
        try:
            res["engines"][name]["peak_rss_mb"] = _r1(workers[name].request({"cmd": "memory"}, timeout=60)["peak_rss_mb"])
        except WorkerError as err:
            log(f"[{model.name}] {name}: no memory figure: {err}")
    for name in ("tvm-int8", "tvm-int8-untuned", "tvm-fp32"):
        if name not in active or (name == "tvm-fp32" and not cfg.profile):
            continue
        prof = res["engines"][name]["profiles"] = {}
        for shape in active[name]:
            log(f"[{model.name}] profiling {name} {shape[0]}x{shape[1]}")
            try:
                prof[shape_key(shape)] = workers[name].request({"cmd": "profile", "shape": list(shape)},
                                                               timeout=1800)["profile"]
            except WorkerError as err:
                log(f"[{model.name}] {name}: profile failed: {err}")
                if name not in workers:
                    break
    for name, w in list(workers.items()):
        ans = w.close()
        if ans.get("peak_rss_mb") is not None:
            e = res["engines"][name]
            if e.get("profiles"):
                e["peak_rss_mb_with_profiles"] = _r1(ans["peak_rss_mb"])
            e.setdefault("peak_rss_mb", _r1(ans["peak_rss_mb"]))
    return res


def _r1(x):
    return None if x is None else round(float(x), 1)


def _loadavg():
    from .machine import load_average

    return load_average()


def run_bench(cfg: BenchConfig, *, log=print, progress=None, log_dir: Path | None = None) -> dict:
    """The whole run; returns the report (see ``report.summarize`` for the derived figures)."""
    from .machine import git_info, load_average, machine_info, versions
    from .models import resolve
    from .report import summarize

    if not cfg.cache:
        from ..tasks import cache_dir

        cfg.cache = str(cache_dir() / "bench")
    cache = Path(cfg.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if log_dir is None:  # the workers' stderr and the prepare traces of the last run
        log_dir = cache / "logs" / "last"
        if log_dir.is_dir():
            shutil.rmtree(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    models = [resolve(m, cache) for m in cfg.models]  # bad names fail before any work
    log(f"thread wait policy: {'passive' if cfg.passive else 'spin'} (load average {load_average()})")
    report = {
        "format": "ibert-tvm-bench/1",
        "started": _now(),
        "command": "ibert-tvm " + " ".join(sys.argv[1:]) if Path(sys.argv[0]).name in ("ibert-tvm", "__main__.py")
        else None,
        "config": cfg.to_dict(),
        "machine": machine_info(),
        "versions": versions(),
        "git": git_info(),
        "load_average": {"start": load_average()},
        "models": {},
    }
    t0 = time.time()
    if cfg.peak:
        log("measuring this machine's int8 GEMM peak (torch._int_mm)")
        report["peak"] = measure_peak(cfg, log_dir, log=log)
    for model in models:
        report["models"][model.name] = bench_model(model, cfg, log_dir, log=log, progress=progress)
    report["load_average"]["end"] = load_average()
    report["logs"] = str(log_dir)
    report["finished"] = _now()
    report["seconds"] = round(time.time() - t0, 1)
    return summarize(report)
