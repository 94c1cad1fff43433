"""The IR level of the verifier: every Relax function and TIR PrimFunc of an ``IRModule``.

What it checks
--------------
* **Relax** (every ``relax.Function``): the type (dtype) of every function parameter, every
  binding's variable and value (``relax.TensorType``, tuples recursively, ``T.handle``/pointer
  element types), ``relax.Constant`` data dtypes, ``FloatImm`` values (e.g. in
  ``R.prim_value``), ``R.astype`` to or from a float dtype, and calls to float ops by name
  (``exp``, ``sqrt``, ``erf``, ``tanh``, ``nn.softmax``, ``nn.layer_norm`` ...; ops such as
  ``divide``/``power``/``floor`` count when they touch a float dtype).
* **TIR** (every ``tirx.PrimFunc``): parameter and allocated buffer dtypes, the dtype of every
  expression (vars, loads, arithmetic, calls), ``FloatImm`` constants, ``Cast`` to or from float,
  and float intrinsics (``tirx.exp``, ``sqrt``, ``erf``, ``pow``, ``fabs``, ``floor`` on floats,
  ``call_extern("expf", ...)``, ``llvm.*.f32`` ...). Findings name the enclosing sblock.

Functions without a body to inspect (e.g. ``relax.ExternFunc``) are counted as
``opaque:<type>`` in the ops histogram; what they stand for is checked at the compiled levels.

:func:`scan_ir` returns ``(findings, dtypes, ops)``; :mod:`.check` turns that into a
:class:`~.report.Report`. Finding kinds: ``dtype``, ``constant``, ``cast``, ``intrinsic``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

import tvm
import tvm_ffi
from tvm import relax, tirx

from .floats import FLOAT_FUNC_RE, is_float_dtype
from .report import Finding


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
            if isinstance(fname, str) and FLOAT_FUNC_RE.match(fname):
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


def scan_ir(obj: Any) -> tuple[list[Finding], Counter, Counter]:
    """``(findings, dtype histogram, op histogram)`` of an IRModule, relax.Function or PrimFunc."""
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

