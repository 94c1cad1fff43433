"""Packed low-bit linears per target strategy, one kernel at a time.

* x86: the VNNI bit tiles are a lossless relayout of the row format (padding = weight 0); the
  kernel (unpack stage into ``[Np/16, Kp/4, 16, 4]`` + the VNNI matmul), scheduled by the x86 pass
  (unpack computed per channel tile and vectorized, matmul tensorized), equals
  ``packed_linear_np`` at 2/3/4 bits for N, K not multiples of 16/4 and several row counts, on
  ``vpdpbusd``; the compensated bias is the 8-bit one of the unpacked weight.
* aarch64: the unpack into ``[N/4, K/4, 4, 4]`` + sdot body is exact on the host and the aarch64
  pass tensorizes it to ``sdot``; shapes that do not tile fall back to the generic kernel.
* cuda-t4: the schedule pass puts the packed linear on tensor cores (the unpack inlined).
"""

from __future__ import annotations

import numpy as np
import pytest

from ibert_tvm.op.packed_weights import pack_np, packed_linear_np, qmax, row_bytes
from ibert_tvm.schedules import x86_vnni as xv


def _q(rng, n, k, bits):
    q = rng.integers(-qmax(bits), qmax(bits) + 1, (n, k)).astype(np.int8)
    q[0] = qmax(bits)
    q[-1] = -qmax(bits)
    return q


def _i64(shape):
    from tvm import tirx

    return [tirx.IntImm("int64", int(d)) for d in shape]


def _packed_func(st, n, k, bits, lead_rank=1):
    """``st.packed_te`` as a PrimFunc with symbolic rows: (func, x, w, b, y placeholders)."""
    from tvm import te, tirx

    shapes = st.packed_param_shapes(n, k, bits)
    lead = [tirx.Var(f"d{i}", "int64") for i in range(lead_rank)]
    x = te.placeholder((*lead, tirx.IntImm("int64", k)), "int8", name="x")
    w = te.placeholder(_i64(shapes["weight_packed"][0]), shapes["weight_packed"][1], name="w")
    b = te.placeholder(_i64((n,)), "int32", name="b")
    y = st.packed_te(x, weight_packed=w, bias=b, bits=bits, k=k)
    return te.create_prim_func([x, w, b, y], index_dtype_override="int64")  # as Relax's legalization


# -- x86 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("n,k", [(16, 4), (20, 7), (40, 30), (1, 1), (64, 384)])
def test_vnni_bit_tiles_are_a_lossless_relayout(bits, n, k):
    from ibert_tvm.op.packed_weights import unpack_np

    rng = np.random.default_rng(bits * 100 + n + k)
    q = _q(rng, n, k, bits)
    b = rng.integers(-(2**30), 2**30 + 1, n).astype(np.int32)
    p = xv.VnniLinear().pack_packed(pack_np(q, bits), b, bits, k)
    tiles = p["weight_packed"]
    assert tiles.dtype == np.uint8
    assert tiles.shape == xv.VnniLinear().packed_param_shapes(n, k, bits)["weight_packed"][0]
    assert tiles.shape == (-(-n // 16), -(-k // 4), 64 * bits // 8)
    np.testing.assert_array_equal(xv.unpack_weight_bits_np(tiles, bits, n, k), q)
    # padding unpacks to the weight 0 (so the VNNI layout of the unpacked tiles is pack_weight's)
    full = xv.unpack_weight_bits_np(tiles, bits, tiles.shape[0] * 16, tiles.shape[1] * 4)
    np.testing.assert_array_equal(xv.pack_weight(full), xv.pack_weight(q))
    np.testing.assert_array_equal(p["bias"], xv.compensate_bias(unpack_np(pack_np(q, bits), bits, k), b))


def test_vnni_4_bit_tile_bytes_by_hand():
    # tile t = 4 ni + ki; 4 bits: byte j = u[j] | u[j + 32] << 4, u = q + 8
    q = np.zeros((16, 4), np.int8)
    q[0, 0], q[8, 0] = 7, -7  # t = 0 and t = 32
    q[0, 1] = -1  # t = 1
    tiles = xv.pack_weight_bits(pack_np(q, 4), 4, 4)
    assert tiles.shape == (1, 1, 32)
    assert tiles[0, 0, 0] == (7 + 8) | ((-7 + 8) << 4)
    assert tiles[0, 0, 1] == (-1 + 8) | (8 << 4)
    assert (tiles[0, 0, 2:] == 0x88).all()


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("n,k,lead_rank", [(40, 30, 1), (48, 64, 2)])
def test_vnni_packed_kernel_equals_numpy_on_vpdpbusd(bits, n, k, lead_rank):
    import tvm

    st = xv.VnniLinear()
    func = _packed_func(st, n, k, bits, lead_rank)
    tgt = tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2})
    sch = xv.VnniLinearRule().apply(func, tgt, False)
    assert sch is not None, "the VNNI linear rule did not schedule the packed linear"
    sched = sch.mod["main"]
    text = sched.script()
    assert "T.vectorized" in text and "llvm.x86.avx512.vpdpbusd.512" in text
    lib = tvm.compile(tvm.IRModule({"main": sched.with_attr("global_symbol", "main")}), target=tgt)
    assert "vpdpbusd" in lib.mod.inspect_source("asm")
    rng = np.random.default_rng(bits + n + k)
    rows = [(1,), (31,), (33,), (70,)] if lead_rank == 1 else [(1, 1), (2, 33), (4, 64)]
    for lead in rows:
        q = _q(rng, n, k, bits)
        packed = pack_np(q, bits)
        b = rng.integers(-(2**30), 2**30 + 1, n).astype(np.int32)
        x = rng.integers(-128, 128, (*lead, k)).astype(np.int8)
        x.reshape(-1, k)[0] = -128
        p = st.pack_packed(packed, b, bits, k)
        y = tvm.runtime.tensor(np.zeros((*lead, n), np.int32))
        lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(p["weight_packed"]), tvm.runtime.tensor(p["bias"]), y)
        np.testing.assert_array_equal(y.numpy(), packed_linear_np(x, packed, b, bits), err_msg=f"rows {lead}")


def test_vnni_bad_tiles_raise():
    from tvm import te

    with pytest.raises(ValueError, match="24 bytes"):
        xv.vnni_unpack_te(te.placeholder((1, 1, 32), "uint8", name="w"), 3)


# -- aarch64 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("n,k", [(16, 24), (6, 13)])  # (6, 13): not 4-tiled -> generic packed kernel
def test_sdot_packed_kernel_exact_on_host_and_tensorized(bits, n, k):
    import tvm

    from ibert_tvm.schedules import schedule_pass
    from ibert_tvm.schedules.arm_sdot import ACC_BLOCK, SdotLinear
    from ibert_tvm.targets import get_target

    st = SdotLinear()
    assert st.packed_param_shapes(n, k, bits)["weight_packed"] == ((n, row_bytes(k, bits)), "uint8")
    func = _packed_func(st, n, k, bits)
    assert (f'T.sblock("{ACC_BLOCK}")' in func.script()) == (n % 4 == 0 and k % 4 == 0)
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), tvm.target.Target({"kind": "llvm"}))
    rng = np.random.default_rng(bits * 7 + n)
    q = _q(rng, n, k, bits)
    packed = pack_np(q, bits)
    b = rng.integers(-1000, 1000, n).astype(np.int32)
    x = rng.integers(-128, 128, (5, k)).astype(np.int8)
    p = st.pack_packed(packed, b, bits, k)
    y = tvm.runtime.tensor(np.zeros((5, n), np.int32))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(p["weight_packed"]), tvm.runtime.tensor(p["bias"]), y)
    np.testing.assert_array_equal(y.numpy(), packed_linear_np(x, packed, b, bits))
    if n % 4 == 0 and k % 4 == 0:
        tgt = get_target("aarch64").tvm_target()
        with tgt:
            sched = schedule_pass("aarch64", tgt)(tvm.IRModule({"main": func}))
        assert "llvm.aarch64.neon.sdot" in sched.script()


# -- cuda-t4 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [3, 4])
def test_cuda_packed_linear_goes_to_tensor_cores(bits):
    from ibert_tvm.schedules import GENERIC
    from ibert_tvm.schedules.cuda_t4 import schedule_matmul_func

    new, kind = schedule_matmul_func(_packed_func(GENERIC, 64, 96, bits), name="packed linear")
    assert kind == "wmma"
    text = new.script()
    assert 'T.sblock("unpack_weight")' not in text and "uint8" in text  # inlined into the shared load
