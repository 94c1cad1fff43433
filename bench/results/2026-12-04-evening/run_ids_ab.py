"""run_ids before (a runtime tensor per input, output read by TVMTensorCopyToBytes, the VM function
looked up per call: a69ed8b's CompiledModel.run_ids) and after (b69973a: aligned numpy buffers read
in place, DLPack output, one lookup), on one loaded model, interleaved; spin policy, 2 threads.

    python run_ids_ab.py OUT [OUT ...]     (prints median ms per shape and new/old)
"""
import os
import sys
import time

os.environ.setdefault("TVM_NUM_THREADS", "2")
import numpy as np  # noqa: E402

from ibert_tvm.deploy.runtime import CompiledModel  # noqa: E402

for out in sys.argv[1:]:
    m = CompiledModel(out)
    for b, s in [(1, 32), (1, 128), (8, 128)]:
        rng = np.random.default_rng(0)
        inp = {"input_ids": rng.integers(5, 1000, (b, s)), "attention_mask": np.ones((b, s), np.int64),
               "token_type_ids": np.zeros((b, s), np.int64), "position_ids": np.tile(np.arange(s), (b, 1))}
        inp = {k: v for k, v in inp.items() if k in m.manifest["inputs"]}

        def old():
            x = m.check_inputs(inp)
            with m._lock:
                args = [m._tensor(x[n], m.dev) for n in m.manifest["inputs"]]
                return m._numpy(m.vm["forward"](*args, *m._tvm_params))

        fns = {"old": old, "new": lambda: m.run_ids(inp)}
        assert np.array_equal(fns["old"](), fns["new"]())
        n = max(3, int(40 / (b * s / 32)))
        res = {k: [] for k in fns}
        for r in range(12):
            for k in (("old", "new") if r % 2 else ("new", "old")):
                t0 = time.perf_counter()
                for _ in range(n):
                    fns[k]()
                res[k].append((time.perf_counter() - t0) / n * 1e3)
        o, nw = np.median(res["old"]), np.median(res["new"])
        print(f"{os.path.basename(out.rstrip('/'))} {b}x{s}: old {o:.3f} ms, new {nw:.3f} ms, new/old {nw / o:.3f}")
