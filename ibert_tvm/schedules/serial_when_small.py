"""Run a parallel kernel serially when its work is small: ``serial_when_small``.

Every ``parallel`` loop of a CPU kernel is a thread-pool launch (``TVMBackendParallelLaunch``:
wake the pool, run the tasks, meet at a barrier). At small shapes (MiniLM at ``1 x 32``) most
kernels do a few microseconds of work, and the launch costs about as much; when idle pool threads
sleep (``TVM_THREAD_POOL_SPIN_COUNT=0``) it costs more than the work. Shapes are symbolic
(``batch``, ``seq``), so no schedule can choose statically: this transform makes each kernel
choose when it is called.

For every scheduled PrimFunc with a ``parallel`` loop, the body becomes::

    if work <= thresholds[class]:
        body, every parallel loop made serial      # no launch: the calling thread runs it all
    else:
        body                                       # unchanged

where ``thresholds`` is a run-time table, one int64 per op class (see "The thresholds are
run-time data" below): the best threshold depends on TVM's wait policy, which is known only when
the model is loaded.

``work`` (:func:`work_estimate`) is the kernel's scalar work as its computation is written: the
sum, over the blocks of the *fused, unscheduled* PrimFunc (``passes.pipeline.fuse``: TE /
legalized ops, one loop nest per block over its iteration domain), of the size of each block's
iteration domain, spatial x reduction. For a linear that is ``M N K`` multiply-adds plus the
epilogue's ``M N`` elements; for a row softmax a few passes over its ``B h S S`` elements. It is
a polynomial in the PrimFunc's shape variables, computed once at compile time and evaluated by
the kernel at call time (a few integer operations). It does not depend on the schedule, so the
same kernel tuned by a database or scheduled by a rule gets the same test.

Where it sits: after the target's schedule (``schedules.schedule_pass``) and any tuning database,
before TVM's default Relax/TIR pipeline (``passes.pipeline.lower``), for the targets in
:data:`TARGETS` (x86: where it was measured; the generic ``llvm`` target has no parallel
kernels). GPU kernels have no parallel loops. aarch64 is left out: no aarch64 timing exists here (qemu)
to calibrate a threshold with. (Its builds with the transform run bit-exact under qemu. One
layout it gave first made Debian's ld insert a Cortex-A53 erratum-843419 stub that the
machine-code verifier refused; the aarch64 target now links without that patch,
``targets.TARGETS["aarch64"].link_options``, and that build verifies.)

The work is computed on the fused module and carried over to the scheduled function of the same
name by the positions of the shape variables in the parameters' buffer shapes (a database's
function has its own variable objects).

Invariants: the computation is unchanged in both branches (same statements, same order within
a thread, only the loop kind differs), so outputs are bit-identical whichever branch runs; the
serial copy defines everything anew (``s_tir.renew_defs``: loop and block variables, buffers,
``match_buffer`` views), so the result passes TIR's well-formedness check (one definition per
variable). The generated code has no ``TVMBackendParallelLaunch`` call on the serial path: the
serial loops are plain loops of the kernel itself; the parallel path keeps its launches. A
PrimFunc without a parallel loop, or whose work has no free shape variable (its branch would be
decided at compile time), is returned unchanged except that a static small kernel is made serial
outright. Neither branch adds float: the condition is
int64 arithmetic on shape variables and one int64 load from the table.

The threshold depends on the kernel's class (:func:`op_class`), because a block iteration costs
very different time in each: ``linear`` (a block reduces a product of two int8 / uint8 operands,
one of them a weight of static shape; VNNI / sdot do 64 / 16 such multiply-adds per instruction,
a MiniLM 1 x 32 linear runs ~0.01 ns per block iteration serially), ``attention`` (the same with
both operands shaped by the sequence: ``Q K^T``, ``P V``, ~0.05 ns), ``layernorm`` (the
i-LayerNorm row kernel of ``schedules/x86_layernorm.py``: ~0.23 ns) and ``other`` (the row
softmax: ~0.5 ns per block iteration, its integer exp and divisions). Values, in block
iterations (:data:`THRESHOLDS`): linear 8,388,608 (2**23), attention 2,097,152 (2**21),
layernorm 65,536 (2**16), other 65,536 (2**16). For MiniLM at 1 x 32 that leaves the QKV,
FFN-in and FFN-out linears parallel, 18 kernels, and makes the attention-out linear and the
attention products serial there. (Counted at run time, ``LaunchCounter`` of the tests, on the
bench's x86-amx builds, 2026-12-04: 36 pool launches per MiniLM 1 x 32 inference, each linear
two, until ``schedules/one_launch.py`` made them 18; BERT-Base 1 x 32 121 -> 73 under this
table, 72 -> 36 under the passive one.) The layernorm class came with the
parallel LayerNorm rule, first at 2**18 (serial at 1 x 32 for both models and at MiniLM 1 x 128),
unmeasured. Measured since (x86-amx, spin, one build each fed tables that differ in this entry
only, ``bench/ab_outs.py``, 10 interleaved rounds, load 0.5-0.7, 2026-12-04): a BERT-Base i-LayerNorm
at 1 x 32 (~74 k block iterations) takes 13.5 us serially and 7.8 us on both threads, and 2**16
against 2**18 gives BERT-Base 0.930x / 0.981x at 1 x 32 / 1 x 128 and MiniLM 0.997x / 0.938x /
1.001x at 1 x 32 / 1 x 128 / 8 x 128 (MiniLM 1 x 32, ~37 k, stays serial; 2**14 gave BERT-Base
0.929x / 0.992x). The passive table keeps 2**18 (below).

Chosen on a quiet machine (load average 0.8-1.3, 2026-12-03, bench/ab_outs.py, four MiniLM builds
interleaved, time relative to the build without the transform; bench/results/2026-12-03-serial-guard/):

============================  ======================  ======================
every GEMM class at            spin 1x32 / 1x128       passive 1x32 / 1x128
============================  ======================  ======================
2**21                          1.05x / 1.00x           0.98x / 0.99x
2**23                          1.08x / 1.05x           0.65x / 0.98x
2**25                          1.34x / 1.20x           0.59x / 0.92x
linear 2**23, attention 2**21  1.04x / 0.99x           0.64x / 0.99x
============================  ======================  ======================

(the last row from a second run, with 2**23 at 1.02x / 1.06x spin and 0.62x / 0.98x passive in it.)

(8 x 128 within +-2% for all.) Serial kernels cost when idle threads spin (their wake-up is
cheap) and pay when they sleep (the passive policy, or a loaded machine); the 1 x 32
attention-out linear alone is most of the passive gain between 2**21 and 2**23, and the attention
products at 1 x 128 (6.3 M block iterations) are the spin loss there, hence the split: linears
at 2**23, attention products at 2**21.

The thresholds are run-time data
--------------------------------
Those values (:data:`THRESHOLDS`, the "spin" table) suit TVM's default wait policy, where idle
pool threads spin and a launch is cheap. When they sleep (``TVM_THREAD_POOL_SPIN_COUNT=0``, what a
loaded server sees) each launch costs ~55 us more on the 2-vCPU AMX machine measured, and serial
wins far higher: no one constant serves both. So the kernels read their threshold when called,
from a table chosen when the model is loaded, with no recompilation:

* a split kernel (:func:`split_on_table`) takes a new *first* parameter, an int64
  ``[len(CLASSES)]`` buffer, and compares its work with entry ``CLASSES.index(class)``
  (attr :data:`TABLE_ATTR`); TVM's argument check refuses a table of another dtype or shape;
* :func:`pass_table`, at the Relax level right after the split (in the same pass), gives every
  Relax function reaching such a kernel (``forward``, and ALBERT's outlined ``shared_layer``) a
  new *last* parameter :data:`TABLE_PARAM` and passes it first in each ``call_tir`` of a split
  kernel (the kernels and those functions get new GlobalVars: a GlobalVar carries its function's
  type). ``forward`` thus takes one more tensor after the weights, and ``deploy.export`` records it
  like them: last in params.npz (the spin table: plain TVM running the .so gets today's
  behaviour) and in the manifest's ``params`` / ``param_types``, plus ``serial_thresholds``:
  ``{"param", "classes", "spin", "passive"}``;
* the loader (``deploy.runtime.serial_table``, used by ``CompiledModel``: ``ibert_tvm.load``,
  ``ibert-tvm run`` / ``serve`` / ``eval``, the bench's tvm-int8 worker; and by the RPC board
  runner ``RemoteModel``) feeds the "passive" table when ``TVM_THREAD_POOL_SPIN_COUNT=0``, else the
  "spin" one; ``IBERT_TVM_SERIAL_THRESHOLDS=spin|passive`` or ``load(..., serial_thresholds=)``
  override that (anything else is an error naming the variable). An artifact without the
  parameter (compiled before, or for a target without parallel kernels) loads as before.

Why a tensor parameter: it is the path the weights already take (params.npz, the manifest, the
VM call), it adds no symbol to model.so (a global the loader would poke, or ``getenv`` in a
kernel, would be a new import or export for the .so verifier), and it stays integer-only. GPU
and aarch64 builds do not run the transform, so they have no such parameter; a kernel of static
shape is still decided at compile time, unless the two tables disagree on it (then it reads the
table too). The compile-time form remains (``thresholds=`` an int or a mapping: constants, no
parameter) for ``bench/serial_when_small.py`` and tests.

The "passive" table (:data:`PASSIVE_THRESHOLDS`), in block iterations: linear 33,554,432 (2**25),
attention 16,777,216 (2**24), layernorm 262,144 (2**18) and other 65,536 (2**16), the last two as
in the spin table of the time (layernorm then 2**18; below: why). The linear and attention entries were chosen from the
per-kernel calibration (``bench/serial_when_small.py --policy passive --target x86-amx``, MiniLM
and BERT-Base, two threads, load average 0.7-1.7; bench/results/2026-12-03-late/serial-calibration/),
each between the largest work where serial won and the smallest where it lost (median serial /
parallel time per call):

=========  ===============================================  ==============================================
class      serial wins (work, ser/par)                       serial loses (work, ser/par)
=========  ===============================================  ==============================================
linear     <= 19.0 M: every MiniLM 1x32 linear 0.46-0.88,   56.8 M: BERT 1x32 QKV 1.12; 75.6-76.1 M: 1.14-1.42
           BERT 1x32 and MiniLM 1x128 attention-out 0.74,    (MiniLM 1x128 QKV 57.0 M 0.96 and FFN-out
           0.63                                              75.8 M 0.92: near even, left parallel)
attention  <= 12.7 M (1x32, 1x128): 0.18-0.79               >= 50.3 M (8x128): 1.06-1.45
layernorm  <= 295 k (1x32, 1x128): 0.32-0.73                 >= 1.18 M (8x128): 1.21-1.63
other      49.5 k (1x32): 0.38-0.78                          >= 788 k (1x128): 1.29-1.46
=========  ===============================================  ==============================================

From those rows the parallel launch's extra cost under the passive policy is ~50-75 us a kernel
(more for the attention products at 8 x 128),
so serial wins up to about twice that in serial time: ~44 M linear, ~25 M attention, ~560 k
layernorm, ~415 k softmax block iterations; each threshold is below its estimate. Against the
spin table this makes serial, for MiniLM: at 1 x 32 the QKV and FFN linears (all of its linears),
at 1 x 128 the attention-out linear and the attention products; 8 x 128 is unchanged.

The per-kernel rows also favoured 2**19 (layernorm) and 2**18 (other), the first table. In the
whole model they did not pay (x86-amx, passive policy, one build fed tables that differ in those two
entries only, ``bench/ab_outs.py B@passive VARIANT@passive --policy passive``, 10-12 interleaved
rounds, load 0.6-0.7, 2026-12-04; new/first time at 1 x 32 / 1 x 128): BERT-Base 0.97 / 0.97 (the
first table had cost 1.03x the spin table's time at 1 x 128, its i-LayerNorm kernels serial there),
MiniLM 0.98 / 0.99, 8 x 128 1.00. So those two entries stayed the spin table's of the time. Against the spin
table, the passive one under the passive policy: MiniLM 0.69x / 0.96x / 1.00x, BERT-Base 0.93x /
1.00x at 1 x 32 / 1 x 128 / 8 x 128 (same runs, the variant's column).
"""

from __future__ import annotations

from collections.abc import Mapping

#: the targets (``ibert_tvm.targets`` names) ``passes.pipeline.lower`` applies it for
TARGETS = ("x86", "x86-amx", "llvm")
#: the op classes (:func:`op_class`), in the order of the run-time table's entries
CLASSES = ("linear", "attention", "layernorm", "other")
#: per op class, the work (block iterations, :func:`work_estimate`) up to which a kernel runs
#: serially when idle pool threads spin (TVM's default wait policy): the "spin" table
THRESHOLDS = {"linear": 1 << 23, "attention": 1 << 21, "layernorm": 1 << 16, "other": 1 << 16}
#: the same when idle pool threads sleep (``TVM_THREAD_POOL_SPIN_COUNT=0``): the "passive" table
PASSIVE_THRESHOLDS = {"linear": 1 << 25, "attention": 1 << 24, "layernorm": 1 << 18, "other": 1 << 16}
#: the tables a compiled model records (manifest ``serial_thresholds``), by wait policy
TABLES = {"spin": THRESHOLDS, "passive": PASSIVE_THRESHOLDS}
#: the Relax parameter (of ``forward`` and of any Relax function calling a split kernel) and the
#: kernels' first buffer parameter: int64 ``[len(CLASSES)]``, the thresholds of :data:`CLASSES`
TABLE_PARAM = "serial_when_small.thresholds"
TABLE_ATTR = "ibert.serial_when_small.table_index"  # PrimFunc attr: the entry of the table it reads
LAYERNORM_BLOCK = "ln_var"  # a stage of op.int_layernorm's te(): the kernel is an i-LayerNorm
SERIAL_BLOCK = "serial_when_small"  # the name of the serial branch's block
WORK_ATTR = "ibert.serial_when_small.work"  # the PrimFunc attr recording the work expression


def work_estimate(func):
    """The scalar work of an unscheduled PrimFunc: sum over its blocks (the root excepted) of
    the product of the block's iteration-variable extents. int64 ``PrimExpr`` in the shape
    variables of ``func``'s parameters, simplified."""
    import tvm.sym
    import tvm_ffi
    from tvm import s_tir, tirx

    terms = []

    def visit(block):
        if block.iter_vars:
            n = tirx.IntImm("int64", 1)
            for iv in block.iter_vars:
                n = n * tirx.Cast("int64", iv.dom.extent)  # a no-op cast the simplifier drops
            terms.append(n)

    tvm_ffi.structural_walk(func.body, (s_tir.SBlock, visit))
    total = tirx.IntImm("int64", 0)
    for t in terms:
        total = total + t
    return tvm.sym.Analyzer().simplify(total)


def op_class(func) -> str:
    """The kernel's class for :data:`THRESHOLDS`, from the unscheduled ``func``: ``"linear"`` when a
    block has a reduction over two int8 / uint8 buffers one of which is a parameter of static
    shape (the weight), ``"attention"`` when both are shaped by the sequence (``Q K^T``, ``P V``),
    ``"layernorm"`` for an i-LayerNorm (a block named :data:`LAYERNORM_BLOCK`), else ``"other"``."""
    import tvm_ffi
    from tvm import s_tir, tirx

    static = {p.name for p in func.params
              if isinstance(p, tirx.Buffer) and all(isinstance(d, (int, tirx.IntImm)) for d in p.shape)}
    found = []

    def visit(block):
        reduces = any(iv.iter_type == tirx.IterVar.CommReduce for iv in block.iter_vars)
        small = {r.source.name for r in block.reads if str(r.source.dtype) in ("int8", "uint8", "uint16")}
        if reduces and len(small) >= 2:
            found.append("linear" if small & static else "attention")

    def visit_name(block):
        if block.name_hint == LAYERNORM_BLOCK:
            found.append("layernorm")

    tvm_ffi.structural_walk(func.body, (s_tir.SBlock, visit))
    tvm_ffi.structural_walk(func.body, (s_tir.SBlock, visit_name))
    return "linear" if "linear" in found else found[0] if found else "other"


def has_parallel(func) -> bool:
    import tvm_ffi
    from tvm import tirx

    found = []
    tvm_ffi.structural_walk(func.body, (tirx.For, lambda f: found.append(1) if f.kind == tirx.ForKind.PARALLEL else None))
    return bool(found)


def _shape_vars(func) -> list:
    """``[(param index, dim index, Var)]`` of the shape variables in ``func``'s buffer shapes."""
    from tvm import tirx

    out = []
    for i, p in enumerate(func.params):
        if not isinstance(p, tirx.Buffer):  # a scalar parameter
            continue
        for j, d in enumerate(p.shape):
            if isinstance(d, tirx.Var):
                out.append((i, j, d))
    return out


def _rebind(expr, src, dst):
    """``expr`` over ``src``'s shape variables, rewritten over ``dst``'s (same positions), or
    None when a variable of ``expr`` has no counterpart."""
    import tvm_ffi
    from tvm import tirx

    pairs = []
    for i, j, v in _shape_vars(src):
        if i < len(dst.params) and isinstance(dst.params[i], tirx.Buffer):
            shape = dst.params[i].shape
            if j < len(shape):
                pairs.append((v, shape[j]))
    missing = []

    def sub(v):
        for a, b in pairs:
            if v.same_as(a):
                return b
        missing.append(v)
        return v

    out = tvm_ffi.structural_map(expr, (tirx.Var, sub))
    return None if missing else out


def _free_vars(expr) -> list:
    import tvm_ffi
    from tvm import tirx

    vs = []
    tvm_ffi.structural_walk(expr, (tirx.Var, vs.append))
    return vs


def _serial(stmt):
    """``stmt`` with every parallel loop made serial (nothing else changes)."""
    import tvm_ffi
    from tvm import tirx

    def one(f):
        if f.kind != tirx.ForKind.PARALLEL:
            return f
        return tirx.For(f.loop_var, f.min, f.extent, tirx.ForKind.SERIAL, f.body, f.thread_binding,
                        f.annotations, f.step, f.span)

    return tvm_ffi.structural_map(stmt, (tirx.For, one))


def _fresh_defs(func):
    """``func``'s body with everything it defines (loop and block variables, its buffers,
    match_buffer views) defined anew, and its uses of ``func``'s parameters and their shape
    variables still ``func``'s own objects: TVM's ``renew_defs`` (which renews the parameters
    too), then the renewed parameters mapped back to the originals."""
    import tvm_ffi
    from tvm import s_tir, tirx

    renewed = s_tir.renew_defs(func)
    pairs = []
    for p2, p in zip(renewed.params, func.params):
        pairs.append((p2, p))
        for d2, d in zip(getattr(p2, "shape", None) or (), getattr(p, "shape", None) or ()):
            if isinstance(d2, tirx.Var):
                pairs.append((d2, d))

    def back(v):
        for a, b in pairs:
            if v.same_as(a):
                return b
        return v

    return tvm_ffi.structural_map(renewed.body, (tirx.Var, back))


def table(name: str) -> list[int]:
    """The run-time table ``name`` (a key of :data:`TABLES`): one threshold per :data:`CLASSES` entry."""
    return [int(TABLES[name][c]) for c in CLASSES]


def table_buffer():
    """A fresh int64 ``[len(CLASSES)]`` buffer: the table parameter of one kernel."""
    from tvm import tirx

    return tirx.decl_buffer((tirx.IntImm("int64", len(CLASSES)),), "int64", "serial_thresholds")


def split_on_work(func, work, threshold):
    """``func`` (scheduled, with a parallel loop) as ``if work <= threshold: serial else: body``.

    ``work`` is over ``func``'s own shape variables; ``threshold`` an int (a compile-time constant)
    or an int64 ``PrimExpr`` (:func:`split_on_table`: a load from the table parameter). The branch
    goes inside the root block: the parallel branch is the root's body as it was (the root's
    allocations serve it); the serial branch is a copy of the whole root block with every
    definition renewed (SSA), nested as an opaque block named ``serial_when_small`` with its own
    allocations."""
    from tvm import s_tir, tirx

    realize = func.body
    if not isinstance(realize, s_tir.SBlockRealize):
        raise TypeError("expected a PrimFunc whose body is the root block")
    root = realize.block
    limit = tirx.IntImm("int64", int(threshold)) if isinstance(threshold, int) else threshold
    cond = tirx.LE(work, limit)
    serial = _fresh_defs(func.with_body(_serial(realize)))
    sblock = serial.block
    serial = s_tir.SBlockRealize(serial.iter_values, serial.predicate,
                                 s_tir.SBlock(sblock.iter_vars, sblock.reads, sblock.writes, SERIAL_BLOCK,
                                              sblock.body, sblock.init, sblock.alloc_buffers,
                                              sblock.match_buffers, sblock.annotations, sblock.span))
    body = tirx.IfThenElse(cond, serial, root.body)
    new_root = s_tir.SBlock(root.iter_vars, root.reads, root.writes, root.name_hint, body, root.init,
                            root.alloc_buffers, root.match_buffers, root.annotations, root.span)
    new_realize = s_tir.SBlockRealize(realize.iter_values, realize.predicate, new_root, realize.span)
    new = func.with_body(new_realize)
    return new.with_attr(WORK_ATTR, work)


def split_on_table(func, work, cls: str):
    """:func:`split_on_work` with the threshold read at call time from a table: the result takes
    a new first parameter, an int64 ``[len(CLASSES)]`` buffer (:func:`table_buffer`), and compares
    ``work`` with its entry ``CLASSES.index(cls)`` (recorded as the attr :data:`TABLE_ATTR`). Its
    callers pass the table first: :func:`pass_table` rewrites them."""
    from tvm import tirx

    buf = table_buffer()
    index = CLASSES.index(cls)
    new = split_on_work(func, work, tirx.BufferLoad(buf, [tirx.IntImm("int64", index)]))
    new = tirx.PrimFunc([buf, *new.params], new.body, new.ret_type, new.attrs, new.span)
    return new.with_attr(TABLE_ATTR, index)


def pass_table(mod):
    """The Relax side of :func:`split_on_table`: every Relax function that calls a kernel marked
    :data:`TABLE_ATTR` (``call_tir``), or a Relax function that does, takes a new last parameter
    :data:`TABLE_PARAM` (int64 ``[len(CLASSES)]``) and passes it on: first among a kernel's
    arguments, last to a Relax function. The entry function's new parameter comes after the
    weights, so it is one more run-time tensor for the caller to feed (``deploy.export`` records
    it in params.npz and the manifest). A module with no such kernel is returned unchanged.
    Raises ``ValueError`` for a marked kernel reached otherwise than by a ``call_tir`` with a tuple
    of arguments (``call_tir_inplace`` would need its indices shifted: none is produced here)."""
    import tvm
    from tvm import relax, tirx

    marked = {gv for gv, f in mod.functions_items()
              if isinstance(f, tirx.PrimFunc) and f.attrs is not None and TABLE_ATTR in f.attrs}
    if not marked:
        return mod
    call_tir = tvm.ir.Op.get("relax.call_tir")
    relax_funcs = {gv: f for gv, f in mod.functions_items() if isinstance(f, relax.Function)}

    def callees(func):
        found = set()

        def visit(call):
            if call.op.same_as(call_tir) and isinstance(call.args[0], tvm.ir.GlobalVar):
                found.add(call.args[0])
            elif isinstance(call.op, tvm.ir.GlobalVar):
                found.add(call.op)
            for a in call.args:
                if isinstance(a, tvm.ir.GlobalVar) and a in marked and not call.op.same_as(call_tir):
                    raise ValueError(f"{a.name_hint} (a serial_when_small kernel reading the table) is passed to "
                                     f"{call.op}: only call_tir is supported")

        import tvm_ffi

        tvm_ffi.structural_walk(func.body, (relax.Call, visit))
        return found

    calls = {gv: callees(f) for gv, f in relax_funcs.items()}
    need: set = set()
    while True:  # the functions reaching a marked kernel, through any depth of Relax calls
        more = {gv for gv, cs in calls.items() if gv not in need and cs & (marked | need)}
        if not more:
            break
        need |= more

    # A GlobalVar carries its function's type, which the new parameter changes: every changed
    # function gets a new GlobalVar (typed by a scratch BlockBuilder), and the references follow.
    scratch = relax.BlockBuilder()
    renamed = {gv: scratch.add_func(mod[gv], gv.name_hint) for gv in marked}
    funcs = {gv: f for gv, f in mod.functions_items() if gv not in marked and gv not in need}
    funcs.update({renamed[gv]: mod[gv] for gv in marked})
    todo = [gv for gv in relax_funcs if gv in need]
    while todo:  # callees first: a caller's body refers to its callees' new GlobalVars
        ready = [gv for gv in todo if not (calls[gv] & need) - set(renamed)]
        if not ready:
            raise ValueError("serial_when_small: recursive Relax functions reach a kernel reading the table")
        for gv in ready:
            todo.remove(gv)
            func = mod[gv]
            thr = relax.Var(TABLE_PARAM, relax.TensorType([len(CLASSES)], "int64"))

            @relax.expr_functor.mutator
            class _Thread(relax.PyExprMutator):
                def visit_global_var_(self, var):  # noqa: N802 (the mutator's method names)
                    return next((new for old, new in renamed.items() if old.same_as(var)), var)

                def visit_call_(self, call):  # noqa: N802
                    # a call of a changed function: rebuilt with the new GlobalVar and the table at
                    # once (visiting it first would type-check the old arguments against the new type)
                    if call.op.same_as(call_tir) and any(call.args[0].same_as(m) for m in marked):
                        if not isinstance(call.args[1], relax.Tuple):
                            raise ValueError(f"call_tir of {call.args[0].name_hint}: arguments not a tuple")
                        fields = [self.visit_expr(a) for a in call.args[1].fields]
                        args = [self.visit_expr(call.args[0]), relax.Tuple([thr, *fields]),
                                *(self.visit_expr(a) for a in call.args[2:])]
                        return relax.Call(call.op, args, call.attrs, call.ty_args)
                    if isinstance(call.op, tvm.ir.GlobalVar) and any(call.op.same_as(n) for n in need):
                        args = [self.visit_expr(a) for a in call.args]
                        return relax.Call(self.visit_expr(call.op), [*args, thr], call.attrs, call.ty_args)
                    return self.visit_expr_post_order(call)

            body = _Thread(mod).visit_expr(func.body)
            new = relax.Function([*func.params, thr], body, func.ret_ty, func.is_pure, func.attrs, func.span)
            renamed[gv] = scratch.add_func(new, gv.name_hint)
            funcs[renamed[gv]] = new
    return relax.transform.Normalize()(tvm.IRModule(funcs, attrs=mod.attrs, global_infos=mod.global_infos))


def serial_when_small(reference, thresholds: int | Mapping[str, int] | None = None):
    """``IRModule -> IRModule`` pass: every PrimFunc with a parallel loop chooses serial or
    parallel at call time by :func:`work_estimate` of the PrimFunc of the same name in
    ``reference`` (the fused, unscheduled module) against the threshold of its :func:`op_class`.

    ``thresholds``: None (the default) reads it at call time from the table parameter
    (:func:`split_on_table`, then :func:`pass_table` threads the parameter through the Relax
    functions); per class, or one int for all: compile-time constants (:func:`split_on_work`, no
    new parameter; the calibration tool and tests). A kernel whose work has no free shape
    variable is decided now: made serial when its work is at most the threshold, left parallel
    when above it (with the table: at most / above every table's; when the tables disagree, it
    reads the table too).

    ``reference`` may be an IRModule or a ``{name: PrimFunc}`` mapping. A function absent from
    it (or whose work cannot be carried over) is left unchanged."""
    import tvm
    from tvm import tirx

    refs: Mapping = ({gv.name_hint: f for gv, f in reference.functions.items()}
                     if isinstance(reference, tvm.IRModule) else dict(reference))
    runtime = thresholds is None
    limit = ((lambda cls: int(thresholds)) if isinstance(thresholds, int)  # a class a mapping omits: "other"'s
             else (lambda cls: int(thresholds[cls] if cls in thresholds else thresholds["other"])) if not runtime
             else None)

    @tvm.transform.module_pass(opt_level=0, name="SerialWhenSmall")
    def _pass(mod, _ctx):
        mod = mod.clone()
        for gv, func in list(mod.functions.items()):
            if not isinstance(func, tirx.PrimFunc) or not has_parallel(func):
                continue
            ref = refs.get(gv.name_hint)
            if not isinstance(ref, tirx.PrimFunc):
                continue
            work = _rebind(work_estimate(ref), ref, func)
            if work is None:
                continue
            cls = op_class(ref)
            if runtime:
                lo, hi = min(t[cls] for t in TABLES.values()), max(t[cls] for t in TABLES.values())
            else:
                lo = hi = limit(cls)
            if not _free_vars(work):  # static shapes: decide now when every table decides alike
                if int(work.value) <= lo:
                    mod[gv] = func.with_body(_serial(func.body))
                if int(work.value) <= lo or int(work.value) > hi:
                    continue
            mod[gv] = split_on_table(func, work, cls) if runtime else split_on_work(func, work, lo)
        return pass_table(mod) if runtime else mod

    return _pass
