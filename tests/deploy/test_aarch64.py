"""aarch64 NEON dot-product: sdot-tensorized linears, cross-linked .so, run on an emulated board.

Default suite (tiny 2-layer model): the packing is a permutation; the packed TE is exact on the
host; the schedule tensorizes to ``sdot``; ``compile --target aarch64`` gives a .so whose linear
kernels contain ``sdot`` and no float; on the board (``qemu-aarch64 -cpu max``, runtime-only TVM,
no torch) ``python -m ibert_tvm.deploy.run`` reproduces the x86 build bit for bit, for BERT,
for DistilBERT (other module names, no token_type_ids input, a ReLU head), for MPNet (relative
position bias, a per-token NER head) and ALBERT (one shared layer, a QA head); on a CPU
without dotprod (``cortex-a53``) it dies with SIGILL; an x86 .so is refused with a clear error.
Slow: the same on the default MiniLM (``python -m pytest -m slow tests/deploy/test_aarch64.py``).
Needs ``g++-aarch64-linux-gnu qemu-user`` (skipped without them, except under CI).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess

import numpy as np
import pytest

import aarch64_support as arm
from ibert_tvm.errors import IBertTVMError

SHAPES = [(1, 1), (2, 7), (3, 33), (4, 128)]


# -- the strategy, without any ARM tool ---------------------------------------------------------
def test_pack_is_a_permutation_and_falls_back_when_not_tiled():
    from ibert_tvm.schedules.arm_sdot import SdotLinear

    st = SdotLinear()
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (12, 8), dtype=np.int8)
    b = rng.integers(-1000, 1000, 12, dtype=np.int32)
    p = st.pack(w, b)
    assert p["weight"].shape == (3, 2, 4, 4) == st.param_shapes(12, 8)["weight"][0]
    assert p["weight"][1, 0, 2, 3] == w[4 * 1 + 2, 4 * 0 + 3]
    np.testing.assert_array_equal(p["weight"].transpose(0, 2, 1, 3).reshape(12, 8), w)
    np.testing.assert_array_equal(p["bias"], b)
    w6 = rng.integers(-128, 128, (6, 8), dtype=np.int8)  # N=6: not a multiple of 4 -> generic layout
    assert st.param_shapes(6, 8)["weight"] == ((6, 8), "int8")
    assert st.pack(w6, b[:6])["weight"] is w6


def _linear_module(st, m=5, n=16, k=24, seed=1):
    import tvm
    from tvm import te

    rng = np.random.default_rng(seed)
    w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    b = rng.integers(-(1 << 20), 1 << 20, n, dtype=np.int32)
    x = rng.integers(-128, 128, (m, k), dtype=np.int8)
    packed = st.pack(w, b)
    X = te.placeholder((m, k), "int8", name="x")
    W = te.placeholder(packed["weight"].shape, "int8", name="w")
    B = te.placeholder((n,), "int32", name="b")
    Y = st.te(X, W, B)
    return tvm.IRModule({"main": te.create_prim_func([X, W, B, Y])}), (x, packed["weight"], b), (x, w, b)


def test_packed_te_is_exact_on_the_host():
    """The packed formula itself (no sdot: the host is x86) equals ``linear_np`` bit for bit."""
    import tvm

    from ibert_tvm.op.int_matmul import linear_np
    from ibert_tvm.schedules.arm_sdot import SdotLinear

    mod, args, ref = _linear_module(SdotLinear())
    f = tvm.compile(mod, tvm.target.Target({"kind": "llvm"}))
    y = tvm.runtime.tensor(np.zeros((5, 16), np.int32))
    f(*[tvm.runtime.tensor(a) for a in args], y)
    np.testing.assert_array_equal(y.numpy(), linear_np(*ref))


def test_schedule_tensorizes_to_sdot():
    """The aarch64 schedule pass turns the packed linear into ``sdot`` (LLVM's aarch64 backend is
    inside TVM: no cross tools needed)."""
    import tvm

    from ibert_tvm.schedules import linear_strategy, schedule_pass
    from ibert_tvm.schedules.arm_sdot import SdotLinear
    from ibert_tvm.targets import get_target

    st = linear_strategy("aarch64")
    assert isinstance(st, SdotLinear)
    tgt = get_target("aarch64").tvm_target()
    mod, _, _ = _linear_module(st)
    with tgt:
        sched = schedule_pass("aarch64", tgt)(mod)
    assert "llvm.aarch64.neon.sdot" in sched.script()
    asm = tvm.compile(sched, tgt).mod.inspect_source("asm")
    assert re.search(r"\bsdot\b", asm)
    # Without +dotprod there is nothing to tensorize to: the pass declines.
    assert schedule_pass("aarch64", tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"})) is None


def test_missing_cross_compiler_and_qemu_name_the_debian_package(monkeypatch, tmp_path):
    import shutil

    from ibert_tvm.deploy import board as board_mod
    from ibert_tvm.deploy.export import export_library
    from ibert_tvm.targets import get_target

    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(IBertTVMError, match=r"apt-get install g\+\+-aarch64-linux-gnu"):
        export_library(object(), tmp_path / "model.so", get_target("aarch64"))
    with pytest.raises(IBertTVMError, match="apt-get install qemu-user"):
        board_mod.require_qemu()
    with pytest.raises(IBertTVMError, match="apt-get install qemu-user"):
        board_mod.prepare_board(tmp_path / "board")
    assert not (tmp_path / "model.so").exists()


def test_runner_ids_json_round_trip_and_errors_on_the_host(compiled_factory, tmp_path, capsys):
    """The board runner's own contract, checked natively: --ids-json/--print-ints give exactly
    ``run_ids``; bad requests exit 2 with ``error:`` and no traceback."""
    from ibert_tvm.deploy.run import main
    from ibert_tvm.deploy.runtime import CompiledModel

    out = compiled_factory("BertModel")
    model = CompiledModel(out)
    bl = arm.batches(model.manifest, [(2, 5), (1, 3)], seed=7)
    f = tmp_path / "ids.json"
    f.write_text(json.dumps([{k: v.tolist() for k, v in b.items()} for b in bl]))
    assert main([str(out), "--ids-json", str(f), "--print-ints"]) == 0
    got = json.loads(capsys.readouterr().out)
    for b, o in zip(bl, got["outputs"]):
        np.testing.assert_array_equal(o, model.run_ids(b))
    f.write_text(json.dumps({**{k: v.tolist() for k, v in bl[1].items()}}))  # one batch: "output"
    assert main([str(out), "--ids-json", str(f), "--print-ints"]) == 0
    np.testing.assert_array_equal(json.loads(capsys.readouterr().out)["output"], model.run_ids(bl[1]))
    ragged = tmp_path / "ragged.json"
    ragged.write_text('{"input_ids": [[1, 2], [3]]}')
    for argv, msg in [([str(out)], "give at least one text"), ([str(out), "x", "--ids-json", str(f)], "not both"),
                      ([str(out), "--ids-json", str(ragged)], "not a rectangular array"),
                      ([str(out), "--ids-json", str(tmp_path / "none.json")], "not readable JSON"),
                      ([str(tmp_path / "missing"), "x"], "is not a directory")]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and "Traceback" not in err


# -- the cross-linked build ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def arm_out(quantized_factory, tmp_path_factory):
    return arm.arm_out(quantized_factory, tmp_path_factory)


def _sdot_per_function(so) -> dict[str, int]:
    dis = subprocess.run(["aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", str(so)],
                         capture_output=True, text=True, check=True).stdout
    counts: dict[str, int] = {}
    func = None
    for ln in dis.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.+)>:$", ln)
        if m:
            func = m.group(1)
            counts.setdefault(func, 0)
        elif func and re.search(r"\tsdot\s", ln):
            counts[func] += 1
    return counts


def test_aarch64_so_has_sdot_in_every_linear_and_no_float(arm_out, capsys):
    arm.need_tools("aarch64-linux-gnu-objdump")
    from ibert_tvm.cli import main

    m = json.loads((arm_out / "manifest.json").read_text())
    assert m["target"] == "aarch64" and m["linear_strategy"] == "arm-sdot"
    with open(arm_out / "model.so", "rb") as f:
        assert f.read(20)[18] == 183  # ELF e_machine EM_AARCH64
    counts = _sdot_per_function(arm_out / "model.so")
    linears = {f: c for f, c in counts.items() if f.startswith("fused_linear")}
    assert len(linears) >= 5, sorted(counts)  # QKV (fused), attention out, FFN in/out, per layer kind
    assert all(c >= 8 for c in linears.values()), linears  # tensorized: whole 4x4 tiles, not a stray sdot
    assert main(["verify", str(arm_out)]) == 0
    assert re.search(r"^float ops: 0$", capsys.readouterr().out, re.M)


# -- on the emulated board ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def board():
    return arm.board()


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    return arm.staged_package(tmp_path_factory)


def test_board_run_is_bit_identical_to_x86(board, pkg, arm_out, compiled_factory, quantized_factory, tmp_path):
    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.plan import ModelPlan

    x86 = CompiledModel(compiled_factory("BertModel"))
    bl = arm.batches(x86.manifest, SHAPES)
    res = arm.run_on_board(board, pkg, arm_out, bl, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout)
    assert got["target"] == "aarch64" and len(got["outputs"]) == len(SHAPES)
    assert got["runtime"] == "tvm_ffi + libtvm_runtime.so"  # deploy.light: no `import tvm` on the board
    plan = ModelPlan(quantized_factory("BertModel")[0])
    for (b, s), inputs, out in zip(SHAPES, bl, got["outputs"]):
        want = x86.run_ids(inputs)
        np.testing.assert_array_equal(np.asarray(out, dtype=np.int64), want, err_msg=f"batch={b} seq={s}")
        if s <= 33:
            np.testing.assert_array_equal(want, run_golden(plan, **inputs))
    # Texts through the board's tokenizer too (the user's command line).
    res = board.run(["-m", "ibert_tvm.deploy.run", str(arm_out), "A plane is taking off.",
                     "An air plane is taking off.", "--print-ints"], pythonpath=[pkg], timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    np.testing.assert_array_equal(json.loads(res.stdout)["output"],
                                  x86.run_text(["A plane is taking off.", "An air plane is taking off."]))


def test_distilbert_on_the_board_is_bit_identical_to_x86_and_golden(board, pkg, quantized_factory, compiled_factory,
                                                                    tmp_path_factory, tmp_path):
    """A new architecture (DistilBERT: other module names, no token types, a ReLU head) built for
    aarch64 runs on the board exactly as the x86 build and golden, from its own three inputs."""
    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.plan import ModelPlan

    arch = "DistilBertForSequenceClassification"
    out = arm.arm_out(quantized_factory, tmp_path_factory, arch)
    m = json.loads((out / "manifest.json").read_text())
    assert m["target"] == "aarch64" and m["inputs"] == ["input_ids", "attention_mask", "position_ids"]
    x86 = CompiledModel(compiled_factory(arch))
    bl = arm.batches(x86.manifest, SHAPES, seed=3)
    assert all("token_type_ids" not in b for b in bl)
    res = arm.run_on_board(board, pkg, out, bl, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout)
    assert got["target"] == "aarch64" and len(got["outputs"]) == len(SHAPES)
    plan = ModelPlan(quantized_factory(arch)[0])
    for (b, s), inputs, o in zip(SHAPES, bl, got["outputs"]):
        want = run_golden(plan, **inputs, token_type_ids=None)
        np.testing.assert_array_equal(x86.run_ids(inputs), want, err_msg=f"x86 batch={b} seq={s}")
        np.testing.assert_array_equal(np.asarray(o, dtype=np.int64), want, err_msg=f"board batch={b} seq={s}")


# (architecture, config overrides): MPNet (its relative position bias as an integer table per layer,
# no token types) with a per-token NER head; ALBERT (one shared layer function called at every
# application, factorized embeddings) with the QA head. One layer (ALBERT: the shared one twice):
# the overrides of tests/model/test_head_matrix.py's cells, whose x86 build this reuses (build_once).
BOARD_CASES = {"MPNetForTokenClassification": {"num_hidden_layers": 1, "num_labels": 5},
               "AlbertForQuestionAnswering": {"num_hidden_layers": 2}}


@pytest.mark.parametrize("arch", list(BOARD_CASES))
def test_mpnet_and_albert_on_the_board_are_bit_identical_to_x86_and_golden(arch, board, pkg, tiny_factory,
                                                                            calibration_sentences, tmp_path_factory,
                                                                            tmp_path):
    """One calibration, two builds (llvm, shared with the head matrix, and aarch64, cross-linked):
    the board's int32 outputs equal the x86 build's and golden's, bit for bit, on right-padded
    batches up to 4 x 128, from the model's own inputs (MPNet: no token_type_ids)."""
    from arch_checks import build_once
    from ibert_tvm.deploy.export import compile_quantized
    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.plan import ModelPlan

    arm.need_tools("aarch64-linux-gnu-g++")
    _, qm, d, _ = build_once(arch, BOARD_CASES[arch], tiny_factory, calibration_sentences, tmp_path_factory)
    base = tmp_path_factory.mktemp(f"board-{arch}")
    compile_quantized(qm, base / "arm", target="aarch64", log=lambda *a: None)
    m = json.loads((base / "arm" / "manifest.json").read_text())
    assert m["target"] == "aarch64" and m["head"] == qm.dims["head"]
    assert m["output"]["shape"] == ["batch", "seq", qm.dims["num_labels"]]
    assert ("token_type_ids" in m["inputs"]) == (not arch.startswith("MPNet"))
    x86 = CompiledModel(d / "out")
    bl = arm.batches(x86.manifest, SHAPES, seed=5)
    res = arm.run_on_board(board, pkg, base / "arm", bl, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout)
    assert got["target"] == "aarch64" and len(got["outputs"]) == len(SHAPES)
    plan = ModelPlan(qm)
    for (b, s), inputs, o in zip(SHAPES, bl, got["outputs"]):
        want = run_golden(plan, **{"token_type_ids": None, **inputs})
        np.testing.assert_array_equal(x86.run_ids(inputs), want, err_msg=f"x86 batch={b} seq={s}")
        np.testing.assert_array_equal(np.asarray(o, dtype=np.int64), want, err_msg=f"board batch={b} seq={s}")


def test_cpu_without_dotprod_dies_with_sigill(board, pkg, arm_out, compiled_factory, tmp_path):
    """cortex-a53 has NEON but not the dot-product extension: sdot really executes."""
    from ibert_tvm.deploy.runtime import CompiledModel

    bl = arm.batches(CompiledModel(compiled_factory("BertModel")).manifest, [(1, 4)])
    res = arm.run_on_board(board, pkg, arm_out, bl, tmp_path, cpu="cortex-a53")
    assert res.returncode == -signal.SIGILL, (res.returncode, res.stderr[-1000:])
    assert "Illegal instruction" in res.stderr


def test_x86_library_on_the_board_is_refused_clearly(board, pkg, compiled_factory):
    res = board.run(["-m", "ibert_tvm.deploy.run", str(compiled_factory("BertModel")), "hello"],
                    pythonpath=[pkg], timeout=120)
    assert res.returncode == 2, res.stderr[-1000:]
    assert "built for x86_64" in res.stderr and "this machine is aarch64" in res.stderr
    assert "--target aarch64" in res.stderr and "Traceback" not in res.stderr


def test_board_is_runtime_only(board):
    """The board has TVM's runtime, numpy and tokenizers, but no TVM compiler library and no torch
    (so everything above ran without them; ``from tvm import relax`` cannot work there)."""
    from ibert_tvm.deploy.board import SITE

    site = board.sysroot / SITE
    assert (site / "tvm" / "lib" / "libtvm_runtime.so").is_file()
    assert (site / "numpy").is_dir() and (site / "tokenizers").is_dir()
    assert not list(board.sysroot.rglob("libtvm_compiler*"))
    assert not (site / "torch").exists() and not (site / "transformers").exists()


# -- slow: the default MiniLM on the board -----------------------------------------------------
@pytest.mark.slow
def test_minilm_on_the_board_is_bit_identical_to_x86(board, pkg, tmp_path_factory, tmp_path):
    import time

    from ibert_tvm.datasets import default_calibration_sentences, stsb
    from ibert_tvm.deploy.export import compile_quantized
    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.quantization.calibrate import calibrate

    arm.need_tools()
    qm = calibrate(load_checkpoint("default"), default_calibration_sentences(300))
    base = tmp_path_factory.mktemp("minilm-arm")
    compile_quantized(qm, base / "x86", target="llvm", log=lambda *a: None)
    compile_quantized(qm, base / "arm", target="aarch64", log=lambda *a: None)
    counts = _sdot_per_function(base / "arm" / "model.so")
    assert all(c > 0 for f, c in counts.items() if f.startswith("fused_linear"))
    x86 = CompiledModel(base / "x86")
    sentences = [p.sentence1 for p in stsb("dev")[:32]]
    bl = [x86.tokenizer(sentences[i : i + 8]) for i in range(0, len(sentences), 8)]
    t0 = time.perf_counter()
    res = arm.run_on_board(board, pkg, base / "arm", bl, tmp_path, timeout=1800)
    wall = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout)
    for inputs, out in zip(bl, got["outputs"]):
        np.testing.assert_array_equal(np.asarray(out), x86.run_ids(inputs))
    print(f"\nMiniLM on qemu-aarch64 -cpu max: {wall:.1f} s wall for 4 batches of 8 (incl. start-up); "
          f"per batch {got['ms']} ms; model.so {(base / 'arm' / 'model.so').stat().st_size / 1e6:.2f} MB")
    res = arm.run_on_board(board, pkg, base / "arm", bl[:1], tmp_path, cpu="cortex-a53", timeout=1800)
    assert res.returncode == -signal.SIGILL
