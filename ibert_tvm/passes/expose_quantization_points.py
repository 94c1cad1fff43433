"""ExposeQuantizationPoints: ``main`` also returns the per-channel range of named points.

Where it sits: on the float module, after
:mod:`~ibert_tvm.passes.find_quantization_points` (it calls it to locate the names), for
calibration only. The module it returns is compiled with TVM's default float pipeline and run
in the Relax VM (:func:`ibert_tvm.frontend.calibrate.calibrate_ranges`); it is never part of
a compiled integer model.

Preconditions: the preconditions of FindQuantizationPoints; ``main`` has an
``attention_mask`` input (int ``[batch, seq]``, nonzero = real token) and one dataflow block;
every name given is a point's name or alias.

Result: ``main`` keeps its parameters and returns ``(output, (r_0, ..., r_{n-1}))``: ``output``
as before, ``r_i`` float32 ``[C_i]`` the max of ``|x_i|`` per channel (last axis) of point
``names[i]`` over the batch's real tokens; rows of padding are excluded (``where``, so a padded
row never contributes, whatever it holds). A point whose rows are sequences (``[batch, C]``,
the classification head) has no padding rows and is reduced over all of them. This is what
``quantization.calibrate.collect_ranges`` observes through torch hooks. The names are recorded
in order as the function attribute ``quantization_points``. Everything else is unchanged.

Errors: an unknown name or a missing ``attention_mask`` raises ``IBertTVMError`` inside the
pass, which reaches the caller as itself (``ibert_tvm.passes`` registers it with TVM's FFI).
"""

from __future__ import annotations

from typing import Sequence

import tvm
from tvm import relax

from ..errors import IBertTVMError
from .find_quantization_points import find_quantization_points


@tvm.transform.module_pass(opt_level=0, name="ExposeQuantizationPoints")
class ExposeQuantizationPoints:  # pylint: disable=too-few-public-methods
    """Make ``main`` return the per-channel max |x| over real tokens of each named point."""

    def __init__(self, names: Sequence[str]):
        self.names = list(names)

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        by_alias = {a: p for p in find_quantization_points(mod) for a in p.aliases}
        missing = [n for n in self.names if n not in by_alias]
        if missing:
            raise IBertTVMError(f"ExposeQuantizationPoints: no quantization point named {missing}")
        func = mod["main"]
        mask = next((p for p in func.params if p.name == "attention_mask"), None)
        if mask is None or len(func.body.blocks) != 1:
            raise IBertTVMError("ExposeQuantizationPoints: main needs an attention_mask input and one dataflow block")
        bb = relax.BlockBuilder()
        with bb.function("main", list(func.params), attrs=dict(func.attrs), pure=func.is_pure):
            with bb.dataflow():
                for binding in func.body.blocks[0].bindings:
                    bb.emit_normalized(binding)
                keep = bb.emit(relax.op.not_equal(mask, relax.const(0, mask.ty.dtype)))  # bool [batch, seq]
                ranges = [bb.emit(_channel_absmax(bb, by_alias[n].var, keep)) for n in self.names]
                out = bb.emit_output(relax.Tuple([func.body.body, relax.Tuple(ranges)]))
            bb.emit_func_output(out)
        result = mod.clone()
        result["main"] = bb.get()["main"].with_attr("quantization_points", self.names)
        return result


def _channel_absmax(bb: relax.BlockBuilder, x: relax.Var, keep: relax.Var) -> relax.Expr:
    """``max |x|`` over every axis but the last, real-token rows only.

    ``x``: float32 ``[batch, seq, C]``, ``[batch * seq, C]`` (token rows) or ``[batch, C]``
    (sequence rows); ``keep``: bool ``[batch, seq]``. -> float32 ``[C]``."""
    op = relax.op
    shape, batch = x.ty.shape, keep.ty.shape[0]
    mag = bb.emit(op.abs(x))
    if x.ty.ndim == 2 and isinstance(shape[0], tvm.tirx.Var) and shape[0].same_as(batch):
        return op.max(mag, axis=[0])
    if x.ty.ndim == 3:
        rows = op.expand_dims(keep, axis=[-1])  # [batch, seq, 1]
    elif x.ty.ndim == 2:
        rows = op.reshape(keep, relax.ShapeExpr([shape[0], 1]))  # [batch * seq, 1]
    else:
        raise IBertTVMError(f"ExposeQuantizationPoints: point {x.name} has shape {x.ty.shape}; "
                            "expected [batch, seq, C], [batch * seq, C] or [batch, C]")
    masked = bb.emit(op.where(bb.emit(rows), mag, relax.const(0.0, x.ty.dtype)))
    return op.max(masked, axis=list(range(x.ty.ndim - 1)))
