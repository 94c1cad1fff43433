"""Pool launches per inference of the bench builds before / after OneLaunch (the tests' LaunchCounter). Paths are the bench cache of 2026-12-04."""
import os, sys
os.environ["TVM_NUM_THREADS"] = "2"
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(REPO / "tests" / "schedules"), str(REPO / "tests")]
import numpy as np
from test_serial_when_small import LaunchCounter
from ibert_tvm.deploy.runtime import CompiledModel
C = Path.home() / ".cache/ibert-tvm/bench/tvm-int8"
for m in ["minilm-b211cfa1ac43", "bert-base-2a466c297c10"]:
    for h in ["76ea6d5b4e1d", "45e25f114397"]:
        d = C / f"{m}-x86-amx-untuned-{h}"
        for table in ["spin", "passive"]:
            model = CompiledModel(d, serial_thresholds=table)
            counter = LaunchCounter(d / "model.so")
            try:
                res = []
                for b, s in [(1, 32), (1, 128), (8, 128)]:
                    ids = np.full((b, s), 1000, np.int64)
                    inp = {"input_ids": ids.astype(np.int32), "attention_mask": np.ones((b, s), np.int32), "token_type_ids": np.zeros((b, s), np.int32), "position_ids": np.tile(np.arange(s, dtype=np.int32), (b, 1))}
                    model.run_ids(inp)
                    counter.count = 0
                    model.run_ids(inp)
                    res.append(counter.count)
            finally:
                counter.close()
            print(m.split("-")[0], h, table, res, flush=True)
