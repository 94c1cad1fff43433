"""The packed low-bit linear: the in-kernel unpack (TE) equals ``unpack_np`` and the packed
linear equals ``linear_np(x, unpack_np(packed), bias)`` bit for bit, at 2, 3 and 4 bits, with
odd K (a 3-bit value straddling bytes, rows not a whole number of bytes), and the kernel is
integer-only."""

from __future__ import annotations

import numpy as np
import pytest

from ibert_tvm.op.int_matmul import linear_np
from ibert_tvm.op.packed_weights import (
    UNPACK_BLOCK,
    pack_np,
    packed_linear_np,
    packed_linear_te,
    qmax,
    row_bytes,
    unpack_np,
    unpack_te,
)


def _weights(rng, n, k, bits):
    q = rng.integers(-qmax(bits), qmax(bits) + 1, size=(n, k)).astype(np.int8)
    q[0, :] = qmax(bits)  # extremes on both ends
    if n > 1:
        q[1, :] = -qmax(bits)
    return q


def _build(args):
    import tvm
    from tvm import te

    func = te.create_prim_func(args).with_attr("global_symbol", "main")
    return tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target({"kind": "llvm", "num-cores": 2}))


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("k", [1, 5, 13, 37])
def test_unpack_te_equals_unpack_np(bits, k):
    import tvm
    from tvm import te

    n = 7
    rng = np.random.default_rng(bits * 100 + k)
    q = _weights(rng, n, k, bits)
    packed = pack_np(q, bits)
    p = te.placeholder((n, row_bytes(k, bits)), "uint8", name="packed")
    out = unpack_te(p, bits, k)
    lib = _build([p, out])
    res = tvm.runtime.tensor(np.zeros((n, k), np.int8))
    lib["main"](tvm.runtime.tensor(packed), res)
    np.testing.assert_array_equal(res.numpy(), unpack_np(packed, bits, k))
    np.testing.assert_array_equal(res.numpy(), q)
    assert out.op.name == UNPACK_BLOCK


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("n,k", [(5, 13), (16, 64), (3, 77)])
def test_packed_linear_te_equals_numpy(bits, n, k):
    import tvm
    from tvm import te, tirx

    from ibert_tvm.passes.verify import verify_integer_only

    rng = np.random.default_rng(bits * 1000 + n * 10 + k)
    rows = tirx.Var("rows", "int64")
    x = te.placeholder((rows, tirx.IntImm("int64", k)), "int8", name="x")
    p = te.placeholder((tirx.IntImm("int64", n), tirx.IntImm("int64", row_bytes(k, bits))), "uint8", name="packed")
    b = te.placeholder((tirx.IntImm("int64", n),), "int32", name="bias")
    y = packed_linear_te(x, p, b, bits, k)
    func = te.create_prim_func([x, p, b, y]).with_attr("global_symbol", "main")
    mod = tvm.IRModule({"main": func})
    assert verify_integer_only(mod).float_ops == 0
    lib = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm", "num-cores": 2}))
    for m in (1, 3, 33):
        q = _weights(rng, n, k, bits)
        packed = pack_np(q, bits)
        xs = rng.integers(-128, 128, size=(m, k)).astype(np.int8)
        xs[0, :] = -128
        bias = rng.integers(-(2**30), 2**30 + 1, n).astype(np.int32)
        out = tvm.runtime.tensor(np.zeros((m, n), np.int32))
        lib["main"](tvm.runtime.tensor(xs), tvm.runtime.tensor(packed), tvm.runtime.tensor(bias), out)
        want = packed_linear_np(xs, packed, bias, bits)
        np.testing.assert_array_equal(want, linear_np(xs, q, bias))
        np.testing.assert_array_equal(out.numpy(), want, err_msg=f"bits={bits} m={m}")


def test_bad_packed_input():
    from tvm import te

    p = te.placeholder((4, 3), "uint8", name="p")
    with pytest.raises(ValueError, match=r"uint8 \[N, 4\]"):
        unpack_te(p, 4, 8)
    with pytest.raises(ValueError, match="packed"):
        unpack_te(te.placeholder((4, 4), "int8", name="p"), 4, 8)
    with pytest.raises(ValueError, match="only"):
        unpack_te(p, 8, 3)
