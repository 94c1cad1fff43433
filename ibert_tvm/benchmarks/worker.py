"""The benchmark's child processes.

    python -m ibert_tvm.benchmarks.worker serve
        one engine's worker: JSON requests on stdin, one JSON line per answer on stdout
        (anything a library prints goes to stderr). Requests:
          {"cmd": "load", "engine", "model", "spec", "threads"}  -> load_s, rss_mb_{bare,before,after}
                                                                    (and serial_thresholds: the table fed)
          {"cmd": "warmup", "shape": [B, S], "n", "limit_s"}     -> seconds of each run
          {"cmd": "time", "shape", "runs", "warmup"}             -> times_s (timed runs only)
          {"cmd": "output", "shape"}                             -> the output, as lists
          {"cmd": "profile", "shape"}                            -> per-kernel profile (TVM)
          {"cmd": "peak", "threads"}                             -> int8/fp32 GEMM peak (torch)
          {"cmd": "corpus", "path", "batch_size"}                -> its token counts (throughput.BulkJob)
          {"cmd": "bulk", "save": path | null}                   -> seconds, checksum of one whole pass
          {"cmd": "memory"}                                      -> peak_rss_mb, rss_mb (so far)
          {"cmd": "quit"}                                        -> peak_rss_mb
        Every answer has "ok"; a failure answers {"ok": false, "error": one line, "trace"}.

    python -m ibert_tvm.benchmarks.worker prepare ENGINE CTX.json RESULT.json
        ``Engine.prepare(ctx)`` in its own process; writes {"ok", "spec" | "error"} to RESULT.json.

One process per engine: PyTorch's, ONNX Runtime's and TVM's thread pools each size themselves
for the whole machine and interfere inside one process. The harness sets every pool to the
same thread count through the environment (``engines.thread_env``) and the engine APIs.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import sys
import time
import traceback


def _status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """Current resident set size (MB)."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """This process image's peak RSS (MB). ``VmHWM``, not ``ru_maxrss``: on Linux the latter
    survives exec, so a worker would report its parent's size at fork time when that was larger."""
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Server:
    def __init__(self):
        self.runner = None
        self.model = None
        self.inputs: dict = {}
        self.job = None  # throughput.BulkJob, after "corpus"

    def _inputs(self, shape):
        from .models import bench_inputs

        key = tuple(shape)
        if key not in self.inputs:
            self.inputs[key] = bench_inputs(self.model, *key)
        return self.inputs[key]

    def load(self, req):
        from .engines import ENGINES
        from .models import BenchModel

        engine = ENGINES[req["engine"]]
        if engine.blocks_torch and "torch" not in sys.modules:
            sys.modules["torch"] = None  # a deployment has no PyTorch: tvm_ffi's optional import fails
        self.model = BenchModel.from_dict(req["model"])
        bare = rss_mb()
        engine.imports()
        before = rss_mb()
        t0 = time.perf_counter()
        self.runner = engine.load(self.model, req.get("spec") or {}, int(req["threads"]))
        ans = {"load_s": time.perf_counter() - t0, "rss_mb_bare": bare, "rss_mb_before": before,
               "rss_mb_after": rss_mb()}
        if self.runner.serial_thresholds is not None:  # which threshold table the loader fed (x86 builds)
            ans["serial_thresholds"] = self.runner.serial_thresholds
        return ans

    def warmup(self, req):
        x = self._inputs(req["shape"])
        secs = []
        for _ in range(int(req.get("n", 1))):
            t0 = time.perf_counter()
            self.runner(x)
            secs.append(time.perf_counter() - t0)
            if req.get("limit_s") and secs[-1] > float(req["limit_s"]):
                break
        return {"seconds": secs}

    def time(self, req):
        x = self._inputs(req["shape"])
        for _ in range(int(req.get("warmup", 1))):
            self.runner(x)
        gc.collect()
        gc.disable()
        try:
            ts = []
            for _ in range(int(req["runs"])):
                t0 = time.perf_counter()
                self.runner(x)
                ts.append(time.perf_counter() - t0)
        finally:
            gc.enable()
        return {"times_s": ts}

    def output(self, req):
        return {"output": self.runner(self._inputs(req["shape"])).tolist()}

    def profile(self, req):
        if self.runner.profile is None:
            raise RuntimeError("this engine has no per-kernel profiler")
        return {"profile": self.runner.profile(self._inputs(req["shape"]))}

    def peak(self, req):
        from .profile import measure_peak

        return {"peak": measure_peak(int(req["threads"]), runs=int(req.get("runs", 20)))}

    def corpus(self, req):
        from .throughput import BulkJob

        sentences = json.loads(open(req["path"], encoding="utf-8").read())
        self.job = BulkJob(self.model, sentences, int(req["batch_size"]))
        return {"corpus": self.job.describe()}

    def bulk(self, req):
        """One pass of the bulk-embedding job, timed end to end; ``save``: the embeddings as .npy."""
        import numpy as np

        from .throughput import checksum

        gc.collect()
        t0 = time.perf_counter()
        emb = self.job.run(self.runner)
        secs = time.perf_counter() - t0
        if req.get("save"):
            np.save(req["save"], emb)
        return {"seconds": secs, "checksum": checksum(emb)}

    def memory(self, req):
        return {"peak_rss_mb": peak_rss_mb(), "rss_mb": rss_mb()}

    quit = memory  # the last figures, as the worker stops


def serve() -> int:
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints of libraries must not corrupt the protocol
    sys.stdout = sys.stderr
    server = Server()
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        cmd = req.get("cmd")
        try:
            ans = {"ok": True, **getattr(server, cmd)(req)}
        except Exception as e:  # noqa: BLE001 - every failure is an answer, the harness decides
            from .engines import skip_reason

            ans = {"ok": False, "error": skip_reason(e), "trace": traceback.format_exc()[-4000:]}
        out.write(json.dumps(ans) + "\n")
        if cmd == "quit":
            break
    return 0


def prepare(engine_name: str, ctx_path: str, result_path: str) -> int:
    from .engines import ENGINES, skip_reason

    ctx = json.loads(open(ctx_path).read())
    try:
        spec = ENGINES[engine_name].prepare(ctx, log=lambda *a: print(*a, flush=True))
        res = {"ok": True, "spec": spec}
    except Exception as e:  # noqa: BLE001
        res = {"ok": False, "error": skip_reason(e), "trace": traceback.format_exc()[-4000:]}
    tmp = result_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f)
    os.replace(tmp, result_path)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "serve":
        sys.exit(serve())
    if len(sys.argv) == 5 and sys.argv[1] == "prepare":
        sys.exit(prepare(*sys.argv[2:]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
