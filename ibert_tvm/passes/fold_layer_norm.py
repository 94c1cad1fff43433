"""FoldLayerNorm: a LayerNorm written out in elementary ops becomes one ``nn.layer_norm``.

Where it sits: right after the import (:func:`ibert_tvm.frontend.importer.import_model`),
before :mod:`~ibert_tvm.passes.find_quantization_points`, which recognises a LayerNorm only as
``nn.layer_norm``. Most models arrive with ``nn.layer_norm`` already (``torch.nn.LayerNorm``
survives the export); I-BERT's float ``IntLayerNorm`` computes it by hand::

    mean = x.mean(-1, keepdim=True); y = x - mean
    x = y / sqrt(eps + mean(y ** 2, -1, keepdim=True)); x * weight + bias

Preconditions: float Relax, normalised over the last axis, ``eps`` a scalar constant,
``weight`` and ``bias`` of shape ``[H]``.

Result: every match of the chain above (``add`` operands in either order) is replaced by
``R.nn.layer_norm(x, weight, bias, axes=[-1], epsilon=eps)``; everything else is unchanged. The
rewrite is exact in real arithmetic; in float32 the result differs from the chain by rounding
(~1e-6 relative).
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard


@tvm.transform.module_pass(opt_level=0, name="FoldLayerNorm")
class FoldLayerNorm:  # pylint: disable=too-few-public-methods
    """Fold the elementary-op LayerNorm chain into ``nn.layer_norm`` in every Relax function."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        pattern, parts = _pattern()
        out = mod.clone()
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                out[gv] = rewrite_call(pattern, lambda call, m: _rewrite(call, m, parts), func)
        return out


def _either(op, a, b):
    return is_op(op)(a, b) | is_op(op)(b, a)


def _pattern():
    x, weight, bias, eps, two = wildcard(), wildcard(), wildcard(), is_const(), is_const()
    mean = is_op("relax.mean")(x)
    y = is_op("relax.subtract")(x, mean)
    var = is_op("relax.mean")(is_op("relax.power")(y, two))
    norm = is_op("relax.divide")(y, is_op("relax.sqrt")(_either("relax.add", var, eps)))
    out = _either("relax.add", _either("relax.multiply", norm, weight), bias)
    return out, dict(x=x, weight=weight, bias=bias, eps=eps, two=two, mean=mean, var=var)


def _last_axis_mean(call) -> bool:
    axis = call.attrs.axis
    ndim = call.args[0].ty.ndim
    return bool(call.attrs.keepdims) and axis is not None and len(axis) == 1 and int(axis[0]) in (-1, ndim - 1)


def _static_dim(ty, axis):
    """``ty.shape[axis]`` as an int, or None when unknown or symbolic."""
    shape = getattr(ty, "shape", None)
    if shape is None or not isinstance(shape[axis], tvm.tirx.IntImm):
        return None
    return int(shape[axis])


def _rewrite(call, m, parts):
    x, weight, bias = m[parts["x"]], m[parts["weight"]], m[parts["bias"]]
    two, eps = m[parts["two"]].value.numpy(), m[parts["eps"]].value.numpy()
    h = _static_dim(x.ty, -1)
    ok = (
        two.size == 1 and float(two.reshape(())) == 2.0 and eps.size == 1
        and _last_axis_mean(m[parts["mean"]]) and _last_axis_mean(m[parts["var"]])
        and h is not None and all(p.ty.ndim == 1 and _static_dim(p.ty, 0) == h for p in (weight, bias))
    )
    if not ok:
        return call
    return relax.op.nn.layer_norm(x, weight, bias, axes=[-1], epsilon=float(eps.reshape(())))
