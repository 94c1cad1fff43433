"""What counts as floating point, shared by every level of the verifier.

* :func:`is_float_dtype`: a dtype string (TVM's, numpy's, the VM's constant pool);
* :data:`FLOAT_FUNC_RE`: the names of C/libm/CUDA/LLVM float math functions, whether a TIR
  ``call_extern`` names them (:mod:`.relax_tir`), LLVM IR calls them (:mod:`.llvm_ir`) or a CUDA
  kernel does (:mod:`.cuda_source`);
* :data:`FP16_HELPERS`: the two fp16 conversion helpers TVM emits into every LLVM module, even
  a pure int8 one (section :data:`FP16_HELPER_SECTION`). They are runtime support, never called
  by integer code: the LLVM IR level allowlists them by exact name *and* section and reports any
  function that calls them; the machine-code level gives them no exemption and reports anything
  that reaches them.
"""

from __future__ import annotations

import re
from typing import Any

_FP8_RE = re.compile(r"^e\d+m\d+")


def is_float_dtype(dtype: Any) -> bool:
    """True for any floating-point dtype string: float16/32/64, bfloat16, float8_e4m3fn,
    e4m3_float8, e5m2, float4_e2m1fn, vector forms (``float32x4``), custom[...] types."""
    if dtype is None:
        return False
    s = str(dtype).strip().lower()
    if not s:
        return False
    return (
        s.startswith(("float", "bfloat", "custom["))
        or "float" in s
        or bool(_FP8_RE.match(s))
    )


# C/libm/CUDA/LLVM function names that are float math.
FLOAT_FUNC_RE = re.compile(
    r"^(?:llvm\.[\w.]*\.(?:f16|f32|f64|f80|f128|bf16|v\d+f\d+|v\d+bf16|nxv\d+f\d+)"
    r"|llvm\.(?:exp|exp2|exp10|log|log2|log10|sqrt|pow|powi|sin|cos|tan|fabs|floor|ceil|round"
    r"|roundeven|rint|nearbyint|trunc|fma|fmuladd|minnum|maxnum|minimum|maximum|copysign)\b.*"
    r"|_{0,2}(?:exp|exp2|exp10|expm1|log|log2|log10|log1p|sqrt|rsqrt|cbrt|erf|erfc|tanh|sin|cos"
    r"|tan|asin|acos|atan|atan2|sinh|cosh|asinh|acosh|atanh|pow|hypot|fabs|floor|ceil|round"
    r"|rint|lrint|llrint|lround|llround|nearbyint|trunc|fmod|remainder|fma|fmin|fmax|ldexp"
    r"|frexp|modf|copysign|nextafter|sigmoid|fdivide|frcp|fsqrt)(?:f|l|h|f16|f32|f64|_rn|_rz)?"
    r"|(?:h|h2)(?:exp|exp2|log|log2|sqrt|rsqrt|tanh|sin|cos|floor|ceil|rint|trunc))$"
)

FP16_HELPERS = frozenset({"__truncsfhf2", "__extendhfsf2"})
FP16_HELPER_SECTION = ".text.tvm.fp16.conv"

