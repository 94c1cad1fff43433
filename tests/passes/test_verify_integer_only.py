"""Tests for the "no float" verifier (ibert_tvm.passes.verify, and its VerifyIntegerOnly pass).

Clean integer modules must pass at Relax/TIR level and after tvm.compile; each planted kind of
float (cast, constant, exp, float buffer, float arithmetic in compiled code) must be flagged
with the right kind and a `where` naming its function.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax, te
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op, spec
from tvm.script import tirx as T

from ibert_tvm.errors import FloatFoundError, IBertTVMError
from ibert_tvm.passes.verify import (
    FP16_HELPERS,
    Finding,
    Report,
    find_float,
    find_float_in_cuda_source,
    find_float_in_executable,
    find_float_in_llvm_ir,
    is_float_dtype,
    report_for,
    verify_integer_only,
)
from ibert_tvm.passes.verify_integer_only import VerifyIntegerOnly

LLVM = tvm.target.Target({"kind": "llvm", "num-cores": 2})


# ------------------------------------------------------------------------------------------
# builders
# ------------------------------------------------------------------------------------------


def _requant_te(y, m, s):
    return te.compute(
        y.shape,
        lambda i, j: ((y[i, j].astype("int64") * m + (1 << (s - 1))) >> s).astype("int8"),
        name="requant",
    )


class _Int8Linear(nn.Module):
    def __init__(self):
        self.w = nn.Parameter((16, 32), dtype="int8")

    def forward(self, x: nn.Tensor):
        y = op.matmul(x, op.permute_dims(self.w), out_dtype="int32")
        return op.tensor_expr_op(_requant_te, "requant", [y, 1234567, 30])


@pytest.fixture(scope="module")
def int_mod():
    mod, _ = _Int8Linear().export_tvm(spec={"forward": {"x": spec.Tensor(["b", 32], "int8")}})
    return mod


@pytest.fixture(scope="module")
def int_exe(int_mod):
    return tvm.compile(int_mod, target=LLVM)


def _relax_func(param_dtype, body, shape=(4, 8)):
    """One Relax function `main(x)`; `body(bb, x)` emits bindings and returns the output."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, param_dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(body(bb, x))
        bb.emit_func_output(out)
    return bb.get()


def _only(findings, kind):
    return [f for f in findings if f.kind == kind]


# ------------------------------------------------------------------------------------------
# TVMScript PrimFuncs
# ------------------------------------------------------------------------------------------


@T.prim_func(s_tir=True)
def int_requant(A: T.Buffer((16,), "int32"), B: T.Buffer((16,), "int8")):
    for i in range(16):
        with T.sblock("requant"):
            vi = T.axis.spatial(16, i)
            B[vi] = T.Cast(
                "int8",
                T.max(
                    T.min((T.Cast("int64", A[vi]) * T.int64(1234567) + T.int64(1 << 29)) >> T.int64(30), T.int64(127)),
                    T.int64(-128),
                ),
            )


@T.prim_func(s_tir=True)
def tir_float_cast(A: T.Buffer((16,), "int32"), B: T.Buffer((16,), "int32")):
    for i in range(16):
        with T.sblock("via_float"):
            vi = T.axis.spatial(16, i)
            B[vi] = T.Cast("int32", T.Cast("float32", A[vi]))


@T.prim_func(s_tir=True)
def tir_float_imm(A: T.Buffer((16,), "int32"), B: T.Buffer((16,), "int32")):
    for i in range(16):
        with T.sblock("scale"):
            vi = T.axis.spatial(16, i)
            B[vi] = T.if_then_else(T.float32(1.5) > T.float32(0), A[vi], A[vi] + 1)


@T.prim_func(s_tir=True)
def tir_exp(A: T.Buffer((16,), "float32"), B: T.Buffer((16,), "float32")):
    for i in range(16):
        with T.sblock("gelu"):
            vi = T.axis.spatial(16, i)
            B[vi] = T.exp(A[vi])


@T.prim_func(s_tir=True)
def tir_float_buffer(A: T.Buffer((16,), "int32"), B: T.Buffer((16,), "int32")):
    scratch = T.alloc_buffer((16,), "float16")
    for i in range(16):
        with T.sblock("copy"):
            vi = T.axis.spatial(16, i)
            B[vi] = A[vi]


# ------------------------------------------------------------------------------------------
# clean modules
# ------------------------------------------------------------------------------------------


def test_clean_int8_matmul_requant_relax_and_tir(int_mod):
    assert find_float(int_mod) == []
    rep = verify_integer_only(int_mod)
    assert isinstance(rep, Report)
    assert rep.float_ops == 0 and rep.findings == []
    assert rep.format().splitlines()[-1] == "float ops: 0"
    assert {"int8", "int32"} <= set(rep.dtypes)
    assert not any(is_float_dtype(d) for d in rep.dtypes)
    assert rep.ops["relax.matmul"] == 1 and rep.ops["prim_func"] == 1


def test_clean_after_legalize_and_as_a_pass(int_mod):
    legal = relax.transform.LegalizeOps()(int_mod)
    rep = verify_integer_only(legal, what="legalized module")
    assert rep.ops["prim_func"] >= 3  # matmul, transpose, requant
    assert rep.format().endswith("float ops: 0")
    out = tvm.transform.Sequential([VerifyIntegerOnly()])(legal)
    assert out.same_as(legal)


def test_clean_tvmscript_primfunc():
    assert find_float(int_requant) == []
    rep = verify_integer_only(tvm.IRModule({"int_requant": int_requant}))
    assert rep.dtypes == {"int32": 1, "int8": 1}
    assert rep.format().endswith("\nfloat ops: 0")


def test_clean_compiled_llvm_and_fp16_helper_allowlist(int_exe):
    llvm_mods = [m for m in int_exe.mod.imports if m.kind == "llvm"]
    assert llvm_mods
    ll = llvm_mods[0].inspect_source("ll")
    # TVM defines the fp16 helpers even in a pure-int module ...
    for helper in FP16_HELPERS:
        assert f"@{helper}(" in ll
    # ... and they are not findings
    assert find_float_in_executable(int_exe) == []
    rep = verify_integer_only(int_exe, what="executable")
    assert rep.ops["llvm.allowlisted_fp16_helper"] == 2
    assert rep.ops["llvm.function"] >= 2
    assert rep.format().splitlines()[-1] == "float ops: 0"


# ------------------------------------------------------------------------------------------
# planted float, Relax level
# ------------------------------------------------------------------------------------------


def test_relax_astype_float_is_a_cast():
    mod = _relax_func("int8", lambda bb, x: bb.emit(relax.op.astype(bb.emit(relax.op.astype(x, "float32")), "int8")))
    fs = find_float(mod)
    casts = _only(fs, "cast")
    assert [f.where for f in casts] == ["relax:main binding lv", "relax:main binding lv1"]
    assert "int8 -> float32" in casts[0].detail
    assert any(f.kind == "dtype" and "'lv'" in f.detail for f in fs)
    with pytest.raises(FloatFoundError):
        verify_integer_only(mod)


def test_relax_float_constant():
    mod = _relax_func("int32", lambda bb, x: bb.emit(relax.op.add(x, relax.op.astype(relax.const(1.5), "int32"))))
    consts = _only(find_float(mod), "constant")
    assert len(consts) == 1
    assert consts[0].where.startswith("relax:main binding")
    assert "float32 constant" in consts[0].detail


def test_relax_exp_on_float_tensor():
    mod = _relax_func("float32", lambda bb, x: bb.emit(relax.op.exp(x)))
    fs = find_float(mod)
    assert any(f.kind == "intrinsic" and "relax.exp" in f.detail and f.where == "relax:main binding lv" for f in fs)
    assert Finding("relax:main param x", "dtype", "var 'x' has dtype float32") in fs


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_relax_other_float_widths_in_a_tuple(dtype):
    def body(bb, x):
        f = bb.emit(relax.op.astype(x, dtype))
        return bb.emit(relax.Tuple([x, f]))

    fs = find_float(_relax_func("int8", body))
    assert any(f.kind == "dtype" and f.where == "relax:main binding lv1" and dtype in f.detail for f in fs)


# ------------------------------------------------------------------------------------------
# planted float, TIR level
# ------------------------------------------------------------------------------------------


def test_tir_cast():
    fs = find_float(tvm.IRModule({"tir_float_cast": tir_float_cast}))
    casts = _only(fs, "cast")
    assert {f.where for f in casts} == {"tir:tir_float_cast block 'via_float'"}
    assert any("int32 -> float32" in f.detail for f in casts)
    assert any("float32 -> int32" in f.detail for f in casts)


def test_tir_float_imm():
    fs = find_float(tvm.IRModule({"tir_float_imm": tir_float_imm}))
    consts = _only(fs, "constant")
    assert consts and consts[0].where == "tir:tir_float_imm block 'scale'"
    assert "1.5" in consts[0].detail


def test_tir_exp_and_float_param_buffers():
    fs = find_float(tvm.IRModule({"tir_exp": tir_exp}))
    assert Finding("tir:tir_exp block 'gelu'", "intrinsic", "float intrinsic tirx.exp") in fs
    assert Finding("tir:tir_exp", "dtype", "buffer 'A' has dtype float32") in fs
    assert Finding("tir:tir_exp", "dtype", "buffer 'B' has dtype float32") in fs


def test_tir_allocated_float_buffer():
    fs = find_float(tvm.IRModule({"tir_float_buffer": tir_float_buffer}))
    assert len(fs) == 1
    assert fs[0].kind == "dtype" and fs[0].where.startswith("tir:tir_float_buffer")
    assert fs[0].detail == "buffer 'scratch' has dtype float16"
    rep = report_for(tir_float_buffer)
    assert rep.dtypes["float16"] == 1 and rep.float_ops == 1


def test_call_tir_into_float_primfunc_is_flagged_on_both_sides(int_mod):
    mod = int_mod.with_attr("dummy", 1)  # a copy we may extend
    mod["tir_exp"] = tir_exp
    fs = find_float(mod)
    assert any(f.where.startswith("tir:tir_exp") for f in fs)
    assert not any(f.where.startswith(("relax:forward", "tir:requant")) for f in fs)


# ------------------------------------------------------------------------------------------
# planted float, compiled level
# ------------------------------------------------------------------------------------------


def test_compiled_float_arithmetic_is_flagged():
    def body(bb, x):
        f = bb.emit(relax.op.astype(x, "float32"))
        g = bb.emit(relax.op.multiply(f, relax.const(np.full((4, 8), 1.5, "float32"))))
        return bb.emit(relax.op.astype(g, "int32"))

    ex = tvm.compile(_relax_func("int32", body), target=LLVM)
    fs = find_float_in_executable(ex)
    llvm = _only(fs, "llvm")
    mul = [f for f in llvm if "multiply" in f.where]
    assert mul and mul[0].where.startswith("llvm:") and "fmul" in mul[0].detail
    assert any("sitofp" in f.detail for f in llvm)  # int -> float cast kernel
    assert any("fptosi" in f.detail for f in llvm)  # float -> int cast kernel
    assert any(f.where.startswith("vm:constant pool") and "float32" in f.detail for f in fs)
    with pytest.raises(FloatFoundError) as err:
        verify_integer_only(ex, what="executable")
    assert "executable is not integer-only" in str(err.value)
    assert isinstance(err.value, IBertTVMError)


_SYNTHETIC_LL = r"""
; ModuleID = 'synthetic'
@float_names = internal constant [6 x i8] c"float\00"
@table = internal constant [2 x float] [float 1.0, float 2.0]

define internal fastcc void @int_kernel(ptr %float_ptr, i32 %n) {
entry:
  %half_way = add i32 %n, 1 ; comment mentioning float and fmul
  call void @helper_float_named(ptr %float_ptr)
  ret void
}

define internal fastcc i16 @sneaky(float %x) {
entry:
  %h = call half @__truncsfhf2(float %x)
  %r = bitcast half %h to i16
  ret i16 %r
}

define internal i32 @vec(<16 x i32> %v) {
  %f = sitofp <16 x i32> %v to <16 x float>
  %e = call <16 x float> @llvm.exp.v16f32(<16 x float> %f)
  ret i32 0
}

define weak dso_local half @__truncsfhf2(float %a0) local_unnamed_addr #5 section ".text.tvm.fp16.conv" {
  %v0 = bitcast float %a0 to i32
  ret half 0xH0000
}

define weak dso_local float @__extendhfsf2(half %a0) local_unnamed_addr #5 section ".text.tvm.fp16.conv" {
  ret float 0.0
}

define weak float @__extendhfsf2_lookalike(half %a0) {
  ret float 0.0
}
"""


def test_llvm_scanner_synthetic():
    fs, stats = find_float_in_llvm_ir(_SYNTHETIC_LL)
    where = {f.where: f for f in fs}
    assert stats["llvm.allowlisted_fp16_helper"] == 2
    assert "llvm:int_kernel" not in where  # names/comments containing "float" are not float
    assert "llvm:__truncsfhf2" not in where and "llvm:__extendhfsf2" not in where
    assert "calls fp16 helper @__truncsfhf2" in where["llvm:sneaky"].detail
    assert "sitofp" in where["llvm:vec"].detail and "@llvm.exp.v16f32" in where["llvm:vec"].detail
    assert "llvm:__extendhfsf2_lookalike" in where  # not in the allowlist
    assert "llvm:global @table" in where and "llvm:global @float_names" not in where
    assert all(f.kind == "llvm" for f in fs)


_SYNTHETIC_CUDA = r"""
// float helpers in the prelude are not kernels
__device__ float not_a_kernel(float x) { return x; }
extern "C" __global__ void __launch_bounds__(64) int_k(int* __restrict__ out_float, int* __restrict__ x);
extern "C" __global__ void __launch_bounds__(64) int_k(int* __restrict__ out_float, int* __restrict__ x) {
  /* expf(x) in a comment */ const char* s = "float";
  out_float[threadIdx.x] = (x[threadIdx.x] * 3) >> 1;
}
extern "C" __global__ void scaled(int* __restrict__ y, int* __restrict__ x) {
  y[threadIdx.x] = __float2int_rn(((float)x[threadIdx.x]) * 1.500000e+00f);
}
"""


def test_cuda_scanner_synthetic():
    fs, stats = find_float_in_cuda_source(_SYNTHETIC_CUDA)
    assert stats["cuda.kernel"] == 2
    assert [f.where for f in fs] == ["cuda:scaled"]
    d = fs[0].detail
    assert "float x1" in d and "__float2int_rn" in d and "literal 1.500000e+00f" in d


def _ewise(dtype, float_op):
    if float_op:
        return _relax_func(dtype, lambda bb, x: bb.emit(relax.op.exp(x)), shape=(64, 64))
    return _relax_func(
        dtype,
        lambda bb, x: bb.emit(relax.op.right_shift(relax.op.add(x, x), relax.const(1, dtype))),
        shape=(64, 64),
    )


def test_cuda_compiled_kernels_without_gpu():
    target = tvm.target.Target("nvidia/nvidia-t4", host={"kind": "llvm"})
    ex_int = tvm.compile(_ewise("int32", False), target=target)
    rep = verify_integer_only(ex_int, what="cuda executable")
    assert rep.ops["cuda.kernel"] == 1 and rep.ops["module:cuda"] == 1
    assert rep.format().endswith("float ops: 0")

    ex_f = tvm.compile(_ewise("float32", True), target=target)
    fs = find_float_in_executable(ex_f)
    cuda = _only(fs, "cuda")
    assert len(cuda) == 1 and cuda[0].where.startswith("cuda:") and "exp" in cuda[0].where
    assert "expf" in cuda[0].detail and "float" in cuda[0].detail


# ------------------------------------------------------------------------------------------
# API behaviour
# ------------------------------------------------------------------------------------------


def test_pass_raises_float_found_error():
    mod = _relax_func("float32", lambda bb, x: bb.emit(relax.op.exp(x)))
    with pytest.raises(FloatFoundError, match="not integer-only"):
        tvm.transform.Sequential([VerifyIntegerOnly(what="lowered module")])(mod)


def test_error_lists_first_20_and_the_total():
    def body(bb, x):
        v = x
        for _ in range(25):
            v = bb.emit(relax.op.astype(bb.emit(relax.op.astype(v, "float32")), "int8"))
        return v

    mod = _relax_func("int8", body)
    rep = report_for(mod)  # never raises
    n = rep.float_ops
    assert n > 20 and len(rep.findings) == n
    assert rep.format().splitlines()[-1] == f"float ops: {n}"
    with pytest.raises(FloatFoundError) as err:
        verify_integer_only(mod)
    msg = str(err.value)
    assert f"{n} float finding(s)" in msg
    assert msg.count("\n  [") == 20 and f"and {n - 20} more" in msg


@pytest.mark.parametrize(
    "dtype, expected",
    [
        ("float16", True), ("float32", True), ("float64", True), ("bfloat16", True),
        ("float8_e4m3fn", True), ("float8_e5m2", True), ("e4m3_float8", True),
        ("float32x4", True), ("int8", False), ("uint8", False), ("int32", False),
        ("int64", False), ("bool", False), ("handle", False), (None, False),
    ],
)
def test_is_float_dtype(dtype, expected):
    assert is_float_dtype(dtype) is expected


def test_rejects_unknown_objects():
    with pytest.raises(TypeError):
        find_float(42)
