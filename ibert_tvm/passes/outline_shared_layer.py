"""OutlineSharedLayer: a layer applied L times with one parameter set becomes one Relax function
called L times.

Where it sits::

    LowerToInteger -> CanonicalizeViews -> EliminateFloat -> OutlineSharedLayer (shared layers only)

Preconditions
-------------
* ``main`` as :class:`~ibert_tvm.passes.lower_to_integer.LowerToInteger` leaves it (integer, one
  dataflow block) for a plan whose layers share one parameter set (ALBERT,
  ``ModelPlan.shared_layers``): every application reads the same ``main`` parameters, so the
  bindings of application k are those of application 0 with other activation variables.
* ``end``: the name of a parameter that only the last binding of each application reads (the
  shared layer's output LayerNorm, ``encoder.layer.0.output.LayerNorm.g``).

What it does
------------
It cuts the bindings into the L applications (each ends at a binding reading ``end``; they are
consecutive and of one length), makes application 0 a function ``shared_layer(h, *params)`` (``h``:
the application's one activation input; ``params``: the ``main`` parameters it reads, in first-use
order) and replaces every application by a call of it. Application k must be application 0 with
other variables (``tvm_ffi.structural_equal`` of the two outlined functions); anything else raises
``IBertTVMError``: the result computes what ``main`` did, the same kernels on the same tensors.

Invariant
---------
``main`` reads each shared parameter only through the L calls; its other bindings are unchanged.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import relax

from ..errors import IBertTVMError
from .find_quantization_points import vars_read

FUNC_NAME = "shared_layer"


@tvm.transform.module_pass(opt_level=0, name="OutlineSharedLayer")
class OutlineSharedLayer:  # pylint: disable=too-few-public-methods
    def __init__(self, end: str, applications: int):
        self.end, self.applications = end, applications

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        main = mod["main"]
        if len(main.body.blocks) != 1:
            raise IBertTVMError("OutlineSharedLayer: main needs one dataflow block")
        bindings = list(main.body.blocks[0].bindings)
        params = set(main.params)
        end = [i for i, b in enumerate(bindings) if any(str(v.name) == self.end and v in params
                                                         for v in vars_read(b.value))]
        if len(end) != self.applications:
            raise IBertTVMError(f"OutlineSharedLayer: {len(end)} bindings read {self.end}, expected one per "
                                f"application ({self.applications})")
        n = end[1] - end[0] if len(end) > 1 else None
        if n is None or any(b - a != n for a, b in zip(end, end[1:])) or end[0] + 1 < n:
            raise IBertTVMError("OutlineSharedLayer: the applications are not consecutive runs of one length")
        segments = [bindings[e - n + 1: e + 1] for e in end]
        funcs = [_outline(seg, params, i) for i, seg in enumerate(segments)]
        for i, (f, _, _) in enumerate(funcs[1:], 1):
            if not tvm_ffi.structural_equal(f, funcs[0][0], map_free_vars=True):
                raise IBertTVMError(f"OutlineSharedLayer: application {i} is not application 0 on other inputs")
        layer = relax.utils.copy_with_new_vars(funcs[0][0])
        bb = relax.BlockBuilder(mod)
        gv = bb.add_func(layer, FUNC_NAME)
        calls = {e: (h, ps) for e, (_, h, ps) in zip(end, funcs)}
        cut = {i for e in end for i in range(e - n + 1, e + 1)}
        new = []
        for i, b in enumerate(bindings):
            if i in calls:
                h, ps = calls[i]
                new.append(relax.VarBinding(b.var, relax.Call(gv, [h, *ps])))
            elif i not in cut:
                new.append(b)
        body = relax.SeqExpr([relax.DataflowBlock(new)], main.body.body)
        out = bb.get()
        out["main"] = relax.Function(main.params, body, main.ret_ty, main.is_pure, main.attrs)
        return relax.transform.Normalize()(out)


def _outline(seg, params: set, k: int):
    """-> (the function of one application, its activation input, the ``main`` params it reads)."""
    defined = {b.var for b in seg}
    free: list = []
    for b in seg:
        for v in vars_read(b.value):
            if v not in defined and v not in free:
                free.append(v)
    acts = [v for v in free if v not in params]
    if len(acts) != 1:
        raise IBertTVMError(f"OutlineSharedLayer: application {k} reads {len(acts)} activations from outside, "
                            f"expected one (the layer input): {[str(v.name) for v in acts]}")
    ps = [v for v in free if v in params]
    h = relax.Var("h", acts[0].ty)
    out = relax.Var("out", seg[-1].var.ty)
    rebind = [relax.VarBinding(acts[0], h)] if isinstance(acts[0], relax.DataflowVar) else None
    if rebind is None:
        raise IBertTVMError(f"OutlineSharedLayer: the input of application {k} is not a dataflow variable")
    block = relax.DataflowBlock([*rebind, *seg, relax.VarBinding(out, seg[-1].var)])
    # main's own parameter variables as the function's (copy_with_new_vars gives the kept one fresh ones)
    func = relax.Function([h, *ps], relax.SeqExpr([block], out), out.ty, True)
    return func, acts[0], ps
