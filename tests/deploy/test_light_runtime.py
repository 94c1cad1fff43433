"""The runtime path runs model.so on ``tvm_ffi`` + ``libtvm_runtime.so`` alone (``deploy.light``).

In a fresh process, ``ibert_tvm.load`` + ``encode_int`` and the board runner
(``python -m ibert_tvm.deploy.run``) import neither the ``tvm`` Python package nor torch nor
transformers, and map TVM's runtime library but not its compiler library. Their outputs are
bit-identical to the ``import tvm`` path (``tvm.runtime.vm.VirtualMachine``), which stays the
fallback when the light path is unavailable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ibert_tvm.deploy import light
from ibert_tvm.deploy.runtime import CompiledModel

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["A man is playing a guitar.", "Two dogs run through a field of grass.", "ok"]

_CHILD = r"""
import json, runpy, sys
mode, out, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
res = {}
if mode == "load":
    import ibert_tvm
    m = ibert_tvm.load(out)
    res["q"] = m.encode_int(texts)[0].tolist()
    res["runtime"] = m.compiled.runtime_note
else:  # the board runner, in this process so that its maps can be read
    sys.argv = ["ibert_tvm.deploy.run", out, *texts, "--print-ints"]
    try:
        runpy.run_module("ibert_tvm.deploy.run", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        assert not e.code, e.code
    sys.stdout.write("\n")
libs = sorted({l.split()[-1].rsplit("/", 1)[-1] for l in open("/proc/self/maps") if ".so" in l.split()[-1]})
res["libs"] = [l for l in libs if "tvm" in l or "torch" in l]
res["modules"] = sorted(k for k in sys.modules if k.split(".")[0] in ("tvm", "torch", "transformers"))
print(json.dumps(res))
"""


def _child(mode: str, out: Path) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TVM_USE_RUNTIME_LIB", None)
    r = subprocess.run([sys.executable, "-c", _CHILD, mode, str(out), json.dumps(TEXTS)], check=False,
                       capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def out(compiled_factory):
    return compiled_factory("BertModel")


@pytest.fixture(scope="module")
def through_tvm(out):
    """The fallback: ``import tvm`` and its ``VirtualMachine`` (as if the light path were unavailable)."""
    mp = pytest.MonkeyPatch()

    def unavailable():
        raise light.Unavailable("forced by the test")

    mp.setattr(light, "load_runtime", unavailable)
    try:
        m = CompiledModel(out)
    finally:
        mp.undo()
    assert m.runtime == "tvm" and m.runtime_note == "import tvm (forced by the test)"
    return m.run_text(TEXTS)


def _check_light(got: dict):
    assert got["modules"] == []  # not even the `tvm` package, nor torch / transformers
    assert "libtvm_runtime.so" in got["libs"]
    assert not [lib for lib in got["libs"] if lib.startswith(("libtvm_compiler", "libtvm.so", "libtorch"))]


def test_load_maps_the_runtime_library_only(out, through_tvm):
    (got,) = _child("load", out)
    _check_light(got)
    assert got["runtime"] == "tvm_ffi + libtvm_runtime.so"
    np.testing.assert_array_equal(np.array(got["q"], np.int32), through_tvm)


def test_the_board_runner_maps_the_runtime_library_only(out, through_tvm):
    printed, got = _child("run", out)
    _check_light(got)
    assert printed["runtime"] == "tvm_ffi + libtvm_runtime.so"
    np.testing.assert_array_equal(np.array(printed["output"], np.int32), through_tvm)


def test_light_and_tvm_paths_agree_in_process(out, through_tvm):
    m = CompiledModel(out)
    assert m.runtime == "light"
    np.testing.assert_array_equal(m.run_text(TEXTS), through_tvm)
    # the same executable through both runtimes' tensors: parameters round-trip exactly
    for p in m.params[:3]:
        np.testing.assert_array_equal(light.numpy(light.tensor(p)), p)



def test_run_ids_reads_inputs_in_place_and_equals_runtime_tensors(out):
    """On the CPU ``run_ids`` hands the VM 64-byte-aligned numpy buffers (reused while the batch
    shape stays) and copies the output out of the VM's tensor: every call equals the same
    executable fed runtime tensors and read with ``TVMTensorCopyToBytes``, across shape changes,
    and the returned array owns its memory (the next call does not change it)."""
    m = CompiledModel(out)
    assert m.runtime == "light" and m._host_inputs
    rng = np.random.default_rng(7)
    vocab = m.manifest["vocab"]
    seen = []
    for shape in [(2, 5), (1, 9), (2, 5), (3, 5)]:
        ids = rng.integers(0, vocab, shape)
        mask = np.ones(shape, np.int64)
        mask[0, -1] = 0
        inputs = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in m.manifest["inputs"]:
            inputs["token_type_ids"] = rng.integers(0, m.manifest["type_vocab"], shape)
        if "position_ids" in m.manifest["inputs"]:
            inputs["position_ids"] = np.tile(np.arange(shape[1]), (shape[0], 1))
        got = m.run_ids(inputs)
        x = m.check_inputs(inputs)
        want = light.numpy(m._forward(*[light.tensor(x[n]) for n in m.manifest["inputs"]], *m._tvm_params))
        np.testing.assert_array_equal(got, want, err_msg=str(shape))
        assert got.flags.owndata or got.base is not None and got.base.flags.owndata
        assert all(b.ctypes.data % 64 == 0 and b.shape == shape and b.dtype == np.int32 for b in m._in_bufs)
        seen.append((got, got.copy()))
    for got, frozen in seen:  # later calls (and buffer reuse) left earlier outputs alone
        np.testing.assert_array_equal(got, frozen)
