"""``compile --target cuda-t4``: integer-only CUDA whose int8 matmuls run on tensor cores / dp4a.

No GPU exists here, so nothing CUDA is *run*: the checks are on the generated CUDA source and on
the PTX that ``nvcc -arch=sm_75`` makes of it (see ``ibert_tvm/passes/verify/ptx.py``). The
bit-exactness of the CUDA kernels against the golden executor is argued (the schedule only
reorders, pads with zeros and tensorizes the unchanged TE compute; see
``ibert_tvm/schedules/cuda_t4.py``), not measured.

Without ``nvcc`` the build tests are skipped, except under CI (``CI`` set), where they fail.
The real MiniLM is ``slow``: ``python -m pytest -m slow tests/schedules/test_cuda_t4.py``.
"""

from __future__ import annotations

import json
import os

import pytest

from ibert_tvm.deploy.cuda_check import PTX_REPORT
from ibert_tvm.support.hashing import sha256_file
from ibert_tvm.passes.verify import INT8_MATMUL_KERNEL, find_nvcc, ptx_kernels

IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
HAVE_NVCC = find_nvcc() is not None
needs_nvcc = pytest.mark.skipif(
    not HAVE_NVCC and not IN_CI, reason="nvcc (CUDA toolkit) not found: the PTX of the CUDA build cannot be checked"
)

# what a correct T4 build must show, per int8 matmul kernel (the instruction, with its signedness:
# P is uint8, so P V must multiply unsigned x signed bytes; everything else is signed x signed)
LINEAR_OR_QK = ("wmma.mma.sync.aligned.row.col.m16n16k16.s32.s8.s8.s32",)
PV = ("dp4a.u32.s32",)


def _require_nvcc():
    if not HAVE_NVCC:
        pytest.fail("nvcc is required under CI for the CUDA build tests (install the CUDA toolkit or set IBERT_TVM_NVCC)")


def _compile(qm, out):
    from ibert_tvm.deploy.export import compile_quantized

    lines = []
    manifest = compile_quantized(qm, out, target="cuda-t4", log=lines.append)
    return manifest, lines


def check_cuda_build(out, manifest, *, n_layers: int):
    """The acceptance checks shared by the tiny and the MiniLM build."""
    from ibert_tvm.passes.verify import cuda_ptx_report, cuda_source_from_library

    # 1. the IR/TIR and CUDA-source verifier ran in the build and found nothing
    assert manifest["verify"]["module"]["float_ops"] == 0
    assert manifest["verify"]["code"]["float_ops"] == 0
    assert manifest["verify"]["code"]["ops"]["cuda.kernel"] >= 10
    cuda = manifest["cuda"]
    assert cuda["arch"] == "sm_75" and cuda["executed_here"] is False
    assert cuda["ptx"]["ok"], cuda["ptx"]

    # 2. independently, from the shipped model.so (never loaded: no CUDA runtime here)
    rep = cuda_ptx_report(out)
    assert rep.source_sha256 == cuda["cuda_source_sha256"] == json.loads((out / PTX_REPORT).read_text())["cuda_source_sha256"]
    assert "__global__" in cuda_source_from_library(out / "model.so")
    assert rep.float_ops == 0, rep.format()
    for k in rep.kernels:
        assert not k.float_ops, (k.name, dict(k.float_ops))
        assert not any(".satfinite" in op for op in k.ops), k.name  # int32 accumulation must wrap-free add, not clamp
    mm = {k.name: k for k in rep.matmul_kernels()}
    assert rep.untensorized() == [], rep.format()
    linears = [n for n in mm if "linear" in n]
    qk = [n for n in mm if "qk_matmul" in n]
    pv = [n for n in mm if "pv_matmul" in n]
    # distinct fused kernels: q/k/v share one; layers may share theirs, so at least one of each kind
    assert linears and qk and pv, sorted(mm)
    assert len(pv) <= n_layers and set(mm) == set(linears) | set(qk) | set(pv)
    for name in linears + qk:
        ops = mm[name].ops
        assert all(ops[i] > 0 for i in LINEAR_OR_QK), (name, dict(mm[name].ops))
        assert mm[name].int8_matmul_unit == "tensor cores (wmma)"
    for name in pv:
        ops = mm[name].ops
        assert all(ops[i] > 0 for i in PV), (name, dict(ops))
        assert ops["dp4a.s32.s32"] == 0, f"{name}: uint8 P read as signed"
    # the non-matmul kernels (softmax, LayerNorm, GELU epilogues, pooling, gathers) exist and are integer-only
    others = [k.name for k in rep.kernels if k.kind == "entry" and not INT8_MATMUL_KERNEL.search(k.name)]
    assert any("softmax" in n for n in others) and any("layernorm" in n for n in others), others
    return rep


@pytest.fixture(scope="module")
def cuda_out(quantized_factory, tmp_path_factory):
    if not HAVE_NVCC:
        if not IN_CI:
            pytest.skip("nvcc (CUDA toolkit) not found")
        _require_nvcc()
    qm, _ = quantized_factory("BertModel")
    out = tmp_path_factory.mktemp("cuda") / "out-cuda"
    manifest, lines = _compile(qm, out)
    return out, manifest, lines


@needs_nvcc
def test_tiny_bert_cuda_t4_is_integer_only_with_tensorized_int8_matmuls(cuda_out):
    out, manifest, lines = cuda_out
    rep = check_cuda_build(out, manifest, n_layers=2)
    print("\n" + rep.format())
    assert manifest["target"] == "cuda-t4" and (out / "model.so").is_file()
    assert any("compiled only, not run here" in ln for ln in lines), lines


@needs_nvcc
def test_verify_a_cuda_out_dir(cuda_out):
    from ibert_tvm.deploy.verify_artifact import verify_cuda_compiled

    out, _, _ = cuda_out
    said = []
    report = verify_cuda_compiled(out, log=said.append)
    assert report.float_ops == 0, report.format()
    # the host launches its kernels through the runtime: indirect calls, each accounted for
    assert sum(n for k, n in report.ops.items() if k.startswith("indirect.")) >= 10, report.ops
    assert report.ops["cuda.kernel"] >= 10 and report.ops["ptx.untensorized_int8_matmul"] == 0
    assert report.ops.get("ptx.tensor cores (wmma)", 0) >= 1 and report.ops.get("ptx.dp4a", 0) >= 1
    assert any("never executed here" in s for s in said)


@needs_nvcc
def test_verify_refuses_a_replaced_cuda_source(cuda_out, tmp_path):
    import shutil

    from ibert_tvm.deploy.verify_artifact import verify_cuda_compiled
    from ibert_tvm.errors import IBertTVMError

    out, _, _ = cuda_out
    bad = tmp_path / "out"
    shutil.copytree(out, bad)
    data = (bad / "model.so").read_bytes()
    i = data.find(b"__global__")
    (bad / "model.so").write_bytes(data[:i] + b"__device__" + data[i + len(b"__global__") :])  # same length
    with pytest.raises(IBertTVMError, match="does not match .*lib_sha256"):  # the library's hash, first
        verify_cuda_compiled(bad, log=lambda *a: None)
    # re-recorded library hash: the CUDA source's own recorded sha256 still catches the edit
    digest = sha256_file(bad / "model.so")
    m = json.loads((bad / "manifest.json").read_text())
    m["lib_sha256"], m["files"]["model.so"] = digest, digest
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IBertTVMError, match="CUDA source .* does not match its manifest"):
        verify_cuda_compiled(bad, log=lambda *a: None)


@needs_nvcc
def test_classifier_head_with_two_labels_is_tensorized(quantized_factory, tmp_path):
    """N=2 (the label head) and a batch-only M: the tensor-core tile pads both to 16."""
    qm, _ = quantized_factory("BertForSequenceClassification")
    manifest, _ = _compile(qm, tmp_path / "out")
    check_cuda_build(tmp_path / "out", manifest, n_layers=2)


# -- the PTX inspection itself (no build) --------------------------------------------------------
_PTX = """
.version 9.0
.target sm_75
.address_size 64
.func (.param .b32 func_retval0) helper(.param .b32 helper_param_0);
.visible .entry fused_linear_requantize_kernel(
	.param .u64 fused_linear_requantize_kernel_param_0
)
.maxntid 128, 1, 1
{
	.reg .b32 %r<10>;
	.reg .f32 %f<3>;
	ld.param.u64 %rd1, [fused_linear_requantize_kernel_param_0];
	cvt.rn.f32.s32 %f1, %r1;
	@%p1 bra $L__BB0_2;
$L__BB0_2:
	mad.lo.s32 %r3, %r1, %r2, %r3;
	ret;
}
.visible .entry fused_pv_matmul_requantize1_kernel(
	.param .u64 p0
)
{
	.reg .b32 %r<10>;
	dp4a.u32.s32 %r1, %r2, %r3, %r4;
	ret;
}
.visible .entry qk_matmul_kernel(
	.param .u64 p0
)
{
	{ // inline asm block
	wmma.mma.sync.aligned.row.col.m16n16k16.s32.s8.s8.s32 {%r1, %r2}, {%r3}, {%r4}, {%r5, %r6};
	}
	ret;
}
.visible .entry int_softmax_kernel(
	.param .u64 p0
)
{
	ex2.approx.ftz.f32 %f1, %f2;
	add.rn.f64 %fd1, %fd2, %fd3;
	max.s64 %rd1, %rd2, %rd3;
	ret;
}
.func (.param .b32 func_retval0) helper(.param .b32 helper_param_0)
{
	mul.lo.s32 %r1, %r1, %r1;
	ret;
}
"""


def test_ptx_inspection_finds_float_and_untensorized_matmuls():
    from ibert_tvm.passes.verify import PtxReport

    ks = {k.name: k for k in ptx_kernels(_PTX)}
    assert set(ks) == {"fused_linear_requantize_kernel", "fused_pv_matmul_requantize1_kernel", "qk_matmul_kernel",
                       "int_softmax_kernel", "helper"}  # the prototype of `helper` is not a second function
    lin, pv, qk, sm = (ks[n] for n in ("fused_linear_requantize_kernel", "fused_pv_matmul_requantize1_kernel",
                                       "qk_matmul_kernel", "int_softmax_kernel"))
    assert dict(lin.float_ops) == {"cvt.rn.f32.s32": 1, ".f32": 1} and lin.int8_matmul_unit is None
    assert lin.ops["bra"] == 1  # predicated instructions are counted by their opcode
    assert pv.int8_matmul_unit == "dp4a" and pv.dp4a == 1 and not pv.float_ops
    assert qk.int8_matmul_unit == "tensor cores (wmma)" and qk.wmma_int8 == 1
    assert dict(sm.float_ops) == {"ex2.approx.ftz.f32": 1, "add.rn.f64": 1} and not sm.is_int8_matmul
    assert ks["helper"].kind == "func" and not ks["helper"].float_ops
    rep = PtxReport("sm_75", list(ks.values()), "0" * 64)
    assert rep.untensorized() == ["fused_linear_requantize_kernel"]
    assert rep.float_ops == 4 and not rep.ok
    assert "NOT TENSORIZED" in rep.format()


def test_matmul_kernel_names():
    for name in ("fused_linear_requantize_kernel", "fused_linear1_requantize2_int_gelu1_kernel", "qk_matmul_kernel",
                 "fused_pv_matmul_requantize3_kernel", "fused_linear2_residual_add_kernel"):
        assert INT8_MATMUL_KERNEL.search(name), name
    for name in ("int_softmax_kernel", "int_layernorm4_kernel", "fused_mean_pool_requantize4_kernel_1",
                 "embedding_sum_kernel", "transpose2_kernel", "reshape_kernel"):
        assert not INT8_MATMUL_KERNEL.search(name), name


# -- the schedule on single TE workloads (no nvcc) -----------------------------------------------
def _te_func(kind: str):
    from tvm import te, tirx

    from ibert_tvm.op.int_matmul import batch_matmul_te, linear_te

    i64 = lambda v: tirx.IntImm("int64", v)  # noqa: E731 - Relax emits int64 shapes
    b, s = tirx.Var("batch", "int64"), tirx.Var("seq", "int64")
    if kind == "linear":
        x = te.placeholder((b, s, i64(64)), "int8", name="x")
        w = te.placeholder((i64(2), i64(64)), "int8", name="w")
        args = [x, w, linear_te(x, w)]
    elif kind == "pv":
        p = te.placeholder((b, i64(4), s, s), "uint8", name="p")
        v = te.placeholder((b, i64(4), i64(8), s), "int8", name="v")
        args = [p, v, batch_matmul_te(p, v, max_k=128)]
    else:
        x = te.placeholder((b, s, i64(8)), "int32", name="x")
        args = [x, te.compute(x.shape, lambda *i: x(*i) >> 1, name="shift")]
    return te.create_prim_func(args, index_dtype_override="int64")


@pytest.mark.parametrize("kind, expect", [("linear", "wmma"), ("pv", "dp4a"), ("elementwise", None)])
def test_schedule_picks_tensor_cores_for_int8_and_dp4a_for_uint8(kind, expect):
    from tvm.s_tir import Schedule

    from ibert_tvm.schedules.cuda_t4 import MATMUL_KIND_ATTR, schedule_matmul_func

    func = _te_func(kind)
    new, got = schedule_matmul_func(func)
    assert got == expect
    if expect is None:
        assert new is func
        return
    assert new.attrs[MATMUL_KIND_ATTR] == expect and new.attrs["tirx.is_scheduled"]
    text = new.script()
    assert ("tvm_mma_sync" in text) == (expect == "wmma")
    assert ("__dp4a" in text) == (expect == "dp4a")
    assert "float" not in text
    Schedule(new)  # still a well-formed schedulable PrimFunc


def test_dp4a_fallback_when_tensor_cores_are_not_wanted():
    from ibert_tvm.schedules.cuda_t4 import schedule_matmul_func

    new, got = schedule_matmul_func(_te_func("linear"), prefer="dp4a")
    assert got == "dp4a" and "__dp4a" in new.script()


# -- the real MiniLM (slow) ----------------------------------------------------------------------
@pytest.mark.slow
@needs_nvcc
def test_minilm_cuda_t4(tmp_path):
    """``ibert-tvm calibrate default -o q`` then ``compile q --target cuda-t4``."""
    from ibert_tvm.cli import main

    _require_nvcc()
    q, out = tmp_path / "q", tmp_path / "out-cuda"
    assert main(["calibrate", "default", "-o", str(q)]) == 0
    assert main(["compile", str(q), "-o", str(out), "--target", "cuda-t4"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    rep = check_cuda_build(out, manifest, n_layers=6)
    print("\n" + rep.format())
    assert len(rep.matmul_kernels()) >= 6
