"""EliminateFloat: drop the dead float left by LowerToInteger; any live float is a compile error.

Where it sits (issue 12, step 2)::

    import_model -> FoldLayerNorm -> LowerToInteger(plan) -> EliminateFloat -> VerifyIntegerOnly
                                                             ^ this pass

Preconditions: the output of :class:`~ibert_tvm.passes.lower_to_integer.LowerToInteger`. Its
activations are integer; what float remains was copied from the import because it does not
depend on any weight: the additive attention mask (``astype`` to bool, ``index_tensor``,
``bitwise_and``, ``full``, ``where`` of ``0.0`` / ``-FLT_MAX``), which ``IntSoftmax`` replaces by
reading ``attention_mask`` itself, and the integer shape arithmetic that fed it (``arange``,
``expand_dims``, ``greater_equal``).

What it does: ``relax.transform.DeadCodeElimination`` on ``main`` (pure bindings no output
depends on, and PrimFuncs nothing calls), then a scan of what is left.

Invariant: no binding, parameter, constant or return value of any Relax function in the module
has a float dtype. A float binding that survives (a float computation something integer still
reads, e.g. a position table computed in float) raises ``IBertTVMError`` naming its op and
binding: a float island is never left for the verifier to find after lowering. (The verifier,
``VerifyIntegerOnly``, still checks everything again after TVM's own lowering.)
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.ir import GenericConst, Op
from tvm.relax.expr_functor import PyExprVisitor, visitor

from ..errors import IBertTVMError


@tvm.transform.module_pass(opt_level=0, name="EliminateFloat")
class EliminateFloat:  # pylint: disable=too-few-public-methods
    """Dead-code-eliminate ``main`` and refuse any float value left in a Relax function."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        mod = relax.transform.DeadCodeElimination(["main"])(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                for p in func.params:
                    if _is_float(p.ty):
                        raise IBertTVMError(f"EliminateFloat: {gv.name_hint} has the float parameter {p.name}")
                _FloatFinder(gv.name_hint).visit_expr(func)
        return mod


def _is_float(ty) -> bool:
    """Whether a Relax type is (or holds) a float tensor."""
    dtype = getattr(ty, "dtype", None)
    if dtype is not None and str(dtype).startswith(("float", "bfloat")):
        return True
    return any(_is_float(f) for f in getattr(ty, "fields", []) or [])


@visitor
class _FloatFinder(PyExprVisitor):
    def __init__(self, func_name: str):
        self.func_name = func_name

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = binding.value
        op = value.op.name if isinstance(value, relax.Call) and isinstance(value.op, Op) else type(value).__name__
        consts = [a for a in getattr(value, "args", []) if isinstance(a, GenericConst) and _is_float(a.ty)]
        if _is_float(binding.var.ty) or consts:
            text = str(value)
            raise IBertTVMError(
                f"EliminateFloat: {self.func_name} still computes in float after lowering: {op} at binding "
                f"{binding.var.name} = {text if len(text) < 200 else text[:200] + '...'} (an integer value reads "
                "it, so it cannot be dropped; lower it or compute it in integers)")
        super().visit_var_binding_(binding)
