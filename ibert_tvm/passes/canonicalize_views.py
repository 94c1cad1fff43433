"""CanonicalizeViews: undo the importer's flattening around matmuls; drop and merge no-op views.

Where it sits (issue 12, step 2), twice::

    import_model -> FoldLayerNorm -> CanonicalizeViews -> LowerToInteger -> CanonicalizeViews
                 -> EliminateFloat

``torch.export`` decomposes ``nn.Linear`` on a ``[batch, seq, K]`` input into ``view`` -> ``mm``
-> ``view``, and a 4-D ``matmul`` into ``expand`` -> ``view`` -> ``bmm`` -> ``view``; TVM's importer
keeps each step. Lowered as they stand, every linear would run on a ``[batch*seq, K]`` reshape
whose result is reshaped back before its requantization, so ``FuseOps`` could no longer fuse
the linear with the requantization, GELU or residual add that consumes it; and every
attention product would be a 3-D ``[batch*heads, ...]`` copy. This pass restores the shapes
the model was written with: it is exact (every rewrite moves or removes a view, none changes a
value) and dtype-agnostic, so it runs before ``LowerToInteger`` (on the float graph) and after it
(on the views the lowering emits, e.g. ``K^T`` of an already transposed ``K``).

Preconditions: ``main`` has one dataflow block (as the importer makes it).

Rewrites, applied binding by binding with the arguments already rewritten (so chains collapse):

=============================================================  ==================================
``astype(x, x.dtype)``, ``broadcast_to(x, x.shape)``,          ``x``
``reshape(x, x.shape)``, ``permute_dims(x, identity)``
``reshape(reshape(x, s1), s2)``                                ``reshape(x, s2)``
``permute_dims(permute_dims(x, a1), a2)``                      ``permute_dims(x, a1[a2])``
``matmul(reshape(x, [M, K]), W)``, W 2-D, x = ``[*L, *R]``      ``reshape(matmul(x', W), [M, N])``,
with M = prod(L) (L of rank >= 2), K = prod(R)                 x' = ``x`` viewed as ``[*L, K]``
``matmul(reshape(x, [P, S, d]), reshape(y, [P, d, T]))``,      ``reshape(matmul(x, y), [P, S, T])``
x and y with the same leading dims, P = their product
``add(reshape(m, s), b)`` (either order), b of rank <= 1,      ``reshape(add(m, b), s)``
the reshape keeping the last dim
``take(E, reshape(ids, [M]), axis=0)``, E 2-D                  ``reshape(take(E, ids), [M, D])``
=============================================================  ==================================

Invariant: every binding of ``main`` keeps its variable and type (a rewritten one is bound to
an equal value, or aliased); values are unchanged element for element. Aliases are then
substituted (``relax.transform.CanonicalizeBindings``) and the views nothing reads any more are
removed (``relax.transform.DeadCodeElimination``).
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx
from tvm.ir import Op
from tvm.sym import Analyzer


@tvm.transform.module_pass(opt_level=0, name="CanonicalizeViews")
class CanonicalizeViews:  # pylint: disable=too-few-public-methods
    """Sink the importer's flattening reshapes through matmuls and drop no-op views in ``main``."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        func = mod["main"]
        if len(func.body.blocks) != 1:
            return mod
        out = mod.clone()
        out["main"] = _Canon(func).run()
        out = relax.transform.CanonicalizeBindings()(out)
        return relax.transform.DeadCodeElimination(["main"])(out)


def _op(e) -> str | None:
    return e.op.name if isinstance(e, relax.Call) and isinstance(e.op, Op) else None


class _Canon:
    def __init__(self, func: relax.Function):
        self.func = func
        self.alias: dict = {}  # var -> the var it equals
        self.defn: dict = {}  # var -> its (rewritten) value
        self.an = Analyzer()
        self.bb = relax.BlockBuilder()

    def run(self) -> relax.Function:
        func, bb = self.func, self.bb
        with bb.function("main", list(func.params), dict(func.attrs) if func.attrs else None, pure=func.is_pure):
            with bb.dataflow():
                for b in func.body.blocks[0].bindings:
                    self._binding(b)
                out = bb.emit_output(self._sub(func.body.body))
            bb.emit_func_output(out)
        return bb.get()["main"]

    # -- plumbing -------------------------------------------------------------------------------
    def _sub(self, e):
        while isinstance(e, relax.Var) and e in self.alias:
            e = self.alias[e]
        return e

    def _def(self, e, op: str):
        """The value defining ``e`` when it is a call of ``op``."""
        v = self.defn.get(self._sub(e))
        return v if _op(v) == op else None

    def _emit(self, call) -> relax.Var:
        v = self.bb.emit(call)
        self.defn[v] = call
        return v

    def _binding(self, b) -> None:
        var, value = b.var, b.value
        if isinstance(value, relax.Var):
            self.alias[var] = self._sub(value)
            self.bb.emit_normalized(relax.VarBinding(var, self._sub(value)))
            return
        if isinstance(value, relax.Call):
            value = relax.Call(value.op, [self._sub(a) for a in value.args], value.attrs, value.ty_args)
            new = self._rewrite(var, value)
            if isinstance(new, relax.Var):
                self.alias[var] = new
                value = new
            elif new is not None:
                value = new
        self.defn[var] = value
        self.bb.emit_normalized(relax.VarBinding(var, self.bb.normalize(value)))

    # -- shapes ---------------------------------------------------------------------------------
    def _eq(self, a, b) -> bool:
        a, b = list(a), list(b)
        return len(a) == len(b) and all(self.an.can_prove_equal(x, y) for x, y in zip(a, b))

    def _prod(self, dims):
        p = tirx.IntImm("int64", 1)
        for d in dims:
            p = p * d
        return p

    def _merges_leading(self, src, dst, keep: int) -> bool:
        """``dst`` is ``src`` with every dim before the last ``keep`` merged into one."""
        src, dst = list(src), list(dst)
        return (len(dst) == keep + 1 and len(src) > keep + 1 and self._eq(src[-keep:], dst[-keep:])
                and self.an.can_prove_equal(self._prod(src[:-keep]), dst[0]))

    def _split_rows(self, src, dst):
        """The leading dims of ``src`` whose product is ``dst``'s rows, when the rest of ``src``
        multiplies to ``dst``'s columns (``[b, s, h, d]`` viewed as ``[b*s, h*d]`` -> ``[b, s]``)."""
        src, (rows, cols) = list(src), list(dst)
        for j in range(len(src) - 1, 0, -1):
            if (self.an.can_prove_equal(self._prod(src[:j]), rows)
                    and self.an.can_prove_equal(self._prod(src[j:]), cols)):
                return src[:j] if j > 1 else None
        return None

    @staticmethod
    def _shape(e):
        return getattr(e.ty, "shape", None)

    # -- rules ----------------------------------------------------------------------------------
    def _rewrite(self, var, call):
        op = _op(call)
        x = call.args[0] if call.args else None
        if op == "relax.astype" and str(x.ty.dtype) == str(call.attrs.dtype):
            return x
        if op == "relax.broadcast_to" and self._shape(x) is not None and self._eq(self._shape(x), var.ty.shape):
            return x
        if op == "relax.reshape":
            inner = self._def(x, "relax.reshape")
            if inner is not None:
                x = inner.args[0]
                call = relax.Call(call.op, [x, call.args[1]], call.attrs, call.ty_args)
            if self._shape(x) is not None and self._eq(self._shape(x), var.ty.shape):
                return x
            return call if inner is not None else None
        if op == "relax.permute_dims":
            return self._permute(var, call)
        if op == "relax.matmul":
            return self._matmul(var, call)
        if op == "relax.add":
            return self._add(var, call)
        if op == "relax.take":
            return self._take(var, call)
        return None

    def _permute(self, var, call):
        x = call.args[0]
        n = x.ty.ndim
        axes = list(range(n))[::-1] if call.attrs.axes is None else [int(a) for a in call.attrs.axes]
        inner = self._def(x, "relax.permute_dims")
        if inner is not None:
            a1 = (list(range(n))[::-1] if inner.attrs.axes is None else [int(a) for a in inner.attrs.axes])
            axes = [a1[a] for a in axes]
            x = inner.args[0]
        if axes == list(range(n)):
            return x
        return relax.op.permute_dims(x, axes) if inner is not None else None

    def _matmul(self, var, call):
        a, b = call.args
        dtype = call.attrs.out_dtype
        ra = self._def(a, "relax.reshape")
        if ra is None:
            return None
        x = ra.args[0]
        if b.ty.ndim == 2 and a.ty.ndim == 2:
            lead = self._split_rows(self._shape(x), a.ty.shape)
            if lead is None:
                return None
            if len(lead) + 1 != x.ty.ndim:  # [b, s, heads, d] -> [b, s, heads*d]
                x = self._emit(relax.op.reshape(x, lead + [a.ty.shape[1]]))
            m = self._emit(relax.op.matmul(x, b, out_dtype=dtype))
            return relax.op.reshape(m, var.ty.shape)
        rb = self._def(b, "relax.reshape")
        if rb is None or a.ty.ndim != 3 or b.ty.ndim != 3:
            return None
        y = rb.args[0]
        sx, sy = self._shape(x), self._shape(y)
        if (self._merges_leading(sx, a.ty.shape, 2) and self._merges_leading(sy, b.ty.shape, 2)
                and self._eq(list(sx)[:-2], list(sy)[:-2])):
            m = self._emit(relax.op.matmul(x, y, out_dtype=dtype))
            return relax.op.reshape(m, var.ty.shape)
        return None

    def _add(self, var, call):
        a, b = call.args
        for i, (r, other) in enumerate(((a, b), (b, a))):
            rr = self._def(r, "relax.reshape")
            if rr is None or other.ty.ndim > 1:
                continue
            m = rr.args[0]
            if not self._eq(list(self._shape(m))[-1:], list(var.ty.shape)[-1:]):
                continue
            args = [m, other] if i == 0 else [other, m]
            n = self._emit(relax.op.add(*args))
            return relax.op.reshape(n, var.ty.shape)
        return None

    def _take(self, var, call):
        table, idx = call.args
        rr = self._def(idx, "relax.reshape")
        if rr is None or table.ty.ndim != 2 or int(call.attrs.axis) != 0 or idx.ty.ndim != 1:
            return None
        t = self._emit(relax.Call(call.op, [table, rr.args[0]], call.attrs, call.ty_args))
        return relax.op.reshape(t, var.ty.shape)
