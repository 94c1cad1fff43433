"""Q-BERT low-bit weights in the compiled model: packed 2/3/4-bit linears, unpacked in-kernel.

* plan/golden: a packed linear is a uint8 ``weight_packed`` run-time tensor; the golden
  executor (``unpack_np`` + ``linear_np``) gives what the same integer weights stored as int8
  give; embeddings and the classifier head stay 8-bit.
* compiled (tiny BERT, 2 layers, hidden 32): weight bits 4, 3, 2 and a mixed per-layer plan,
  built for ``llvm`` (generic strategy: the packed row format) and ``x86`` (VNNI bit tiles,
  ``vpdpbusd``), equal the golden executor bit for bit on padded random batches, with zero
  float ops, and ``params.npz`` is smaller than the 8-bit build's by exactly the weight bytes
  saved.
* ``aarch64`` and ``cuda-t4`` compile a packed model integer-only with their fast matmuls
  (``sdot``; WMMA with the unpack inlined into the shared-memory load); the aarch64 build is
  run on the emulated board in the slow tests.
"""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

from conftest import random_batch
from ibert_tvm.op.packed_weights import row_bytes

SHAPES = ((1, 1), (2, 7), (3, 33), (8, 64))
MIXED = {"llvm": (2, 4), "x86": (3, 8)}  # per-layer bits of the 2-layer tiny model


def _bits(default, slow):
    """Bit widths as test params: ``default`` in the default suite, ``slow`` marked slow (every
    width is covered on both targets by the default suite at the kernel level, and by at least
    one default model here)."""
    ids = {2: "w2", 3: "w3", 4: "w4"}

    def one(b, marks=()):
        return pytest.param(b, marks=marks, id=ids.get(b) or "mixed" + "".join(map(str, b)))

    return [one(b) for b in default] + [one(b, pytest.mark.slow) for b in slow]


@pytest.fixture(scope="module")
def lowbit(scheme_factory):
    """(arch, bits or per-layer tuple) -> QuantizedModel, calibrated once per session."""
    from ibert_tvm.quantization.config import QuantConfig

    def get(bits, arch: str = "BertModel"):
        per_layer = isinstance(bits, tuple)
        cfg = QuantConfig().with_weights(layer_bits=bits) if per_layer else QuantConfig().with_weights(bits=bits)
        return scheme_factory(cfg, arch)

    return get


def _as_int8(qm):
    """The same integer weights, declared 8-bit (nothing packed)."""
    import copy

    q8 = copy.copy(qm)
    q8.weight_bits_map = {}
    return q8


# -- plan and golden (no compile) -------------------------------------------------------------
@pytest.mark.parametrize("bits", _bits([4, 3, 2, (2, 4)], []))
def test_plan_holds_packed_weights_and_golden_unpacks_them(bits, lowbit):
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.plan import ModelPlan

    qm = lowbit(bits)
    plan = ModelPlan(qm)
    layer_bits = bits if isinstance(bits, tuple) else (bits,) * plan.n_layers
    packed = plan.weight_bits()
    assert len(packed) == 6 * plan.n_layers == len(plan.linear_names())
    for name, b in packed.items():
        assert b == layer_bits[int(name.split(".")[2])]
        w = plan.arrays[name + ".weight_packed"]
        n, k = qm.tensor(name + ".weight").shape
        assert w.dtype == np.uint8 and w.shape == (n, row_bytes(k, b))
        assert name + ".weight" not in plan.arrays
        assert np.abs(qm.tensor(name + ".weight")).max() <= 2 ** (b - 1) - 1
    rng = np.random.default_rng(3)
    plan8 = ModelPlan(_as_int8(qm))
    for batch, seq in SHAPES:
        inputs = random_batch(rng, batch, seq)
        np.testing.assert_array_equal(run_golden(plan, **inputs), run_golden(plan8, **inputs))


def test_classifier_head_and_embeddings_stay_8_bit(lowbit):
    from ibert_tvm.model.plan import ModelPlan

    plan = ModelPlan(lowbit(3, "RobertaForSequenceClassification"))
    assert plan.linears["head.dense"].bits == plan.linears["head.out"].bits == 8
    assert plan.arrays["head.dense.weight"].dtype == np.int8
    assert plan.arrays["embeddings.word_embeddings.weight"].dtype == np.int8
    assert set(plan.weight_bits().values()) == {3} and len(plan.weight_bits()) == 6 * plan.n_layers
    # packed q / k / v stay three linears (ModelPlan.fused_qkv stacks int8 weights only)
    assert all(L.qkv is None for L in plan.layers) and not plan.fused
    assert all(L.qkv is not None for L in ModelPlan(_as_int8(lowbit(3, "RobertaForSequenceClassification"))).layers)


# -- compiled == golden ---------------------------------------------------------------------
def _npz_bytes_8bit(qm, target, tmp_path, extra: dict | None = None) -> int:
    """Size of the params.npz the 8-bit build of the same weights writes (export only, no build).
    ``extra``: the parameters the build appends after the weights (x86: the serial/parallel
    threshold table), the same in both builds."""
    from ibert_tvm.frontend.lower import integer_module
    from ibert_tvm.schedules import linear_strategy

    from ibert_tvm.model.plan import ModelPlan

    st = linear_strategy(target)
    _, names, _ = integer_module(_as_int8(qm), st)
    # the 8-bit build stacks q, k, v into one linear (ModelPlan.fused_qkv), a packed one keeps the three:
    # compare with the 8-bit tensors of the three, so that only the weight formats differ
    arrays = ModelPlan(_as_int8(qm)).arrays_for(st)
    packed = {n.rsplit(".attention.self.", 1)[0] for n in qm.weight_bits_map if ".attention.self." in n}
    names = [p for n in names for p in ([n.replace(".qkv.", f".{part}.") for part in ("query", "key", "value")]
                                         if ".attention.self.qkv." in n and n.split(".attention.")[0] in packed
                                         else [n])]
    path = tmp_path / "params8.npz"
    arrays = {**arrays, **(extra or {})}
    np.savez(path, **{f"p{i:04d}": arrays[n] for i, n in enumerate([*names, *(extra or {})])})
    return path.stat().st_size


def _saved_bytes(qm, target) -> int:
    """Weight bytes a packed build saves over the 8-bit one, from the formats."""
    from ibert_tvm.schedules.x86_vnni import TILE_BYTES

    saved = 0
    for name, bits in qm.weight_bits_map.items():
        n, k = qm.tensor(name + ".weight").shape
        if target == "x86":  # [Np/16, Kp/4, 16, 4] int8 -> [Np/16, Kp/4, 64 bits / 8] uint8
            tiles = -(-n // 16) * -(-k // 4)
            saved += tiles * (64 - TILE_BYTES[bits])
        else:  # [N, K] int8 -> [N, row_bytes(K, bits)] uint8
            saved += n * (k - row_bytes(k, bits))
    return saved


def _packed_funcs(script: str) -> dict[str, str]:
    """PrimFuncs of a dumped module script that unpack a packed weight: name -> text."""
    parts = re.split(r"\n(?=    @T\.prim_func)", script)
    out = {}
    for p in parts:
        m = re.search(r"def (\w+)\(", p)
        if m and 'T.sblock("unpack_weight")' in p:
            out[m.group(1)] = p
    return out


def compile_check(qm, target, tmp_path, shapes=SHAPES):
    from ibert_tvm.deploy.export import compile_quantized
    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.plan import ModelPlan

    out, dump = tmp_path / "out", tmp_path / "dump"
    manifest = compile_quantized(qm, out, target=target, database_dir=False, dump_dir=dump, log=lambda *a: None)
    assert manifest["verify"]["module"]["float_ops"] == 0 and manifest["verify"]["code"]["float_ops"] == 0
    assert manifest["model"]["weight_bits"] == qm.weight_bits_map  # the manifest says which linears are packed
    model, plan, d = CompiledModel(out), ModelPlan(qm), qm.dims
    rng = np.random.default_rng(11)
    for batch, seq in shapes:
        inputs = random_batch(rng, batch, seq, family=d["family"], pad_id=d["pad_id"], type_vocab=d["type_vocab"])
        np.testing.assert_array_equal(model.run_ids(inputs), run_golden(plan, **inputs), err_msg=f"{target} {batch}x{seq}")
    # the run-time weights are the packed bytes: params.npz shrinks by exactly the bytes saved
    saved = _saved_bytes(qm, target)
    assert saved > 0
    st = manifest.get("serial_thresholds")  # x86: the threshold table, last in both builds
    extra = {st["param"]: np.asarray(st["spin"], np.int64)} if st else None
    assert _npz_bytes_8bit(qm, target, tmp_path, extra) - (out / "params.npz").stat().st_size == saved
    funcs = _packed_funcs((dump / "1_scheduled.py").read_text())
    assert len(funcs) >= 4, sorted(funcs)  # QKV, attention out, FFN in, FFN out (per distinct shape)
    return out, funcs


@pytest.mark.parametrize("bits", _bits([3, MIXED["llvm"]], [4, 2]))
def test_llvm_packed_model_is_bit_exact(bits, lowbit, tmp_path):
    compile_check(lowbit(bits), "llvm", tmp_path)


@pytest.mark.parametrize("bits", _bits([4, MIXED["x86"]], [3, 2]))
def test_x86_packed_model_is_bit_exact_on_vpdpbusd(bits, lowbit, tmp_path):
    from ibert_tvm.schedules.x86_vnni import MM_BLOCK

    out, funcs = compile_check(lowbit(bits), "x86", tmp_path)
    for name, text in funcs.items():  # the unpacked tile feeds the tensorized VNNI matmul
        assert "llvm.x86.avx512.vpdpbusd.512" in text and f'T.sblock("{MM_BLOCK}' in text, name
    dis = subprocess.run(["objdump", "-d", str(out / "model.so")], capture_output=True, text=True, check=True).stdout
    assert "vpdpbusd" in dis


# -- other targets: compiled, integer-only, fast matmuls kept --------------------------------
def test_aarch64_packed_model_compiles_to_sdot(lowbit, tmp_path):
    import shutil

    from ibert_tvm.deploy.export import compile_quantized

    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64-linux-gnu-g++ not installed (apt-get install g++-aarch64-linux-gnu)")
    out, dump = tmp_path / "out", tmp_path / "dump"
    m = compile_quantized(lowbit(3), out, target="aarch64", database_dir=False, dump_dir=dump, log=lambda *a: None)
    assert m["verify"]["module"]["float_ops"] == 0 and m["verify"]["code"]["float_ops"] == 0
    funcs = _packed_funcs((dump / "1_scheduled.py").read_text())
    assert len(funcs) >= 4 and all("llvm.aarch64.neon.sdot" in t for t in funcs.values()), sorted(funcs)


def test_cuda_packed_model_compiles_to_tensor_cores(lowbit, tmp_path):
    from ibert_tvm.deploy.export import compile_quantized
    from ibert_tvm.schedules.cuda_t4 import MATMUL_KIND_ATTR

    out, dump = tmp_path / "out", tmp_path / "dump"
    m = compile_quantized(lowbit(3), out, target="cuda-t4", database_dir=False, dump_dir=dump, log=lambda *a: None)
    assert m["verify"]["module"]["float_ops"] == 0 and m["verify"]["code"]["float_ops"] == 0
    script = (dump / "1_scheduled.py").read_text()
    # the unpack is inlined into the matmul kernel's shared-memory load: no unpack stage is left,
    # and every linear reads its packed uint8 parameter inside a WMMA kernel
    assert 'T.sblock("unpack_weight")' not in script
    wmma_funcs = [p for p in re.split(r"\n(?=    @T\.prim_func)", script) if f'"{MATMUL_KIND_ATTR}": "wmma"' in p]
    assert len([p for p in wmma_funcs if '"uint8"' in p]) >= 4
    ptx = m["cuda"]["ptx"]
    if ptx is not None:  # nvcc present
        assert ptx["ok"] and ptx["float_ops"] == 0 and not ptx["untensorized_int8_matmuls"]


# -- slow: the emulated ARM board, a classifier ---------------------------------------------
@pytest.mark.slow
def test_aarch64_packed_model_on_the_board_is_bit_exact(lowbit, tmp_path, tmp_path_factory):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "deploy"))
    import aarch64_support as arm

    from ibert_tvm.deploy.export import compile_quantized
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.plan import ModelPlan

    arm.need_tools("aarch64-linux-gnu-g++")
    brd, pkg = arm.board(), arm.staged_package(tmp_path_factory)
    qm = lowbit(4)
    out = tmp_path / "out"
    manifest = compile_quantized(qm, out, target="aarch64", database_dir=False, log=lambda *a: None)
    bl = arm.batches(manifest, SHAPES, seed=5)
    res = arm.run_on_board(brd, pkg, out, bl, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    plan = ModelPlan(qm)
    for inputs, got in zip(bl, json.loads(res.stdout)["outputs"]):
        np.testing.assert_array_equal(np.asarray(got, dtype=np.int64), run_golden(plan, **inputs))


@pytest.mark.slow
@pytest.mark.parametrize("target", ["llvm", "x86"])
def test_classifier_packed_model_is_bit_exact(target, lowbit, tmp_path):
    compile_check(lowbit(4, "RobertaForSequenceClassification"), target, tmp_path, shapes=((1, 1), (3, 33)))


@pytest.mark.slow
def test_minilm_4_bit_on_x86_is_bit_exact_and_smaller(calibration_sentences, tmp_path):
    """The default MiniLM with 4-bit encoder weights (~1 minute of compile)."""
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.quantization.calibrate import calibrate
    from ibert_tvm.quantization.config import QuantConfig

    qm = calibrate(load_checkpoint("default"), calibration_sentences, QuantConfig().with_weights(bits=4))
    out, _ = compile_check(qm, "x86", tmp_path, shapes=((1, 1), (4, 40), (2, 128)))
    # 6 layers x (4 x 384 x 384 + 2 x 384 x 1536) weights, 4 bits saved on each
    assert _saved_bytes(qm, "x86") == 6 * (4 * 384 * 384 + 2 * 384 * 1536) // 2
