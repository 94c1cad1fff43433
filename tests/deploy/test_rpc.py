"""TVM RPC: a loopback tracker + an RPC server running on the emulated aarch64 board.

Default suite: an unreachable or silent tracker fails within its timeout with a clear message
(no tools needed); through a tracker on 127.0.0.1 and TVM's stock ``rpc_server`` under
``qemu-aarch64`` (127.0.0.1 only, bounded lifetime, stopped in teardown), the tiny aarch64 build
runs bit-identical to the local x86 build; an unknown key and an x86 library are clear errors.
Slow: MetaSchedule measures candidates on the board through the tracker
(``python -m pytest -m slow tests/deploy/test_rpc.py``).
"""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

import aarch64_support as arm
from ibert_tvm.deploy import rpc
from ibert_tvm.errors import IBertTVMError


# -- no board needed ----------------------------------------------------------------------------
def test_unreachable_tracker_fails_fast_and_clearly(compiled_factory):
    out = compiled_factory("BertModel")
    port = rpc.free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(IBertTVMError, match=rf"RPC tracker 127.0.0.1:{port} is unreachable .*rpc_tracker"):
        rpc.run_remote(out, texts=["hi"], tracker=f"127.0.0.1:{port}", key="k", timeout=2)
    # A liveness bound, not a speed claim: TVM's own client retries a refused tracker for 60 s.
    assert time.monotonic() - t0 < 30
    with pytest.raises(IBertTVMError, match="unreachable"):
        rpc.rpc_runner(f"127.0.0.1:{port}", "k", timeout=2)


def test_silent_tracker_times_out():
    """Something listens but never answers the handshake: a timeout, not a hang."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        addr = f"127.0.0.1:{srv.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(IBertTVMError, match=r"no answer after 1 s \(timed out\)"):
            rpc.request_session(addr, "k", timeout=1)
        assert time.monotonic() - t0 < 30  # liveness: the 1 s deadline held (no hang)


@pytest.mark.parametrize("bad", ["nohostport", "host:", "host:abc", ":9190", "host:70000"])
def test_bad_addresses(bad):
    with pytest.raises(IBertTVMError, match="address"):
        rpc.parse_address(bad)


def test_deadline_wraps_errors_and_hangs():
    with pytest.raises(IBertTVMError, match="step: no answer after 0.2 s"):
        rpc.with_deadline(lambda: time.sleep(5), 0.2, "step")
    with pytest.raises(IBertTVMError, match="step failed: boom"):
        rpc.with_deadline(lambda: (_ for _ in ()).throw(RuntimeError("boom")), 5, "step")
    assert rpc.with_deadline(lambda: 7, 5, "step") == 7


# -- a loopback tracker and the board's RPC server ---------------------------------------------
@pytest.fixture(scope="module")
def loopback():
    import importlib.util

    board = arm.board()
    if importlib.util.find_spec("tornado") is None:
        arm.unavailable("TVM's RPC tracker needs tornado (pip install tornado)")
    tracker, addr = rpc.start_tracker(lifetime=400)
    server = None
    try:
        server = rpc.start_board_server(board, addr, arm.KEY, lifetime=400)
        yield addr
    finally:
        from ibert_tvm.deploy.board import stop

        for p in (server, tracker):
            if p is not None:
                stop(p)


def test_loopback_rpc_run_is_bit_identical(loopback, quantized_factory, compiled_factory, tmp_path_factory):
    from ibert_tvm.deploy.runtime import CompiledModel

    out = arm.arm_out(quantized_factory, tmp_path_factory)
    x86 = CompiledModel(compiled_factory("BertModel"))
    with rpc.open_remote(out, tracker=loopback, key=arm.KEY, timeout=120, session_timeout=300) as remote:
        for inputs in arm.batches(x86.manifest, [(1, 1), (3, 33), (2, 128)], seed=3):
            got = remote.run_ids(inputs)
            assert got.dtype == np.int32
            np.testing.assert_array_equal(got, x86.run_ids(inputs))
        texts = ["A plane is taking off.", "An air plane is taking off."]
        np.testing.assert_array_equal(remote.run_text(texts), x86.run_text(texts))
        with pytest.raises(IBertTVMError, match="token id"):  # the same input checks as a local run
            remote.run_ids({**inputs, "input_ids": inputs["input_ids"] * 0 - 1})
    # The session ended with the block: the board serves the next request (run_remote: one shot).
    one = arm.batches(x86.manifest, [(2, 9)], seed=4)[0]
    np.testing.assert_array_equal(rpc.run_remote(out, one, tracker=loopback, key=arm.KEY, timeout=120),
                                  x86.run_ids(one))


def test_unknown_key_is_reported(loopback):
    with pytest.raises(IBertTVMError, match=rf"no RPC server is registered with key 'no-such-board'.*{arm.KEY}"):
        rpc.request_session(loopback, "no-such-board", timeout=10)
    with pytest.raises(IBertTVMError, match="no-such-board"):
        rpc.rpc_runner(loopback, "no-such-board", timeout=10)


def test_x86_library_over_rpc_is_a_clear_error(loopback, compiled_factory):
    with pytest.raises(IBertTVMError, match=r"board cannot load .*model.so \(built for x86_64, target 'llvm'\)"):
        rpc.open_remote(compiled_factory("BertModel"), tracker=loopback, key=arm.KEY, timeout=60)
    rpc.wait_for_key(loopback, arm.KEY, 30)  # the server survived it


# -- slow: MetaSchedule measuring on the board ---------------------------------------------------
@pytest.mark.slow
def test_metaschedule_measures_on_the_board_through_the_tracker(loopback, tmp_path):
    """A few MetaSchedule trials of an int8 matmul, built with the cross builder and timed on
    the board through the tracker; at least one candidate must be measured."""
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    from ibert_tvm.targets import get_target

    arm.need_tools("aarch64-linux-gnu-g++")
    a = te.placeholder((16, 64), "int8", name="a")
    w = te.placeholder((32, 64), "int8", name="w")
    k = te.reduce_axis((0, 64), "k")
    c = te.compute((16, 32), lambda i, j: te.sum(a[i, k].astype("int32") * w[j, k].astype("int32"), axis=k), name="c")
    db = ms.tune_tir(
        te.create_prim_func([a, w, c]), get_target("aarch64").tvm_target(), str(tmp_path), max_trials_global=4,
        num_trials_per_iter=4, builder=rpc.cross_builder("aarch64", max_workers=1, timeout_sec=900),
        runner=rpc.rpc_runner(loopback, arm.KEY, timeout=120),
    )
    secs = [float(s) for r in db.get_all_tuning_records() for s in (r.run_secs or [])]
    measured = [s for s in secs if s < 1e9]  # 1e10 marks a failed build or run
    assert measured, secs
    print(f"\nMetaSchedule on the board via RPC: {len(measured)}/{len(secs)} measured, best {min(measured) * 1e6:.1f} us")
