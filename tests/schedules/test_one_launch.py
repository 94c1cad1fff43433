"""OneLaunch (schedules/one_launch.py): consecutive parallel loops of a CPU kernel are one
thread-pool launch, with a barrier between them, and the results do not change.

* the rewrite: two parallel loops in a row become one ``pragma_parallel_launch_point`` region,
  the first marked ``pragma_parallel_barrier_when_finish``; loops with anything between them, a
  lone parallel loop, serial loops and non-llvm functions are left alone;
* the generated code: the kernel built with ``passes.pipeline.TIR_PIPELINE`` has one
  ``TVMBackendParallelLaunch`` call and a ``TVMBackendParallelBarrier`` call where TVM's
  default pipeline has two launches and no barrier; counted at run time, a call launches the pool once;
* run: the second loop reads what other iterations of the first wrote (reversed), so a missing
  barrier would show; equal to numpy for sizes below, at and far above the thread count, also
  in a process whose pool has two threads;
* a real linear (the x86 VNNI rule: the activation repack and the GEMM) is one launch and
  equals the numpy reference bit for bit;
* the tiny BERT x86 build run on a pool of two threads (the in-process tests' pool has one here)
  equals the golden executor, with the spin table and with every kernel parallel. (Its linears
  are too narrow for one task's GEMM to read rows another task packed, so this one would not
  catch a missing barrier: the two-loop kernel above does.)
"""

from __future__ import annotations

import numpy as np
import pytest

from test_serial_when_small import LaunchCounter


def _two_loops():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def main(a_h: T.handle, c_h: T.handle):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        n = T.int64()
        a = T.match_buffer(a_h, (n,), "int32")
        c = T.match_buffer(c_h, (n,), "int32")
        b = T.alloc_buffer((n,), "int32")
        for i in T.parallel(n):
            with T.sblock("b"):
                vi = T.axis.spatial(n, i)
                b[vi] = a[vi] * 3 + 1
        for i in T.parallel(n):
            with T.sblock("c"):
                vi = T.axis.spatial(n, i)
                c[vi] = b[n - 1 - vi] - b[vi]

    return main


def _target():
    import tvm

    return tvm.target.Target({"kind": "llvm", "num-cores": 2})


def _build(func, ours: bool):
    import tvm

    from ibert_tvm.passes.pipeline import register_tir_pipeline

    kw = {"tir_pipeline": register_tir_pipeline()} if ours else {}
    return tvm.compile(tvm.IRModule({"main": func}), target=_target(), **kw)


def _calls(lib, name: str) -> int:
    return lib.mod.inspect_source("ll").count(f"@__{name}, align")


def test_two_parallel_loops_are_one_launch_with_a_barrier():
    from tvm import tirx

    from ibert_tvm.schedules import one_launch as ol

    v = tirx.Var("i", "int64")
    n = tirx.IntImm("int64", 8)

    def loop(kind=tirx.ForKind.PARALLEL):
        return tirx.For(v, tirx.IntImm("int64", 0), n, kind, tirx.Evaluate(tirx.IntImm("int32", 0)))

    joined = ol.join_launches(tirx.SeqStmt([loop(), loop(), loop()]))
    assert isinstance(joined, tirx.AttrStmt) and joined.attr_key == ol.LAUNCH_POINT
    run = list(joined.body.seq)
    assert [s.attr_key for s in run[:2]] == [ol.BARRIER, ol.BARRIER] and isinstance(run[2], tirx.For)
    # a store between the loops would run in every task: two separate launches stay
    between = tirx.SeqStmt([loop(), tirx.Evaluate(tirx.IntImm("int32", 1)), loop()])
    assert ol.join_launches(between).same_as(between)
    for alone in (tirx.SeqStmt([loop(), loop(tirx.ForKind.SERIAL)]), loop()):
        assert ol.join_launches(alone).same_as(alone)


def test_built_kernel_launches_once_and_equals_numpy(tmp_path):
    import tvm

    func = _two_loops()
    default, ours = _build(func, False), _build(func, True)
    assert (_calls(default, "TVMBackendParallelLaunch"), _calls(default, "TVMBackendParallelBarrier")) == (2, 0)
    assert _calls(ours, "TVMBackendParallelLaunch") == 1
    assert _calls(ours, "TVMBackendParallelBarrier") >= 1  # LLVM may copy the call into two paths
    path = tmp_path / "k.so"
    ours.export_library(str(path))
    lib = tvm.runtime.load_module(str(path))
    counter = LaunchCounter(path)
    try:
        rng = np.random.default_rng(3)
        for n in (1, 2, 3, 64, 1001, 100003):
            a = rng.integers(-1000, 1000, n).astype(np.int32)
            c = tvm.runtime.tensor(np.zeros(n, np.int32))
            counter.count = 0
            lib["main"](tvm.runtime.tensor(a), c)
            assert counter.count == 1, n
            b = a * 3 + 1
            np.testing.assert_array_equal(c.numpy(), b[::-1] - b, err_msg=f"n={n}")
    finally:
        counter.close()


_RUN_WITH_THREADS = """
import sys
import numpy as np
import tvm
lib = tvm.runtime.load_module(sys.argv[1])
rng = np.random.default_rng(4)
for n in (1, 2, 3, 4, 5, 7, 64, 1001, 100003):
    for _ in range(20):
        a = rng.integers(-1000, 1000, n).astype(np.int32)
        c = tvm.runtime.tensor(np.zeros(n, np.int32))
        lib["main"](tvm.runtime.tensor(a), c)
        b = a * 3 + 1
        np.testing.assert_array_equal(c.numpy(), b[::-1] - b, err_msg=f"n={n}")
print(tvm.get_global_func("runtime.NumThreads")())
"""


def test_barrier_holds_on_a_pool_of_two_threads(tmp_path):
    """The pool of a test process may have one thread (TVM's default here): in a process whose
    pool has two (``TVM_NUM_THREADS=2``, checked through ``runtime.NumThreads``), the second loop
    still sees every write of the first, over many calls and sizes around the thread count."""
    threads = 2
    import os
    import subprocess
    import sys

    path = tmp_path / "k.so"
    _build(_two_loops(), True).export_library(str(path))
    env = {**os.environ, "TVM_NUM_THREADS": str(threads)}
    r = subprocess.run([sys.executable, "-c", _RUN_WITH_THREADS, str(path)], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == str(threads)


def test_function_for_another_target_is_left_alone():
    import tvm

    from ibert_tvm.schedules.one_launch import OneLaunch

    func = _two_loops().with_attr("target", tvm.target.Target("cuda"))
    mod = tvm.IRModule({"main": func})
    assert OneLaunch()(mod).same_as(mod)


@pytest.mark.parametrize("rows", [1, 31, 64, 130])
def test_vnni_linear_is_one_launch_and_bit_exact(rows):
    """The x86 VNNI rule's linear: its activation repack and its GEMM were two launches."""
    import tvm
    from tvm import te, tirx

    from ibert_tvm.op.int_matmul import linear_np
    from ibert_tvm.passes.pipeline import register_tir_pipeline
    from ibert_tvm.schedules import x86_vnni as xv

    k, n = 128, 96
    m = tirx.Var("m", "int64")
    shapes = xv.VnniLinear().param_shapes(n, k)
    x = te.placeholder((m, tirx.IntImm("int64", k)), "int8", name="x")
    w = te.placeholder([tirx.IntImm("int64", d) for d in shapes["weight"][0]], "int8", name="w")
    b = te.placeholder((tirx.IntImm("int64", n),), "int32", name="b")
    func = te.create_prim_func([x, w, b, xv.VnniLinear().te(x, weight=w, bias=b)])
    tgt = tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2})
    sch = xv.VnniLinearRule().apply(func, tgt, False)
    assert sch is not None
    mod = tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")})
    assert _calls(tvm.compile(mod, target=tgt), "TVMBackendParallelLaunch") == 2
    lib = tvm.compile(mod, target=tgt, tir_pipeline=register_tir_pipeline())
    assert _calls(lib, "TVMBackendParallelLaunch") == 1
    rng = np.random.default_rng(rows)
    wa = rng.integers(-128, 128, (n, k)).astype(np.int8)
    ba = rng.integers(-(2**30), 2**30 + 1, n).astype(np.int32)
    xa = rng.integers(-128, 128, (rows, k)).astype(np.int8)
    p = xv.VnniLinear().pack(wa, ba)
    out = tvm.runtime.tensor(np.zeros((rows, n), np.int32))
    lib["main"](tvm.runtime.tensor(xa), tvm.runtime.tensor(p["weight"]), tvm.runtime.tensor(p["bias"]), out)
    np.testing.assert_array_equal(out.numpy(), linear_np(xa, wa, ba))


_RUN_MODEL = """
import sys
import numpy as np
import tvm_ffi
from ibert_tvm.deploy.runtime import CompiledModel
from ibert_tvm.schedules import serial_when_small as sws
out_dir, batches_path, table_name, result_path, calls = sys.argv[1:]
model = CompiledModel(out_dir, serial_thresholds="spin")
table = np.from_dlpack(model._tvm_params[model.manifest["params"].index(sws.TABLE_PARAM)])
table[...] = sws.table("spin") if table_name == "spin" else [-1] * len(sws.CLASSES)
with np.load(batches_path) as z:
    n = len(z.files) // len(model.manifest["inputs"])
    outs = {}
    for i in range(n):
        x = {k: z[f"{i}:{k}"] for k in model.manifest["inputs"]}
        for r in range(int(calls)):  # repeated calls: a race would not show every time
            outs[f"{i}:{r}"] = model.run_ids(x)
np.savez(result_path, **outs)
print(tvm_ffi.get_global_func("runtime.NumThreads")())
"""


def outputs_on_two_threads(out_dir, batches: list[dict], table: str, tmp_path, calls: int = 5) -> list[list]:
    """``run_ids`` of the compiled ``out_dir`` on each batch, ``calls`` times, in a process whose
    TVM pool has two threads (checked), fed the spin table or (``all-parallel``) a table of -1:
    ``[[output of each call] per batch]``."""
    import os
    import subprocess
    import sys

    np.savez(tmp_path / "batches.npz", **{f"{i}:{k}": v for i, x in enumerate(batches) for k, v in x.items()})
    env = {**os.environ, "TVM_NUM_THREADS": "2"}
    r = subprocess.run([sys.executable, "-c", _RUN_MODEL, str(out_dir), str(tmp_path / "batches.npz"), table,
                        str(tmp_path / "out.npz"), str(calls)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "2"
    with np.load(tmp_path / "out.npz") as got:
        return [[got[f"{i}:{c}"] for c in range(calls)] for i in range(len(batches))]


def assert_golden_on_two_threads(qm, out_dir, shapes, table: str, tmp_path, seed: int) -> None:
    """Random batches of ``shapes`` run by :func:`outputs_on_two_threads` equal the golden
    executor's integers of ``qm``, every call."""
    from conftest import random_batch

    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.plan import ModelPlan

    plan, d = ModelPlan(qm), qm.dims
    rng = np.random.default_rng(seed)
    batches = [random_batch(rng, b, s, family=d["family"], pad_id=d["pad_id"], type_vocab=d["type_vocab"])
               for b, s in shapes]
    for x, shape, outs in zip(batches, shapes, outputs_on_two_threads(out_dir, batches, table, tmp_path)):
        want = run_golden(plan, **x)
        for c, got in enumerate(outs):
            np.testing.assert_array_equal(got, want, err_msg=f"{table} {shape} call {c}")


@pytest.mark.parametrize("table", ["spin", "all-parallel"])
def test_tiny_bert_on_two_threads_equals_golden(table, quantized_factory, x86_compiled, tmp_path):
    """The tiny BERT x86 build (its kernels' launches joined) in a process whose pool has two
    threads, every split kernel on its parallel branch (``all-parallel``: every threshold -1) or
    as the spin table chooses: the golden executor's integers at every shape, call after call."""
    assert_golden_on_two_threads(quantized_factory("BertModel")[0], x86_compiled,
                                 [(1, 1), (1, 4), (2, 7), (3, 33), (4, 64)], table, tmp_path, seed=17)
