"""One thread-pool launch per kernel: ``OneLaunch``, a TIR pass run at the end of lowering.

TVM's CPU code generator turns every top-level ``parallel`` loop into its own
``TVMBackendParallelLaunch``: the calling thread hands a task to each pool thread, runs its own
share, and waits for the others at the end. A scheduled linear has two such loops in a row: the
activation's VNNI repack (``vnni_a_u8``, one row per iteration) and the tile GEMM with its
epilogue, so it launches the pool twice per call. When idle pool threads sleep (the passive wait
policy, ``TVM_THREAD_POOL_SPIN_COUNT=0``) each launch wakes them again.

This pass makes each run of consecutive parallel loops one launch: the run goes into one
``pragma_parallel_launch_point`` region, and each loop but the last is marked
``pragma_parallel_barrier_when_finish``. The code generator then emits one launch whose tasks
each run their share of the first loop, meet at ``TVMBackendParallelBarrier`` (a spin on a
counter in the runtime's launch, no sleeping), run their share of the next loop, and so on. The
shares are the ones TVM's own launches use (``CreateParallelFor``: task ``t`` of ``n`` runs the
contiguous range ``[t ceil(N / n), (t + 1) ceil(N / n))``), so every iteration runs once, in the
same order within its task, and a loop starts only after the one before it has finished on every
task: outputs are bit-identical, and a barrier stands where a launch used to end.

Only parallel ``For`` statements that follow each other directly in a ``SeqStmt`` are joined:
whatever stands between two of them (an allocation, a let, a store) would run once in every task
of a launch, so a run ends there. Nothing inside the loops changes. Only functions whose target is
``llvm`` are touched (the code generator that implements the two pragmas; GPU kernels have no
parallel loops). The barrier is ``TVMBackendParallelBarrier``, which the machine-code verifier
already allows (``passes/verify/machine_code.py``).

Where it sits: after TVM's whole default TIR pipeline (``s_tir``: the loops are flattened,
vectorized, unrolled and simplified by then), just before code generation, as the TIR pipeline
``passes.pipeline.TIR_PIPELINE`` registers. Measured kernel by kernel (``bench/one_launch.py``:
BERT-Base's linears at 1 x 32 with their fused epilogues, x86-amx, 2 threads, weights streamed
from L3, median of 9 interleaved rounds, 2026-12-04; TVM's default pipeline / this one / serial):

=====================================  =========================  =========================
kernel                                 passive                    spin
=====================================  =========================  =========================
768 x 768 linear, int8 out             70.3 / 49.3 / 45.8 us      28.8 / 27.9 / 45.1 us
768 -> 3072 linear + i-GELU (FFN-in)   171.0 / 153.2 / 239.2 us   126.2 / 126.9 / 240.2 us
3072 -> 768 linear + residual          138.7 / 115.6 / 157.8 us   87.3 / 84.8 / 153.3 us
=====================================  =========================  =========================

so ~20 us a launch saved when idle threads sleep, nothing lost when they spin. In the models
(``bench/ab_outs.py`` of the builds before and after, ``--same``, 2026-12-04; new/old time at
1 x 32 / 1 x 128 / 8 x 128): BERT-Base passive 0.91 / 0.96 / 0.98, spin 0.98 / 1.02 / 0.98;
MiniLM passive 1.00 / 0.92 / 0.97 (its 1 x 32 linears run serially under that policy), spin
1.00 / 0.99 / 0.99. The passive table's linear threshold was re-checked with the new launches
(2**23 and 2**24 against 2**25): MiniLM 1 x 32 1.18x / 1.10x the time, BERT-Base within 1%; kept.

(A skewed share, more of the work for the calling thread because the worker wakes late, was
measured by rewriting the joined launch's GEMM loop into one iteration per task with computed
bounds, on the 768 x 768 kernel: under the passive policy a share of 0.65 for the calling thread
took 68 us against 47 us for an even one, and 0.3-0.45 were slower too: the cost of waking the
pool is paid by both threads, not only by the worker. Not built.)
"""

from __future__ import annotations

LAUNCH_POINT = "pragma_parallel_launch_point"
BARRIER = "pragma_parallel_barrier_when_finish"


def _is_parallel(stmt) -> bool:
    from tvm import tirx

    return isinstance(stmt, tirx.For) and stmt.kind == tirx.ForKind.PARALLEL


def join_launches(stmt):
    """``stmt`` with every run of two or more consecutive parallel loops (siblings in a
    ``SeqStmt``) made one launch region, each loop but the last followed by a barrier."""
    import tvm_ffi
    from tvm import tirx

    one = tirx.IntImm("int32", 1)

    def seq(s):
        items = list(s.seq)
        out: list = []
        i = 0
        changed = False
        while i < len(items):
            k = i
            while k < len(items) and _is_parallel(items[k]):
                k += 1
            if k - i >= 2:
                run = [tirx.AttrStmt(one, BARRIER, one, loop) for loop in items[i:k - 1]] + [items[k - 1]]
                out.append(tirx.AttrStmt(one, LAUNCH_POINT, one, tirx.SeqStmt(run)))
                changed = True
                i = k
            else:
                out.append(items[i])
                i += 1
        if not changed:
            return s
        return out[0] if len(out) == 1 else tirx.SeqStmt(out, s.span)

    return tvm_ffi.structural_map(stmt, (tirx.SeqStmt, seq))


def _on_llvm(func) -> bool:
    attrs = func.attrs
    if attrs is None or "target" not in attrs:
        return False
    return attrs["target"].kind.name == "llvm"


def OneLaunch():  # noqa: N802 (named like TVM's passes)
    """``IRModule -> IRModule`` pass: :func:`join_launches` on every PrimFunc built for ``llvm``."""
    import tvm
    from tvm import tirx

    @tvm.transform.module_pass(opt_level=0, name="OneLaunch")
    def _pass(mod, _ctx):
        funcs = {}
        changed = False
        for gv, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc) and _on_llvm(func):
                body = join_launches(func.body)
                if not body.same_as(func.body):
                    func = func.with_body(body)
                    changed = True
            funcs[gv] = func
        if not changed:
            return mod
        return tvm.IRModule(funcs, attrs=mod.attrs, global_infos=mod.global_infos)

    return _pass
