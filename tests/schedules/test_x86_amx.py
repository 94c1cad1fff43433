"""Target ``x86-amx`` (schedules/x86_amx.py): the VNNI linear's GEMM tile on AMX ``tdpbusd``.

* kernels: FFN-in (i-GELU) and residual kernels scheduled by ``AmxLinearRule`` run on tile
  instructions and equal the ops' numpy references bit for bit, for row counts below, at and across
  the 32-row tile, with 64- and 32-channel tiles; a linear whose K is not a multiple of 64 is
  left to the VNNI rule.
* model: a small BERT (hidden 64, so that every linear qualifies) compiled for ``x86-amx`` equals
  ``run_golden`` bit for bit, its ``model.so`` holds ``tdpbusd`` and verifies float-free, and a
  loader on a CPU without AMX refuses it with one error line instead of faulting.

The AMX tests need an AMX-INT8 CPU (hardware, not a tool): elsewhere they skip, saying so.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import random_batch
from ibert_tvm.support.amx import cpu_has_amx_int8, enable_amx
from test_x86_vnni import _build_fused

needs_amx = pytest.mark.skipif(not cpu_has_amx_int8(), reason="this CPU has no AMX-INT8 (/proc/cpuinfo)")


def _amx_target():
    from ibert_tvm.targets import get_target

    return get_target("x86-amx").tvm_target()


@needs_amx
@pytest.mark.parametrize("kind,k,n", [("gelu", 64, 192), ("residual", 128, 64), ("residual", 192, 96)])
def test_amx_tile_kernel_equals_numpy(kind, k, n):
    from ibert_tvm.schedules.x86_amx import AmxLinearRule

    assert enable_amx()
    lib, _, run = _build_fused(kind, k, n, seed=k + n, rule=AmxLinearRule(), target=_amx_target())
    asm = lib.mod.inspect_source("asm")
    assert "tdpbusd" in asm and "ldtilecfg" in asm, "the GEMM tile is not on AMX"
    assert "prefetcht1" in asm, "the weight slabs ahead are not prefetched"
    for batch, seq in [(1, 1), (1, 31), (1, 32), (2, 7), (3, 33), (4, 64)]:
        got, want = run(batch, seq)
        np.testing.assert_array_equal(got, want, err_msg=f"{kind} K={k} N={n} {batch}x{seq}")


def test_k_not_a_multiple_of_64_is_left_to_the_vnni_rule():
    from tvm import te, tirx

    from ibert_tvm.schedules import x86_vnni as xv
    from ibert_tvm.schedules.x86_amx import AmxLinearRule, amx_rules

    i64 = lambda v: tirx.IntImm("int64", v)  # noqa: E731
    x = te.placeholder((tirx.Var("m", "int64"), i64(96)), "int8", name="x")
    w = te.placeholder([i64(d) for d in xv.VnniLinear().param_shapes(64, 96)["weight"][0]], "int8", name="w")
    b = te.placeholder((i64(64),), "int32", name="b")
    func = te.create_prim_func([x, w, b, xv.VnniLinear().te(x, w, b)])
    tgt = _amx_target()
    with tgt:
        assert AmxLinearRule().apply(func, tgt, False) is None
        rules = amx_rules(tgt)
        assert isinstance(rules[0], AmxLinearRule) and isinstance(rules[1], xv.VnniLinearRule)
        assert rules[1].apply(func, tgt, False) is not None


@pytest.fixture(scope="module")
def amx_built(tiny_factory, calibration_sentences, tmp_path_factory):
    """(QuantizedModel, compiled out/) of a 1-layer BERT with hidden 64 (every linear has
    K % 64 == 0 and 64-channel tiles) compiled for x86-amx."""
    from ibert_tvm.deploy.export import compile_quantized
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.quantization.calibrate import calibrate

    hf = tiny_factory("BertModel", hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2)
    qm = calibrate(load_checkpoint(hf), calibration_sentences)
    out = tmp_path_factory.mktemp("amx") / "out"
    compile_quantized(qm, out, target="x86-amx", log=lambda *a: None)
    return qm, out


@needs_amx
def test_small_bert_on_amx_equals_golden_and_verifies(amx_built, capsys):
    from ibert_tvm.cli import main
    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.plan import ModelPlan

    qm, out = amx_built
    model, plan, d = CompiledModel(out), ModelPlan(qm), qm.dims
    rng = np.random.default_rng(5)
    for batch, seq in ((1, 1), (2, 7), (3, 33), (2, 77)):
        inputs = random_batch(rng, batch, seq, family=d["family"], pad_id=d["pad_id"], type_vocab=d["type_vocab"])
        np.testing.assert_array_equal(model.run_ids(inputs), run_golden(plan, **inputs), err_msg=f"{batch}x{seq}")
    import subprocess

    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(out / "model.so")], capture_output=True,
                         text=True, check=True).stdout
    assert "tdpbusd" in dis and "tilerelease" in dis
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0
    assert "float ops: 0" in capsys.readouterr().out


@needs_amx
@pytest.mark.parametrize("table", ["spin", "all-parallel"])
def test_small_bert_on_amx_on_two_threads_equals_golden(table, amx_built, tmp_path):
    """The same build on a pool of two threads (the in-process tests' pool has one here), every
    split kernel parallel or as the spin table chooses: the golden integers, call after call."""
    from test_one_launch import assert_golden_on_two_threads

    qm, out = amx_built
    assert_golden_on_two_threads(qm, out, [(1, 1), (2, 7), (3, 33), (2, 77), (4, 128)], table, tmp_path, seed=6)


def test_loader_without_amx_refuses_with_one_error(amx_built, monkeypatch):
    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.errors import IBertTVMError
    from ibert_tvm.support import amx

    _, out = amx_built
    monkeypatch.setattr(amx, "cpu_has_amx_int8", lambda cpuinfo=None: False)
    with pytest.raises(IBertTVMError, match="compiled for target x86-amx, but this CPU has no AMX-INT8"):
        CompiledModel(out)


def test_cpuinfo_flags_are_read():
    assert cpu_has_amx_int8("processor: 0\nflags\t\t: fpu avx512_vnni amx_tile amx_int8\n")
    assert not cpu_has_amx_int8("flags\t\t: fpu avx512_vnni amx_bf16\n")
    assert not cpu_has_amx_int8("")


def test_tune_refuses_x86_amx_with_one_error_line(quantized_factory, tmp_path, capsys):
    from ibert_tvm.cli import main

    _, q = quantized_factory("BertModel")
    capsys.readouterr()
    rc = main(["tune", str(q), "--target", "x86-amx", "--trials", "2", "--work-dir", str(tmp_path / "db")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "error: tuning --target x86-amx is not supported" in err, err
    assert not (tmp_path / "db").exists()


@needs_amx
def test_prefetch_mode_none_builds_without_prefetch_and_the_same_integers(monkeypatch):
    """``x86_amx.PREFETCH = "none"`` (what bench/amx_prefetch.py compares against) gives a tile with
    no ``prefetcht1`` and the same integers; an unknown mode is refused."""
    from ibert_tvm.schedules import x86_amx
    from ibert_tvm.schedules.x86_amx import AmxLinearRule

    assert enable_amx()
    monkeypatch.setattr(x86_amx, "PREFETCH", "none")
    lib, _, run = _build_fused("gelu", 128, 128, seed=5, rule=AmxLinearRule(), target=_amx_target())
    asm = lib.mod.inspect_source("asm")
    assert "tdpbusd" in asm and "prefetcht1" not in asm
    for batch, seq in [(1, 32), (2, 33)]:
        got, want = run(batch, seq)
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="prefetch must be one of"):
        x86_amx.register_amx_intrin(128, 64, prefetch="bogus")
