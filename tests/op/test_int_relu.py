"""i-ReLU: ``max(q, 0)`` on integers, TE == numpy bit for bit, and it commutes with a
symmetric requantization (why the plan requantizes to the ReLU *output*'s scale)."""

from __future__ import annotations

import numpy as np
import pytest

from ibert_tvm.op.int_relu import IntReLU


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32"])
def test_relu_te_equals_numpy(dtype):
    import tvm
    from tvm import te

    info = np.iinfo(dtype)
    rng = np.random.default_rng(0)
    q = rng.integers(info.min, info.max, (7, 33), endpoint=True).astype(dtype)
    q[0, :3] = [info.min, 0, info.max]
    want = IntReLU().numpy(q)
    assert want.dtype == q.dtype and (want == np.where(q > 0, q, 0)).all()
    x = te.placeholder(q.shape, dtype, name="q")
    f = tvm.compile(te.create_prim_func([x, IntReLU().te(x)]), target="llvm")
    out = tvm.runtime.tensor(np.zeros_like(q))
    f(tvm.runtime.tensor(q), out)
    np.testing.assert_array_equal(out.numpy(), want)


def test_relu_commutes_with_symmetric_requantization():
    from ibert_tvm.op.requantize import Requantize

    rng = np.random.default_rng(1)
    acc = rng.integers(-(1 << 20), 1 << 20, 4096).astype(np.int32)
    rq = Requantize(1e-4, in_bits=32, out_bits=8)
    relu = IntReLU()
    assert (relu.numpy(rq.numpy(acc)) == rq.numpy(relu.numpy(acc))).all()


def test_relu_refuses_floats():
    with pytest.raises(ValueError, match="dtype"):
        IntReLU().numpy(np.zeros(3, np.float32))
