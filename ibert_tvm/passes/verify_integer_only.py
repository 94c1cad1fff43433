"""The "no float" verifier: prove that a module contains no floating point at all.

What it checks
--------------
* **Relax** (every ``relax.Function`` of an ``IRModule``): the type (dtype) of every function
  parameter, every binding's variable and value (``relax.TensorType``, tuples recursively,
  ``T.handle``/pointer element types), ``relax.Constant`` data dtypes, ``FloatImm`` values
  (e.g. in ``R.prim_value``), ``R.astype`` to or from a float dtype, and calls to float ops by
  name (``exp``, ``sqrt``, ``erf``, ``tanh``, ``nn.softmax``, ``nn.layer_norm`` ...; ops such
  as ``divide``/``power``/``floor`` count when they touch a float dtype).
* **TIR** (every ``tirx.PrimFunc``): parameter and allocated buffer dtypes, the dtype of every
  expression (vars, loads, arithmetic, calls), ``FloatImm`` constants, ``Cast`` to or from float,
  and float intrinsics (``tirx.exp``, ``sqrt``, ``erf``, ``pow``, ``fabs``, ``floor`` on floats,
  ``call_extern("expf", ...)``, ``llvm.*.f32`` ...). Findings name the enclosing sblock.
* **Compiled output** (what ``tvm.compile`` returns, or a runtime module): the LLVM IR of every
  ``llvm`` module (float types, float instructions, ``llvm.*.f32``-style intrinsics, float
  globals; per function), the source of every ``cuda`` module (``__global__`` kernels: float
  types, float math functions and conversions, float literals), and the Relax VM constant pool
  (float dtype entries). A module kind whose code cannot be inspected (e.g. a loaded ``.so``)
  is reported as ``opaque``: the verifier fails closed rather than assume it is clean.

TVM always emits two weak fp16 conversion helpers, ``__truncsfhf2`` and ``__extendhfsf2``
(section ``.text.tvm.fp16.conv``), into every LLVM module, even a pure int8 one. They are runtime
support, never called by integer code: they are allowlisted by exact name *and* section, and any
*other* function that calls them is reported.

Where it sits in the pipeline
-----------------------------
It runs on the Relax ``IRModule`` after the project's lowering passes (integer ops, call_tir to
PrimFuncs, before/after legalization and fusion), as :class:`VerifyIntegerOnly` (a module pass
that returns the module unchanged) or :func:`verify_integer_only`; and again on what
``tvm.compile`` produced (:func:`verify_integer_only` / :func:`find_float_in_executable` on the
``VMExecutable``), so that nothing the TVM backend adds on the way to machine code escapes.

Invariant
---------
If :func:`verify_integer_only` returns (``Report.float_ops == 0``), no Relax value, constant,
cast or op, no TIR buffer, expression, constant, cast or intrinsic, no LLVM function body or
global (other than the two allowlisted, uncalled fp16 helpers) and no CUDA kernel in the
checked object has a floating-point type (float*/bfloat*/float8 e4m3/e5m2 ...) or performs a
floating-point operation. Scales may be floats in *Python* at compile time; none reaches the
compiled data path.

Finding kinds: ``dtype``, ``constant``, ``cast``, ``intrinsic`` (IR level); ``llvm``, ``cuda``,
``opaque`` (compiled level; VM constant-pool entries use ``dtype``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import tvm
import tvm_ffi
from tvm import relax, tirx

from ..errors import FloatFoundError

# Let FloatFoundError cross the FFI boundary intact (a pass raising inside
# tvm.transform.Sequential otherwise surfaces as a plain RuntimeError).
try:
    tvm_ffi.error.register_error("FloatFoundError", FloatFoundError)
except Exception:  # pragma: no cover - already registered / older tvm_ffi
    pass

__all__ = [
    "Finding",
    "Report",
    "find_float",
    "find_float_in_executable",
    "find_float_in_llvm_ir",
    "find_float_in_cuda_source",
    "is_float_dtype",
    "report_for",
    "verify_integer_only",
    "VerifyIntegerOnly",
    "FP16_HELPERS",
    "FP16_HELPER_SECTION",
]

KINDS = ("dtype", "constant", "cast", "intrinsic", "llvm", "cuda", "opaque")
MAX_LISTED = 20

# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One piece of floating point: where it is, what kind, and a human-readable detail."""

    where: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.where}: {self.detail}"


@dataclass
class Report:
    """What the verifier saw: dtype and op histograms plus the float findings (if any)."""

    what: str = "module"
    dtypes: dict[str, int] = field(default_factory=dict)
    ops: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    float_ops: int = 0

    @property
    def ok(self) -> bool:
        return self.float_ops == 0

    def format(self) -> str:
        lines = [f"integer-only check of {self.what}"]
        lines.append("dtypes:")
        if self.dtypes:
            w = max(len(k) for k in self.dtypes)
            for k, n in sorted(self.dtypes.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"  {k:<{w}}  {n:>7}")
        else:
            lines.append("  (none)")
        lines.append("ops:")
        if self.ops:
            w = max(len(k) for k in self.ops)
            for k, n in sorted(self.ops.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"  {k:<{w}}  {n:>7}")
        else:
            lines.append("  (none)")
        if self.findings:
            lines.append("findings:")
            for f in self.findings[:MAX_LISTED]:
                lines.append(f"  {f}")
            if len(self.findings) > MAX_LISTED:
                lines.append(f"  ... and {len(self.findings) - MAX_LISTED} more")
        lines.append(f"float ops: {self.float_ops}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# dtype helpers
# --------------------------------------------------------------------------------------------

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


def _dtypes_of_type(ty: Any, out: list[str] | None = None) -> list[str]:
    """All element dtypes mentioned by a type (tensor, buffer, prim, tuple, pointer)."""
    if out is None:
        out = []
    if ty is None:
        return out
    if isinstance(ty, tvm.ir.type.FuncType):
        return out  # a callee's signature: its own params/bindings are checked where defined
    if isinstance(ty, tvm.ir.TupleType):
        for f in ty.fields:
            _dtypes_of_type(f, out)
        return out
    if isinstance(ty, tvm.ir.PrimType):
        s = str(ty.dtype)
        if s and s != "void":
            out.append(s)
        return out
    elem = getattr(ty, "element_type", None)  # PointerType
    if elem is not None:
        return _dtypes_of_type(elem, out)
    if hasattr(ty, "dtype"):  # TensorType, BufferType, DTensorType-like
        try:
            d = ty.dtype
        except Exception:  # pragma: no cover - defensive
            return out
        if d is None:
            return out
        if isinstance(d, tvm.ir.Type):
            return _dtypes_of_type(d, out)
        s = str(d)
        if s and s != "void":
            out.append(s)
        return out
    inner = getattr(ty, "tensor_type", None)
    if inner is not None:
        return _dtypes_of_type(inner, out)
    return out


def _ty(node: Any) -> Any:
    try:
        return node.ty
    except Exception:
        return None


def _floats(dtypes: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for d in dtypes:
        if is_float_dtype(d) and d not in seen:
            seen.append(d)
    return seen


# --------------------------------------------------------------------------------------------
# Op tables
# --------------------------------------------------------------------------------------------

# Relax ops that are float by nature, whatever the declared dtype.
RELAX_FLOAT_OPS = frozenset(
    "relax." + n
    for n in (
        "exp log log_add_exp sqrt rsqrt erf tanh sigmoid sin cos tan asin acos atan atan2 "
        "sinh cosh asinh acosh atanh isnan isinf isfinite std dequantize quantize "
        "hamming_window multinomial_from_uniform "
        "nn.softmax nn.log_softmax nn.gelu nn.gelu_tanh nn.silu nn.selu nn.softplus "
        "nn.leakyrelu nn.prelu nn.layer_norm nn.rms_norm nn.group_norm nn.instance_norm "
        "nn.batch_norm nn.attention nn.attention_bias nn.attention_var_len nn.dropout "
        "nn.cross_entropy_with_logits nn.nll_loss nn.avg_pool1d nn.avg_pool2d nn.avg_pool3d "
        "nn.adaptive_avg_pool1d nn.adaptive_avg_pool2d nn.adaptive_avg_pool3d "
        "image.resize2d image.resize3d image.grid_sample image.affine_grid"
    ).split()
)
# Relax ops that are float only when a float dtype goes in or comes out.
RELAX_FLOAT_IF_FLOAT = frozenset(
    "relax." + n
    for n in "divide power floor ceil round trunc mean variance ewise_fma sign".split()
)

# TIR intrinsics that are float by nature (op name without the "tirx." prefix).
TIR_FLOAT_INTRINSICS = frozenset(
    (
        "exp exp2 exp10 expm1 log log2 log10 log1p sqrt rsqrt erf tanh sigmoid sin cos tan "
        "asin acos atan atan2 sinh cosh asinh acosh atanh hypot ldexp copysign nextafter fmod "
        "isnan isinf isfinite infinity fabs pow "
        "tile.exp tile.exp2 tile.log2 tile.sqrt tile.fdiv tile.reciprocal tile.silu "
        "nki.activation nki.activation_reduce nki.reciprocal"
    ).split()
)
TIR_FLOAT_IF_FLOAT = frozenset("floor ceil round nearbyint trunc fma".split())
_EXTERN_CALL_OPS = frozenset(
    "tirx." + n
    for n in "call_extern call_pure_extern call_llvm_intrin call_llvm_pure_intrin".split()
)
# C/libm/CUDA/LLVM function names that are float math.
_FLOAT_FUNC_RE = re.compile(
    r"^(?:llvm\.[\w.]*\.(?:f16|f32|f64|f80|f128|bf16|v\d+f\d+|v\d+bf16|nxv\d+f\d+)"
    r"|llvm\.(?:exp|exp2|exp10|log|log2|log10|sqrt|pow|powi|sin|cos|tan|fabs|floor|ceil|round"
    r"|roundeven|rint|nearbyint|trunc|fma|fmuladd|minnum|maxnum|minimum|maximum|copysign)\b.*"
    r"|_{0,2}(?:exp|exp2|exp10|expm1|log|log2|log10|log1p|sqrt|rsqrt|cbrt|erf|erfc|tanh|sin|cos"
    r"|tan|asin|acos|atan|atan2|sinh|cosh|asinh|acosh|atanh|pow|hypot|fabs|floor|ceil|round"
    r"|rint|lrint|llrint|lround|llround|nearbyint|trunc|fmod|remainder|fma|fmin|fmax|ldexp"
    r"|frexp|modf|copysign|nextafter|sigmoid|fdivide|frcp|fsqrt)(?:f|l|h|f16|f32|f64|_rn|_rz)?"
    r"|(?:h|h2)(?:exp|exp2|log|log2|sqrt|rsqrt|tanh|sin|cos|floor|ceil|rint|trunc))$"
)

# --------------------------------------------------------------------------------------------
# IR walk (Relax + TIR)
# --------------------------------------------------------------------------------------------

_SBLOCK_TYPES: tuple = ()
try:  # TVM 0.27: schedulable blocks live in tvm.s_tir
    from tvm.s_tir.stmt import SBlock as _SBlock

    _SBLOCK_TYPES = (_SBlock,)
except Exception:  # pragma: no cover
    pass

_BufferType = getattr(getattr(tirx, "buffer", None), "BufferType", None)
_VarTypes = tuple(t for t in (getattr(tvm.ir, "Var", None), getattr(tirx, "Var", None)) if t)
_CallType = tvm.ir.expr.Call
_FloatImm = tvm.ir.prim.expr.FloatImm
_Cast = tvm.ir.prim.expr.Cast
_Constant = tvm.ir.expr.Constant
_StringImm = getattr(tvm.ir.expr, "StringImm", None)
_BindingTypes = tuple(
    t for t in (getattr(relax, "VarBinding", None), getattr(relax, "MatchCast", None)) if t
)


def _name_of(node: Any, default: str = "?") -> str:
    for attr in ("name", "name_hint"):
        try:
            v = getattr(node, attr)
        except Exception:
            continue
        if v is not None:
            return str(v)
    return default


def _op_name(call: Any) -> str | None:
    op = getattr(call, "op", None)
    if isinstance(op, tvm.ir.Op):
        return str(op.name)
    return None


def _func_name(gv: Any, func: Any) -> str:
    if gv is not None:
        return _name_of(gv)
    try:
        attrs = func.attrs
        if attrs is not None and "global_symbol" in attrs:
            return str(attrs["global_symbol"])
    except Exception:
        pass
    return "<anonymous>"


class _Walker:
    """Walks one function with tvm_ffi.structural_visit, tracking a context stack for `where`."""

    def __init__(self, report_dtypes: Counter, report_ops: Counter):
        self.findings: list[Finding] = []
        self._keys: set = set()
        self.dtypes = report_dtypes
        self.ops = report_ops
        self._ctx: list[str] = []
        self._seen_vars: set[int] = set()
        self._is_tir = False

    # -- bookkeeping -----------------------------------------------------------------------
    @property
    def where(self) -> str:
        # the function, then only the innermost block / binding
        if len(self._ctx) <= 1:
            return self._ctx[0] if self._ctx else "?"
        return f"{self._ctx[0]} {self._ctx[-1]}"

    def _add(self, kind: str, detail: str, key: Any = None) -> None:
        k = (self.where, kind, key if key is not None else detail)
        if k in self._keys:
            return
        self._keys.add(k)
        self.findings.append(Finding(self.where, kind, detail))

    # -- entry -----------------------------------------------------------------------------
    def walk_function(self, name: str, func: Any) -> None:
        self._seen_vars = set()
        if isinstance(func, tirx.PrimFunc):
            self._is_tir = True
            self._ctx = [f"tir:{name}"]
            self.ops["prim_func"] += 1
        else:
            self._is_tir = False
            self._ctx = [f"relax:{name}"]
            self.ops["relax_function"] += 1
            for p in getattr(func, "params", []) or []:
                self._ctx.append(f"param {_name_of(p)}")
                self._check_var(p, count=True)
                self._ctx.pop()
        tvm_ffi.structural_visit(func, self._visit)

    # -- per-node --------------------------------------------------------------------------
    def _visit(self, node: Any, visitor: Any) -> None:
        if not isinstance(node, tvm_ffi.Object):
            return
        if isinstance(node, tvm.ir.Type):
            for d in _floats(_dtypes_of_type(node)):
                self._add("dtype", f"{type(node).__name__} of dtype {d}", key=("expr", d))
            return  # types are leaves for us: their dtypes were just read
        if _VarTypes and isinstance(node, _VarTypes):
            ty = _ty(node)
            is_buffer = _BufferType is not None and isinstance(ty, _BufferType)
            # TIR buffers are counted once each; Relax vars are counted at their definition.
            self._check_var(node, count=self._is_tir and is_buffer)
            return  # a var is a leaf: its type was just read, its definition is visited elsewhere
        pushed = False
        if _SBLOCK_TYPES and isinstance(node, _SBLOCK_TYPES):
            self._ctx.append(f"block '{_name_of(node)}'")
            pushed = True
        elif _BindingTypes and isinstance(node, _BindingTypes):
            self._ctx.append(f"binding {_name_of(node.var)}")
            pushed = True
            self._check_var(node.var, count=True)
        elif isinstance(node, (relax.Function, tirx.PrimFunc)) and self._ctx and len(self._ctx) > 1:
            # a nested (local) function: keep the binding context, mark it
            self._ctx.append(f"{self._ctx[-1]} (local function)")
            pushed = True
        try:
            self._check_node(node)
            visitor.default_visit(node)
        finally:
            if pushed:
                self._ctx.pop()

    def _check_var(self, var: Any, *, count: bool) -> None:
        key = var.id_
        if key in self._seen_vars:
            return
        self._seen_vars.add(key)
        ty = _ty(var)
        dts = _dtypes_of_type(ty)
        is_buffer = _BufferType is not None and isinstance(ty, _BufferType)
        if count and (not self._is_tir or is_buffer):
            for d in dts:
                self.dtypes[d] += 1
        for d in _floats(dts):
            what = "buffer" if is_buffer else "var"
            self._add("dtype", f"{what} '{_name_of(var)}' has dtype {d}", key=("var", key, d))

    def _check_node(self, node: Any) -> None:
        if isinstance(node, _FloatImm):
            self._add("constant", f"float constant {node.value} ({_ty(node)})")
            return
        if isinstance(node, _Constant):
            self._check_constant(node)
            return
        if isinstance(node, _Cast):
            src = _floats(_dtypes_of_type(_ty(node.value)))
            dst = _floats(_dtypes_of_type(_ty(node)))
            if src or dst:
                s = ",".join(_dtypes_of_type(_ty(node.value))) or "?"
                t = ",".join(_dtypes_of_type(_ty(node))) or "?"
                self._add("cast", f"Cast {s} -> {t}")
        elif isinstance(node, _CallType):
            self._check_call(node)
        # every expression: its own dtype
        ty = _ty(node)
        if ty is not None and not isinstance(node, (tirx.PrimFunc, relax.Function)):
            for d in _floats(_dtypes_of_type(ty)):
                self._add("dtype", f"{type(node).__name__} of dtype {d}", key=("expr", d))

    def _check_constant(self, node: Any) -> None:
        value = getattr(node, "value", None)
        dtype = getattr(value, "dtype", None)
        dts = [str(dtype)] if dtype is not None else _dtypes_of_type(_ty(node))
        if _StringImm is not None and isinstance(node, _StringImm):
            return
        for d in _floats(dts):
            shape = getattr(value, "shape", None)
            shape_s = f" shape {tuple(shape)}" if shape is not None else ""
            self._add("constant", f"{d} constant{shape_s}", key=("const", node.id_))

    def _check_call(self, call: Any) -> None:
        name = _op_name(call)
        if name is None:
            return
        self.ops[name] += 1
        if name.startswith("relax."):
            if name == "relax.astype":
                target = str(getattr(call.attrs, "dtype", ""))
                src = ",".join(_dtypes_of_type(_ty(call.args[0]))) if call.args else "?"
                if is_float_dtype(target) or _floats(src.split(",")):
                    self._add("cast", f"astype {src} -> {target}")
            elif name in RELAX_FLOAT_OPS:
                self._add("intrinsic", f"float op {name}")
            elif name in RELAX_FLOAT_IF_FLOAT and self._touches_float(call):
                self._add("intrinsic", f"{name} on float")
            return
        short = name[len("tirx.") :] if name.startswith("tirx.") else name
        if short in TIR_FLOAT_INTRINSICS:
            self._add("intrinsic", f"float intrinsic {name}")
        elif short in TIR_FLOAT_IF_FLOAT and self._touches_float(call):
            self._add("intrinsic", f"{name} on float")
        elif name in _EXTERN_CALL_OPS and call.args:
            first = call.args[0]
            fname = getattr(first, "value", None)
            if isinstance(fname, str) and _FLOAT_FUNC_RE.match(fname):
                self._add("intrinsic", f"{name}(\"{fname}\")")

    @staticmethod
    def _touches_float(call: Any) -> bool:
        if _floats(_dtypes_of_type(_ty(call))):
            return True
        for a in call.args:
            if _floats(_dtypes_of_type(_ty(a))):
                return True
        return False


def _functions(obj: Any) -> list[tuple[str, Any]]:
    if isinstance(obj, tvm.IRModule):
        items = sorted(obj.functions.items(), key=lambda kv: _name_of(kv[0]))
        return [(_name_of(gv), f) for gv, f in items]
    if isinstance(obj, (relax.Function, tirx.PrimFunc)):
        return [(_func_name(None, obj), obj)]
    raise TypeError(
        "expected a tvm.IRModule, relax.Function or tirx.PrimFunc, "
        f"got {type(obj).__module__}.{type(obj).__name__}"
    )


def _scan_ir(obj: Any) -> tuple[list[Finding], Counter, Counter]:
    dtypes: Counter = Counter()
    ops: Counter = Counter()
    findings: list[Finding] = []
    for name, func in _functions(obj):
        if isinstance(func, (relax.Function, tirx.PrimFunc)):
            w = _Walker(dtypes, ops)
            w.walk_function(name, func)
            findings.extend(w.findings)
        else:  # e.g. relax.ExternFunc: no body to inspect here
            ops[f"opaque:{type(func).__name__}"] += 1
    return findings, dtypes, ops


# --------------------------------------------------------------------------------------------
# LLVM IR
# --------------------------------------------------------------------------------------------

FP16_HELPERS = frozenset({"__truncsfhf2", "__extendhfsf2"})
FP16_HELPER_SECTION = ".text.tvm.fp16.conv"

_LL_DEFINE_RE = re.compile(r'^define\b.*?@("(?:[^"\\]|\\.)*"|[-\w.$]+)\s*\(')
_LL_GLOBAL_RE = re.compile(r'^@("(?:[^"\\]|\\.)*"|[-\w.$]+)\s*=')
_LL_STRING_RE = re.compile(r'c?"(?:[^"\\]|\\.)*"')
_LL_NAME_RE = re.compile(r'[%@!#$][-\w.$]*')
_LL_FLOAT_TOKENS = (
    "float double half bfloat fp128 x86_fp80 ppc_fp128 "
    "fadd fsub fmul fdiv frem fneg fcmp fptosi fptoui sitofp uitofp fpext fptrunc"
).split()
_LL_TOKEN_RE = re.compile(r"\b(" + "|".join(_LL_FLOAT_TOKENS) + r")\b")
_LL_CALLEE_RE = re.compile(r'@("(?:[^"\\]|\\.)*"|[-\w.$]+)')


def _strip_ll_comment(line: str) -> str:
    # ';' starts a comment unless inside a string
    out, in_str = [], False
    for ch in line:
        if ch == '"':
            in_str = not in_str
        elif ch == ";" and not in_str:
            break
        out.append(ch)
    return "".join(out)


def _ll_float_tokens(text: str) -> Counter:
    text = _LL_STRING_RE.sub(" ", text)
    text = _LL_NAME_RE.sub(" ", text)
    return Counter(_LL_TOKEN_RE.findall(text))


def find_float_in_llvm_ir(ll: str, *, module: str = "llvm") -> tuple[list[Finding], Counter]:
    """Scan LLVM IR text: one finding per function (or global) that has float in it.

    Returns ``(findings, stats)``; stats counts defined functions, globals and allowlisted
    helpers. ``module`` prefixes ``where`` when several modules are scanned.
    """
    findings: list[Finding] = []
    stats: Counter = Counter()
    lines = ll.splitlines()
    i = 0
    prefix = f"{module}:" if module else ""
    while i < len(lines):
        raw = lines[i]
        m = _LL_DEFINE_RE.match(raw)
        if m:
            name = m.group(1).strip('"')
            body = [raw]
            j = i + 1
            if not raw.rstrip().endswith("}"):
                while j < len(lines) and lines[j].rstrip() != "}":
                    body.append(lines[j])
                    j += 1
                j += 1
            i = j
            if name in FP16_HELPERS and f'section "{FP16_HELPER_SECTION}"' in raw:
                stats["llvm.allowlisted_fp16_helper"] += 1
                continue
            stats["llvm.function"] += 1
            code = [_strip_ll_comment(b) for b in body]
            tokens: Counter = Counter()
            intrins: Counter = Counter()
            helper_calls: Counter = Counter()
            first_line = None
            for k, c in enumerate(code):
                t = _ll_float_tokens(c)
                callees = [x.strip('"') for x in _LL_CALLEE_RE.findall(c)]
                if k > 0:
                    for callee in callees:
                        if callee in FP16_HELPERS:
                            helper_calls[callee] += 1
                        elif _FLOAT_FUNC_RE.match(callee) and callee.startswith("llvm."):
                            intrins[callee] += 1
                if (t or helper_calls or intrins) and first_line is None and k > 0:
                    first_line = c.strip()
                tokens.update(t)
            # the signature itself (k == 0) may carry float params/returns
            if tokens or intrins or helper_calls:
                parts = [f"{tok} x{n}" for tok, n in tokens.most_common()]
                parts += [f"@{n} x{c}" for n, c in intrins.most_common()]
                parts += [f"calls fp16 helper @{n} x{c}" for n, c in helper_calls.most_common()]
                detail = ", ".join(parts)
                if first_line:
                    detail += f"; first: {first_line[:120]}"
                findings.append(Finding(f"{prefix}{name}", "llvm", detail))
            continue
        g = _LL_GLOBAL_RE.match(raw)
        if g:
            stats["llvm.global"] += 1
            t = _ll_float_tokens(_strip_ll_comment(raw))
            if t:
                parts = ", ".join(f"{tok} x{n}" for tok, n in t.most_common())
                findings.append(
                    Finding(f"{prefix}global @{g.group(1).strip(chr(34))}", "llvm", parts)
                )
        i += 1
    return findings, stats


# --------------------------------------------------------------------------------------------
# CUDA source
# --------------------------------------------------------------------------------------------

_C_COMMENT_RE = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_C_STRING_RE = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'')
_C_WORD_RE = re.compile(r"\b[A-Za-z_]\w*\b")
_C_FLOAT_LIT_RE = re.compile(
    r"(?<![\w.])(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?[fFlL]?(?![\w.])"
    r"|(?<![\w.])\d+[eE][+-]?\d+[fFlL]?(?![\w.])"
)
_CUDA_FLOAT_WORDS = frozenset(
    (
        "float double half half2 __half __half2 nv_bfloat16 nv_bfloat162 __nv_bfloat16 "
        "__nv_bfloat162 bfloat16 float1 float2 float3 float4 double1 double2 double3 double4 "
        "__int_as_float __uint_as_float __float_as_int __float_as_uint __longlong_as_double "
        "__double_as_longlong __fdividef __saturatef"
    ).split()
)
_CUDA_FLOAT_PREFIX_RE = re.compile(
    r"^(?:__float2|__double2|__half2|__int2float|__int2double|__int2half|__uint2float"
    r"|__uint2double|__uint2half|__ll2float|__ll2double|__ll2half|__ull2float|__ull2double"
    r"|__ull2half|__short2half|__ushort2half|__nv_fp8|__nv_fp6|__nv_fp4|__nv_bfloat"
    r"|__f(?:add|sub|mul|div|rcp|sqrt|rsqrt|ma)\w*_r[nzdu]|__d(?:add|sub|mul|div|rcp|sqrt|ma)\w*_r[nzdu]"
    r"|__(?:exp|log|sin|cos|tan|pow)\w*f)"
)


def _cuda_kernels(src: str) -> list[tuple[str, str]]:
    """(name, signature+body) of every ``__global__`` function definition."""
    out = []
    pos = 0
    while True:
        k = src.find("__global__", pos)
        if k < 0:
            break
        brace = src.find("{", k)
        semi = src.find(";", k)
        if brace < 0:
            break
        if 0 <= semi < brace:  # a declaration
            pos = semi + 1
            continue
        depth, e = 0, brace
        while e < len(src):
            if src[e] == "{":
                depth += 1
            elif src[e] == "}":
                depth -= 1
                if depth == 0:
                    break
            e += 1
        sig = src[k:brace]
        names = [n for n in re.findall(r"(\w+)\s*\(", sig) if n != "__launch_bounds__"]
        out.append((names[0] if names else "?", src[k : e + 1]))
        pos = e + 1
    return out


def find_float_in_cuda_source(src: str, *, module: str = "cuda") -> tuple[list[Finding], Counter]:
    """Scan CUDA C source: one finding per ``__global__`` kernel that uses float."""
    findings: list[Finding] = []
    stats: Counter = Counter()
    clean = _C_COMMENT_RE.sub(" ", src)
    clean = _C_STRING_RE.sub(lambda m: '""' if m.group(0).startswith('"') else "''", clean)
    prefix = f"{module}:" if module else ""
    for name, code in _cuda_kernels(clean):
        stats["cuda.kernel"] += 1
        hits: Counter = Counter()
        for w in _C_WORD_RE.findall(code):
            if w in _CUDA_FLOAT_WORDS or _CUDA_FLOAT_PREFIX_RE.match(w) or _FLOAT_FUNC_RE.match(w):
                hits[w] += 1
        for lit in _C_FLOAT_LIT_RE.findall(code):
            hits[f"literal {lit}"] += 1
        if hits:
            findings.append(
                Finding(
                    f"{prefix}{name}",
                    "cuda",
                    ", ".join(f"{t} x{n}" for t, n in hits.most_common()),
                )
            )
    return findings, stats


# --------------------------------------------------------------------------------------------
# Compiled executables
# --------------------------------------------------------------------------------------------

_DTYPE_ENTRY_RE = re.compile(r"^(?:u?int\d+|bool|float\d+|bfloat\d+|float8\w*|e\d+m\d+\w*)(?:x\d+)?$")


def _split_top_level(s: str) -> list[str]:
    parts, depth, cur, in_str = [], 0, [], False
    for ch in s:
        if ch == '"':
            in_str = not in_str
        elif not in_str:
            if ch in "[(":
                depth += 1
            elif ch in "])":
                depth -= 1
            elif ch == "," and depth == 0:
                parts.append("".join(cur).strip())
                cur = []
                continue
        cur.append(ch)
    if cur:
        parts.append("".join(cur).strip())
    return parts


def _scan_vm_stats(stats_text: str, dtypes: Counter) -> list[Finding]:
    findings = []
    for line in stats_text.splitlines():
        line = line.strip()
        if not line.startswith("Constant pool"):
            continue
        lb, rb = line.find("["), line.rfind("]")
        if lb < 0 or rb < lb:
            continue
        for idx, entry in enumerate(_split_top_level(line[lb + 1 : rb])):
            if _DTYPE_ENTRY_RE.match(entry):
                dtypes[entry] += 1
                if is_float_dtype(entry):
                    findings.append(
                        Finding(
                            f"vm:constant pool[{idx}]",
                            "dtype",
                            f"the VM allocates or checks a {entry} tensor",
                        )
                    )
    return findings


def _runtime_modules(root: Any) -> list[Any]:
    out, stack, seen = [], [root], set()
    while stack:
        m = stack.pop()
        key = m.id_ if hasattr(m, "id_") else id(m)
        if key in seen:
            continue
        seen.add(key)
        out.append(m)
        try:
            imps = list(m.imports)
        except Exception:
            imps = []
        stack.extend(reversed(imps))
    return out


def _scan_executable(ex: Any) -> tuple[list[Finding], Counter, Counter]:
    dtypes: Counter = Counter()
    ops: Counter = Counter()
    findings: list[Finding] = []
    root = ex.mod if hasattr(ex, "mod") and not isinstance(ex, tvm.runtime.Module) else ex
    if not isinstance(root, tvm.runtime.Module):
        raise TypeError(
            "expected what tvm.compile returned (a VMExecutable) or a tvm.runtime.Module, "
            f"got {type(ex).__module__}.{type(ex).__name__}"
        )
    for m in _runtime_modules(root):
        kind = str(m.kind)
        ops[f"module:{kind}"] += 1
        if kind == "relax.VMExecutable":
            try:
                text = m.get_function("stats")() if m.implements_function("stats") else ""
            except Exception:
                text = ""
            findings.extend(_scan_vm_stats(str(text), dtypes))
            continue
        if kind == "llvm":
            try:
                src = m.inspect_source("ll")
            except Exception as e:  # pragma: no cover - defensive
                findings.append(Finding("llvm", "opaque", f"no LLVM IR available: {e}"))
                continue
            f, st = find_float_in_llvm_ir(src)
            findings.extend(f)
            ops.update(st)
            continue
        if kind == "cuda":
            try:
                src = m.inspect_source("cuda")
            except Exception as e:  # pragma: no cover - defensive
                findings.append(Finding("cuda", "opaque", f"no CUDA source available: {e}"))
                continue
            f, st = find_float_in_cuda_source(src)
            findings.extend(f)
            ops.update(st)
            continue
        if kind in ("const_loader", "metadata"):  # constant tables; their dtypes reach kernels
            continue
        findings.append(
            Finding(
                f"module:{kind}",
                "opaque",
                f"cannot inspect a '{kind}' module for float (no source/IR scanner)",
            )
        )
    return findings, dtypes, ops


try:
    from tvm.relax.vm_build import VMExecutable as _VMExecutable
except Exception:  # pragma: no cover
    _VMExecutable = None
try:
    from tvm.runtime.executable import Executable as _RuntimeExecutable
except Exception:  # pragma: no cover
    _RuntimeExecutable = None


def _is_executable(obj: Any) -> bool:
    if isinstance(obj, tvm.runtime.Module):
        return True
    if _VMExecutable is not None and isinstance(obj, _VMExecutable):
        return True
    if _RuntimeExecutable is not None and isinstance(obj, _RuntimeExecutable):
        return True  # what tvm.compile returns for a TIR-only module
    return type(obj).__name__ in ("VMExecutable", "Executable") and hasattr(obj, "mod")


def find_float_in_executable(ex: Any) -> list[Finding]:
    """Findings in what ``tvm.compile`` returned (VMExecutable) or in a runtime module."""
    return _scan_executable(ex)[0]


def find_float(mod: Any) -> list[Finding]:
    """All float findings in an IRModule (Relax functions and PrimFuncs), a single
    relax.Function / tirx.PrimFunc, or (delegating) a compiled executable."""
    if _is_executable(mod):
        return find_float_in_executable(mod)
    return _scan_ir(mod)[0]


# --------------------------------------------------------------------------------------------
# Reports, the raising entry point, the pass
# --------------------------------------------------------------------------------------------


def report_for(mod_or_executable: Any, *, what: str = "module") -> Report:
    """The full report (histograms and findings). Never raises on float."""
    if _is_executable(mod_or_executable):
        findings, dtypes, ops = _scan_executable(mod_or_executable)
    else:
        findings, dtypes, ops = _scan_ir(mod_or_executable)
    return Report(
        what=what,
        dtypes=dict(dtypes),
        ops=dict(ops),
        findings=list(findings),
        float_ops=len(findings),
    )


def verify_integer_only(mod_or_executable: Any, *, what: str = "module") -> Report:
    """Return the report if the object is float-free; raise FloatFoundError otherwise."""
    rep = report_for(mod_or_executable, what=what)
    if rep.findings:
        shown = "\n".join(f"  {f}" for f in rep.findings[:MAX_LISTED])
        more = len(rep.findings) - MAX_LISTED
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise FloatFoundError(
            f"{what} is not integer-only: {len(rep.findings)} float finding(s)\n{shown}{tail}"
        )
    return rep


@tvm.transform.module_pass(opt_level=0, name="VerifyIntegerOnly")
class VerifyIntegerOnly:
    """Module pass: raise FloatFoundError if the IRModule has any float; else return it as is."""

    def __init__(self, what: str = "module"):
        self.what = what

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        verify_integer_only(mod, what=self.what)
        return mod
