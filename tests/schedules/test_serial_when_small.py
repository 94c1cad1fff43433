"""serial_when_small (schedules/serial_when_small.py): a parallel kernel runs serially when its work
is small, with identical results.

* the work estimate is the sum of the block iteration spaces of the unscheduled kernel (a linear:
  ``M N K`` + its epilogue's ``M N``), and the condition is ``work <= THRESHOLD`` as the docs say;
* a scheduled kernel (the x86 row softmax: a real ``parallel`` loop) gets both branches: the
  serial one has no parallel loop, the other is the body as it was; the result is well formed;
* the generated code: specialized to a small shape the kernel has no ``TVMBackendParallelLaunch``
  call left (the serial branch is the one taken, and it launches nothing); to a large shape it
  keeps the launch; the symbolic kernel keeps exactly the launches of the original;
* run: equals the numpy reference bit for bit on both sides of the threshold;
* the thresholds as run-time data (the default): a split kernel takes the table (int64, one entry
  per op class) as its first parameter and compares its work with its class's entry when called:
  counted through the library's ``__TVMBackendParallelLaunch`` pointer, the kernel launches the
  pool with a 0 in its entry and not with a huge one, whatever the other entries hold; a table of
  the wrong shape is refused by the kernel's argument check; a static kernel is decided at compile
  time unless the tables disagree on it;
* the tiny BERT x86 build (``x86_compiled``): ``forward`` takes the table after the weights,
  params.npz holds the spin table, the manifest both; fed a table between its small and large
  shapes, kernels run on both sides, equal to ``run_golden`` bit for bit with every table (spin,
  passive, all-parallel, all-serial), and the pool launches follow the table; ``float ops: 0``
  in the module, the code, and ``verify`` of the artifact;
* a kernel without a parallel loop is left alone; a GPU or aarch64 build applies nothing.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from conftest import random_batch

from ibert_tvm.op.int_layernorm import IntLayerNorm
from ibert_tvm.op.int_softmax import IntSoftmax

HEADS = 12


def _target():
    import tvm

    return tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2})


def _softmax(plan: IntSoftmax):
    """``(unscheduled, scheduled)`` softmax over ``[batch, 12, seq, seq]``, batch and seq symbolic."""
    import tvm
    from tvm import te, tirx

    from ibert_tvm.schedules import schedule_pass

    B, S = tirx.Var("batch", "int64"), tirx.Var("seq", "int64")
    x = te.placeholder((B, tirx.IntImm("int64", HEADS), S, S), "int32", name="x")
    mask = te.placeholder((B, S), "int32", name="attention_mask")
    func = te.create_prim_func([x, mask, plan.te(x, mask)]).with_attr("global_symbol", "main")
    mod = tvm.IRModule({"main": func})
    return mod, schedule_pass("x86", _target())(mod)


def _at(expr, batch: int, seq: int) -> int:
    import tvm.sym
    import tvm_ffi
    from tvm import tirx

    vals = {"batch": batch, "seq": seq}
    e = tvm_ffi.structural_map(expr, (tirx.Var, lambda v: tirx.IntImm("int64", vals[v.name]) if v.name in vals else v))
    return int(tvm.sym.Analyzer().simplify(e).value)


def _parallel_loops(stmt) -> int:
    import tvm_ffi
    from tvm import tirx

    n = []
    tvm_ffi.structural_walk(stmt, (tirx.For, lambda f: n.append(1) if f.kind == tirx.ForKind.PARALLEL else None))
    return len(n)


def _launches(func, tgt) -> int:
    """Calls of ``TVMBackendParallelLaunch`` in the LLVM IR of ``func`` built alone."""
    import tvm

    lib = tvm.compile(tvm.IRModule({"main": func}), target=tgt)
    return lib.mod.inspect_source("ll").count("@__TVMBackendParallelLaunch, align")


# -- the work and the condition ---------------------------------------------------------------
def test_work_of_a_linear_is_mnk_plus_its_epilogue():
    from tvm import te, tirx

    from ibert_tvm.schedules.serial_when_small import work_estimate

    M = tirx.Var("m", "int64")
    K, N = 48, 20
    x = te.placeholder((M, K), "int8", name="x")
    w = te.placeholder((N, K), "int8", name="w")
    k = te.reduce_axis((0, K), name="k")
    acc = te.compute((M, N), lambda i, j: te.sum(x[i, k].astype("int32") * w[j, k].astype("int32"), axis=k), name="acc")
    out = te.compute((M, N), lambda i, j: acc[i, j] >> 3, name="out")
    work = work_estimate(te.create_prim_func([x, w, out]))
    for m in (1, 7, 100):
        assert _at(tirx_sub(work, M, m), 0, 0) == m * N * K + m * N


def tirx_sub(expr, var, value):
    import tvm_ffi
    from tvm import tirx

    return tvm_ffi.structural_map(expr, (tirx.Var, lambda v: tirx.IntImm("int64", value) if v.same_as(var) else v))


def test_condition_is_work_at_most_threshold_and_both_branches_exist():
    import tvm
    from tvm import s_tir, tirx

    from ibert_tvm.schedules import serial_when_small as sws

    mod, sched = _softmax(IntSoftmax(7e-5))
    assert _parallel_loops(sched["main"].body) == 1
    new = sws.serial_when_small(mod, 5000)(sched)["main"]
    assert s_tir.analysis.verify_well_formed(new)
    want = sws.work_estimate(mod["main"])
    tvm.ir.assert_structural_equal(new.attrs[sws.WORK_ATTR], want, map_free_vars=True)
    # the docs: softmax over [B, h, S, S] is a few passes over its B h S S elements
    assert _at(want, 2, 10) == 2 * HEADS * 10 * 10 * 4 + 2 * HEADS * 10
    branch = new.body.block.body
    assert isinstance(branch, tirx.IfThenElse)
    assert isinstance(branch.condition, tirx.LE) and int(branch.condition.b.value) == 5000
    tvm.ir.assert_structural_equal(branch.condition.a, want, map_free_vars=True)
    assert branch.then_case.block.name_hint == sws.SERIAL_BLOCK
    assert _parallel_loops(branch.then_case) == 0
    assert _parallel_loops(branch.else_case) == 1
    assert branch.else_case.same_as(sched["main"].body.block.body)  # the parallel body, untouched


def test_thresholds_in_the_docs_are_the_code():
    from ibert_tvm.schedules import serial_when_small as sws

    doc = " ".join(sws.__doc__.split())
    assert set(sws.THRESHOLDS) == set(sws.PASSIVE_THRESHOLDS) == set(sws.CLASSES) == {"linear", "attention",
                                                                                      "layernorm", "other"}
    assert sws.TABLES == {"spin": sws.THRESHOLDS, "passive": sws.PASSIVE_THRESHOLDS}
    for table in sws.TABLES.values():
        for cls, value in table.items():
            assert f"{cls} {value:,} (2**{value.bit_length() - 1})" in doc, (cls, value)


def test_op_classes():
    """Linears (a reduction over two int8 operands, one a static weight), attention products (both
    shaped by the sequence) and the rest: the softmax reduces int32."""
    from tvm import te, tirx

    from ibert_tvm.schedules.serial_when_small import op_class

    mod, _ = _softmax(IntSoftmax(7e-5))
    assert op_class(mod["main"]) == "other"
    M = tirx.Var("m", "int64")
    x = te.placeholder((M, 64), "int8", name="x")
    w = te.placeholder((32, 64), "int8", name="w")
    k = te.reduce_axis((0, 64), name="k")
    acc = te.compute((M, 32), lambda i, j: te.sum(x[i, k].astype("int32") * w[j, k].astype("int32"), axis=k))
    assert op_class(te.create_prim_func([x, w, acc])) == "linear"  # w: a weight of static shape
    kv = te.placeholder((M, 64), "int8", name="kv")
    qk = te.compute((M, M), lambda i, j: te.sum(x[i, k].astype("int32") * kv[j, k].astype("int32"), axis=k))
    assert op_class(te.create_prim_func([x, kv, qk])) == "attention"  # both shaped by the sequence
    s = te.compute((M,), lambda i: te.sum(x[i, k].astype("int32"), axis=k))  # one int8 operand: not a GEMM
    assert op_class(te.create_prim_func([x, s])) == "other"
    ln = IntLayerNorm(np.linspace(0.5, 1.5, 64), np.zeros(64), out_scale=0.02)
    xi = te.placeholder((M, 64), "int32", name="xi")
    g, b = te.placeholder((64,), "int32", name="g"), te.placeholder((64,), "int64", name="b")
    assert op_class(te.create_prim_func([xi, g, b, ln.te(xi, g, b)])) == "layernorm"


# -- the generated code and the results ----------------------------------------------------------
def test_small_shape_launches_nothing_large_shape_launches():
    from tvm import tirx

    from ibert_tvm.schedules import serial_when_small as sws

    mod, sched = _softmax(IntSoftmax(7e-5))
    tgt = _target()
    threshold = _at(sws.work_estimate(mod["main"]), 1, 16)  # 1 x 16 is serial, 1 x 17 is not
    new = sws.serial_when_small(mod, threshold)(sched)["main"]
    base = _launches(sched["main"], tgt)
    assert base >= 1
    assert _launches(new, tgt) == base  # the symbolic kernel: the parallel branch's launches only
    batch, seq = (p.shape[0] for p in new.params[:2])
    assert isinstance(batch, tirx.Var) and isinstance(seq, tirx.Var)

    def at(b, s):  # the kernel specialized to one shape (x binds batch and seq)
        shape = [tirx.IntImm("int64", v) for v in (b, HEADS, s, s)]
        return new.specialize({new.params[0]: tirx.decl_buffer(shape, "int32", "x")})

    assert _launches(at(1, 16), tgt) == 0, "at or below the threshold the kernel must not launch the pool"
    assert _launches(at(1, 17), tgt) == base


def test_both_branches_equal_numpy():
    import tvm

    from ibert_tvm.schedules import serial_when_small as sws

    plan = IntSoftmax(3e-3)
    mod, sched = _softmax(plan)
    threshold = _at(sws.work_estimate(mod["main"]), 1, 16)
    lib = tvm.compile(sws.serial_when_small(mod, threshold)(sched), target=_target())
    rng = np.random.default_rng(3)
    for B, S in [(1, 1), (1, 9), (1, 16), (1, 17), (2, 33), (3, 64)]:
        x = rng.integers(-40000, 40001, (B, HEADS, S, S)).astype(np.int32)
        mask = (rng.random((B, S)) < 0.7).astype(np.int32)
        mask[:, 0] = 1
        out = tvm.runtime.tensor(np.zeros(x.shape, plan.out_dtype))
        lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(mask), out)
        np.testing.assert_array_equal(out.numpy(), plan.numpy(x, mask), err_msg=f"B={B} S={S}")


def test_kernel_without_parallel_loop_unchanged():
    import tvm

    from ibert_tvm.schedules import serial_when_small as sws

    mod, _ = _softmax(IntSoftmax(7e-5))  # unscheduled: no parallel loop
    assert sws.serial_when_small(mod, 1 << 40)(mod)["main"].same_as(mod["main"])
    assert _parallel_loops(mod["main"].body) == 0
    assert tvm is not None


class LaunchCounter:
    """Counts the thread-pool launches of the kernels of the library at ``path`` (loaded by TVM
    already): a TVM library calls ``TVMBackendParallelLaunch`` through its own global pointer
    ``__TVMBackendParallelLaunch`` (set when it is loaded); this points it at a counting wrapper
    of the runtime's function, and back on :meth:`close`."""

    PROTO = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)

    def __init__(self, path):
        self._lib = ctypes.CDLL(str(path))  # the same handle as TVM's dlopen: the pointer it set
        self._ptr = ctypes.c_void_p.in_dll(self._lib, "__TVMBackendParallelLaunch")
        assert self._ptr.value, "the library's launch pointer is not set: not loaded by TVM?"
        self._orig_addr = self._ptr.value
        orig = self.PROTO(self._orig_addr)
        self.count = 0

        def launch(flambda, cdata, num_task):
            self.count += 1
            return orig(flambda, cdata, num_task)

        self._wrapper = self.PROTO(launch)  # kept alive as long as the pointer may be used
        self._ptr.value = ctypes.cast(self._wrapper, ctypes.c_void_p).value

    def close(self):
        self._ptr.value = self._orig_addr


def _table(**entries) -> np.ndarray:
    from ibert_tvm.schedules import serial_when_small as sws

    return np.array([entries.get(c, 0) for c in sws.CLASSES], np.int64)


def test_kernel_reads_its_class_entry_of_the_table_at_call_time(tmp_path):
    """The softmax kernel (class "other") with the table: its first parameter, int64
    ``[len(CLASSES)]``; 0 in its entry: the parallel branch (the pool is launched), huge: the
    serial one (no launch), whatever the other entries hold; the results equal numpy either way.
    A table of the wrong shape is refused when the kernel is called."""
    import tvm
    from tvm import s_tir, tirx

    from ibert_tvm.schedules import serial_when_small as sws

    plan = IntSoftmax(3e-3)
    mod, sched = _softmax(plan)
    new = sws.serial_when_small(mod)(sched)  # thresholds=None: the run-time table
    f = new["main"]
    assert s_tir.analysis.verify_well_formed(f)
    assert isinstance(f.params[0], tirx.Buffer) and str(f.params[0].dtype) == "int64"
    assert [int(d) for d in f.params[0].shape] == [len(sws.CLASSES)]
    assert int(f.attrs[sws.TABLE_ATTR]) == sws.CLASSES.index("other")
    assert _launches(f, _target()) == _launches(sched["main"], _target())  # the parallel branch's only
    path = tmp_path / "k.so"
    tvm.compile(new, target=_target()).export_library(str(path))
    lib = tvm.runtime.load_module(str(path))
    counter = LaunchCounter(path)
    huge = 1 << 40
    try:
        rng = np.random.default_rng(5)
        for B, S in [(1, 9), (2, 33)]:
            x = rng.integers(-40000, 40001, (B, HEADS, S, S)).astype(np.int32)
            mask = (rng.random((B, S)) < 0.7).astype(np.int32)
            mask[:, 0] = 1
            for table, launches in [(_table(other=0, linear=huge, attention=huge, layernorm=huge), 1),
                                    (_table(other=huge), 0), (_table(other=-1), 1), (_table(other=huge - 1), 0)]:
                out = tvm.runtime.tensor(np.zeros(x.shape, plan.out_dtype))
                counter.count = 0
                lib["main"](tvm.runtime.tensor(table), tvm.runtime.tensor(x), tvm.runtime.tensor(mask), out)
                assert counter.count == launches, (B, S, table)
                np.testing.assert_array_equal(out.numpy(), plan.numpy(x, mask), err_msg=f"B={B} S={S} {table}")
        with pytest.raises(Exception, match="serial_thresholds"):
            lib["main"](tvm.runtime.tensor(np.zeros(3, np.int64)), tvm.runtime.tensor(x), tvm.runtime.tensor(mask), out)
    finally:
        counter.close()


def test_static_kernel_decided_at_compile_time_unless_the_tables_disagree(monkeypatch):
    """A kernel of static shape: serial outright when its work is within every table, unchanged
    when above every table, and split on the table when the tables disagree."""
    from tvm import tirx

    from ibert_tvm.schedules import serial_when_small as sws

    mod, sched = _softmax(IntSoftmax(7e-5))
    shape = [tirx.IntImm("int64", v) for v in (1, HEADS, 8, 8)]

    def static(f):
        return f.specialize({f.params[0]: tirx.decl_buffer(shape, "int32", "x")})

    work = _at(sws.work_estimate(mod["main"]), 1, 8)
    ref, func = {"main": static(mod["main"])}, static(sched["main"])
    for spin, passive, want in [(work, work, "serial"), (work - 1, work - 1, "parallel"),
                                (work - 1, work, "table"), (work, work - 1, "table")]:
        monkeypatch.setitem(sws.TABLES, "spin", {**sws.THRESHOLDS, "other": spin})
        monkeypatch.setitem(sws.TABLES, "passive", {**sws.PASSIVE_THRESHOLDS, "other": passive})
        import tvm

        got = sws.serial_when_small(ref)(tvm.IRModule({"main": func}))["main"]
        kind = ("table" if sws.TABLE_ATTR in (got.attrs or {}) else
                "serial" if _parallel_loops(got.body) == 0 else "parallel")
        assert kind == want, (spin, passive, work)


# -- the whole model ---------------------------------------------------------------------------
def test_tiny_bert_on_x86_follows_the_table_bit_exact(quantized_factory, x86_fused, x86_compiled):
    """The tiny BERT x86 build with the run-time table: ``forward``'s last parameter, the spin
    table in params.npz, both tables in the manifest. Fed a table whose thresholds lie between
    1 x 4 and 4 x 64 (the QK^T kernel's work), kernels run serially at the small shapes and in
    parallel at the large ones, and every table gives the golden executor's integers; an
    all-parallel table launches the pool, an all-serial one never does. Float ops stay 0."""
    import json

    from tvm import tirx

    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.deploy.verify_artifact import verify_compiled
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.plan import ModelPlan
    from ibert_tvm.schedules import serial_when_small as sws

    qm, _ = quantized_factory("BertModel")
    manifest = json.loads((x86_compiled / "manifest.json").read_text())
    assert manifest["verify"]["module"]["float_ops"] == 0 and manifest["verify"]["code"]["float_ops"] == 0
    assert verify_compiled(x86_compiled).float_ops == 0
    assert manifest["params"][-1] == sws.TABLE_PARAM and manifest["param_types"][-1] == ["int64", [len(sws.CLASSES)]]
    assert manifest["serial_thresholds"] == {"param": sws.TABLE_PARAM, "classes": list(sws.CLASSES),
                                             "spin": sws.table("spin"), "passive": sws.table("passive")}
    with np.load(x86_compiled / "params.npz") as z:
        np.testing.assert_array_equal(z[f"p{len(manifest['params']) - 1:04d}"], sws.table("spin"))
    works = {gv.name_hint: sws.work_estimate(f) for gv, f in x86_fused.functions.items() if isinstance(f, tirx.PrimFunc)}
    qk = next(w for n, w in works.items() if n.startswith("qk_matmul"))
    small, large = (1, 4), (4, 64)
    between = _at(qk, *small)
    assert between < _at(qk, *large)
    model, plan, d = CompiledModel(x86_compiled, serial_thresholds="spin"), ModelPlan(qm), qm.dims
    table = np.from_dlpack(model._tvm_params[manifest["params"].index(sws.TABLE_PARAM)])  # the tensor forward reads
    counter = LaunchCounter(x86_compiled / "model.so")
    rng = np.random.default_rng(11)
    batches = [random_batch(rng, b, s, family=d["family"], pad_id=d["pad_id"], type_vocab=d["type_vocab"])
               for b, s in [(1, 1), small, (2, 7), (3, 33), large]]
    golden = [run_golden(plan, **x) for x in batches]
    launches = {}
    try:
        for name, values in [("spin", sws.table("spin")), ("passive", sws.table("passive")),
                             ("between", [between] * len(sws.CLASSES)),
                             ("parallel", [-1] * len(sws.CLASSES)), ("serial", [1 << 62] * len(sws.CLASSES))]:
            table[...] = values
            for x, want, (b, s) in zip(batches, golden, [(1, 1), small, (2, 7), (3, 33), large]):
                counter.count = 0
                np.testing.assert_array_equal(model.run_ids(x), want, err_msg=f"{name} {b}x{s}")
                launches[name, (b, s)] = counter.count
    finally:
        counter.close()
    assert launches["serial", large] == 0 and launches["serial", small] == 0
    assert launches["parallel", small] > 0 and launches["parallel", large] >= launches["parallel", small]
    # between: the qk_matmul (and every kernel of no more work) serial at 1 x 4, parallel at 4 x 64
    assert 0 <= launches["between", small] < launches["parallel", small]
    assert 0 < launches["between", large] <= launches["parallel", large]


def test_lower_marks_cpu_kernels_and_leaves_gpu_alone(tiny_factory, quantized_factory):
    """The pipeline applies the transform on x86 (every parallel kernel gets its work attr, and
    ``forward`` the table parameter), not on cuda-t4 (no parallel loops) nor on aarch64 (left out:
    see the module docstring): their ``forward`` takes no table."""
    from tvm import tirx

    from ibert_tvm.frontend.lower import integer_module
    from ibert_tvm.passes import pipeline
    from ibert_tvm.schedules import linear_strategy
    from ibert_tvm.schedules import serial_when_small as sws
    from ibert_tvm.targets import get_target

    from frontend_support import imported

    qm, _ = quantized_factory("BertModel")
    im = imported(str(tiny_factory("BertModel")))[0]  # one float import for the three targets
    seen = {}
    real = sws.serial_when_small

    def spy(reference, thresholds=None):
        p = real(reference, thresholds)

        def run(mod):
            out = p(mod)
            seen["funcs"] = [f for f in out.functions.values() if isinstance(f, tirx.PrimFunc)]
            return out

        return run

    sws_spy = pytest.MonkeyPatch()
    sws_spy.setattr(sws, "serial_when_small", spy)
    try:
        for target, expect in (("x86", True), ("cuda-t4", False), ("aarch64", False)):
            seen.clear()
            mod, _, _ = integer_module(qm, linear_strategy(target), model=im)
            lowered, _ = pipeline.lower(mod, get_target(target).tvm_target(), target_name=target)
            params = [p.name for p in lowered["forward"].params]
            assert (sws.TABLE_PARAM in params) == expect, target  # GPU and aarch64: no table parameter
            assert list(pipeline.table_params(lowered)) == ([sws.TABLE_PARAM] if expect else [])
            if not expect:
                assert not seen
                continue
            par = [f for f in seen["funcs"] if sws.WORK_ATTR in (f.attrs or {})]
            assert par, "no kernel got the serial branch on x86"
            for f in seen["funcs"]:
                assert (sws.WORK_ATTR in (f.attrs or {})) == sws.has_parallel(f)
    finally:
        sws_spy.undo()


def test_albert_shared_layer_passes_the_table_on(quantized_factory, tiny_factory):
    """ALBERT's outlined ``shared_layer`` (a Relax function called once per application) calls
    split kernels: it takes the table as its last parameter, ``forward`` passes it on, and the
    x86 build run with each table equals the golden executor."""
    import tvm
    from tvm import relax

    from ibert_tvm.frontend.lower import integer_module
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.plan import ModelPlan
    from ibert_tvm.passes import pipeline
    from ibert_tvm.passes.outline_shared_layer import FUNC_NAME
    from ibert_tvm.schedules import linear_strategy
    from ibert_tvm.schedules import serial_when_small as sws
    from ibert_tvm.targets import get_target

    from frontend_support import imported

    qm, _ = quantized_factory("AlbertModel")
    mod, names, arrays = integer_module(qm, linear_strategy("x86"), model=imported(str(tiny_factory("AlbertModel")))[0])
    tgt = get_target("x86").tvm_target()
    lowered, _ = pipeline.lower(mod, tgt, target_name="x86")
    for name in ("forward", FUNC_NAME):
        assert lowered[name].params[-1].name == sws.TABLE_PARAM, name
    ex = relax.build(lowered, target=tgt, relax_pipeline=None)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    weights = [tvm.runtime.tensor(np.asarray(arrays[n])) for n in names]
    plan, d = ModelPlan(qm), qm.dims
    rng = np.random.default_rng(4)
    for b, s in [(1, 3), (2, 40)]:
        x = random_batch(rng, b, s, family=d["family"], pad_id=d["pad_id"], type_vocab=d["type_vocab"])
        want = run_golden(plan, **x)
        inputs = [tvm.runtime.tensor(x[n].astype(np.int32)) for n in [p.name for p in mod["forward"].params[:int(mod["forward"].attrs["num_input"])]]]
        for values in (sws.table("spin"), sws.table("passive"), [-1] * len(sws.CLASSES)):
            table = tvm.runtime.tensor(np.asarray(values, np.int64))
            np.testing.assert_array_equal(vm["forward"](*inputs, *weights, table).numpy(), want, err_msg=f"{b}x{s}")
