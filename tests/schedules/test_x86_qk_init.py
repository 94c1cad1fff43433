"""The bare ``Q K^T`` kernel (schedules/x86_attention.py, the biased path): its accumulators start
from ``-128 * rowsum(K)`` written as whole int32x16 vectors (the init block's key loop vectorized),
so LLVM keeps the tile in zmm registers from the start. Before, LLVM wrote the init with 256-bit
stores and reloaded it as 512-bit accumulators (failed store-to-load forwarding: the kernel's
hottest instruction at BERT-Base 8 x 128). Checked: the schedule, the code (no 256-bit store of
the init) and the integers, against ``batch_matmul_np`` at odd and symbolic sequence lengths.
"""

from __future__ import annotations

import numpy as np


def _kernel(d: int = 64, heads: int = 12):
    import tvm
    from tvm import te, tirx

    from ibert_tvm.op.int_matmul import batch_matmul_te
    from ibert_tvm.schedules import schedule_pass

    B, S = tirx.Var("batch", "int64"), tirx.Var("seq", "int64")
    h, dd = tirx.IntImm("int64", heads), tirx.IntImm("int64", d)
    q = te.placeholder((B, h, S, dd), "int8", name="q")
    k = te.placeholder((B, h, S, dd), "int8", name="k")
    func = te.create_prim_func([q, k, batch_matmul_te(q, k)]).with_attr("global_symbol", "main")
    tgt = tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2})
    return schedule_pass("x86", tgt)(tvm.IRModule({"main": func})), tgt


def _init_loops(func):
    """The loops around the ``batch_matmul_init`` block, innermost last."""
    import tvm_ffi
    from tvm import s_tir, tirx

    found = []

    def visit(loop):
        body = loop.body
        while isinstance(body, tirx.For):
            body = body.body
        if isinstance(body, s_tir.SBlockRealize) and body.block.name_hint == "batch_matmul_init":
            found.append(loop)

    tvm_ffi.structural_walk(func.body, (tirx.For, visit))
    return found


def test_qk_init_is_one_vector_per_accumulator():
    import tvm
    from tvm import tirx

    from ibert_tvm.op.int_matmul import batch_matmul_np

    mod, tgt = _kernel()
    func = mod["main"]
    assert "k_rowsum" in func.script(), "not the biased Q K^T path"
    inits = _init_loops(func)
    assert inits, "no init block"
    innermost = [f for f in inits if not isinstance(f.body, tirx.For)]
    assert innermost and all(f.kind == tirx.ForKind.VECTORIZED and int(f.extent) == 16 for f in innermost)
    lib = tvm.compile(mod, target=tgt)
    rng = np.random.default_rng(17)
    for B, S in [(1, 1), (2, 7), (1, 33), (3, 77), (1, 128)]:
        q = rng.integers(-128, 128, (B, 12, S, 64)).astype(np.int8)
        k = rng.integers(-128, 128, (B, 12, S, 64)).astype(np.int8)
        k[..., 0, :] = -128  # the largest row sum
        out = tvm.runtime.tensor(np.zeros((B, 12, S, S), np.int32))
        lib["main"](tvm.runtime.tensor(q), tvm.runtime.tensor(k), out)
        np.testing.assert_array_equal(out.numpy(), batch_matmul_np(q, k), err_msg=f"B={B} S={S}")
