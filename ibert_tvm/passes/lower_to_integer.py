"""LowerToInteger: the imported float graph becomes the integer model, op plan by op plan.

Where it sits (issue 12, step 2)::

    import_model -> FoldLayerNorm -> LowerToInteger(plan) -> EliminateFloat -> VerifyIntegerOnly
                                     ^ this pass              (dead float)     (pipeline.build)

Preconditions
-------------
* ``main`` as :func:`ibert_tvm.frontend.importer.import_model` makes it, after
  :class:`~ibert_tvm.passes.fold_layer_norm.FoldLayerNorm`: token inputs first
  (``attrs["num_input"]``, int32 ``[batch, seq]``, one of them ``attention_mask``), then one float
  parameter per weight named by its HF name; one dataflow block; the op forms listed in
  :mod:`~ibert_tvm.passes.find_quantization_points` (linear = ``matmul(x, permute_dims(W))`` +
  bias ``add``; ``nn.layer_norm``; ``nn.gelu``; ``tanh``; ``nn.softmax`` of the scaled scores
  plus an additive mask; ``take`` of embedding tables).
* ``plan``: the :class:`~ibert_tvm.model.plan.ModelPlan` of the same model (its scales and
  integer tensors, from ``quantization.calibrate.calibrate``). The pass takes every constant from
  it and computes nothing numeric itself: each integer op is the plan's ``te()``.

What it does
------------
It walks ``main``'s bindings in order and gives every *activation* (a value that depends on a
weight) an integer value; weight-free bindings (shape arithmetic, the mask chain) are copied
unchanged and left for :class:`~ibert_tvm.passes.eliminate_float.EliminateFloat`. Per float op:

==============================================  ================================================
float op on activations                          integer lowering (``te()`` of the plan)
==============================================  ================================================
``take(E.weight, ids)`` (+ ``add`` of gathers)   gathers collected; materialised as one
                                                 ``EmbeddingSum`` (word/position[/token_type])
``matmul(x, permute_dims(L.weight))`` + bias     ``strategy.te`` (int8 x int8 -> int32, bias in);
                                                 the accumulator stays int32 until a consumer
                                                 needs it: then ``LinearPlan.requant`` (dyadic)
the query, key and value linears of a layer      one linear over the layer's stacked ``qkv`` tensors
(``LayerPlan.qkv``, ``ModelPlan.fused_qkv``)     (``[3H, K]``) and its requantization, emitted once
                                                 per input; each part's heads are sliced out of a
                                                 ``[.., 3 heads, d]`` view in its head transpose
``add(linear acc, skip)``                        the linear's ``ResidualAdd`` (int32, 24-bit)
``nn.layer_norm``                                ``IntLayerNorm`` (per-channel output scales
                                                 already folded into the next weight by the plan)
``nn.gelu``, ``nn.gelu_tanh``                    ``IntGELU.te_q`` (fused requantization; the tanh
                                                 form differs from erf's by < 5e-4, i-GELU's own
                                                 error is 0.018)
``tanh``                                         ``IntTanh``
``nn.relu`` (DistilBERT's classifier)            ``IntReLU`` after the dense's requantization to
                                                 the ReLU output's scale
``matmul(q, k^T)`` then ``* 1/sqrt(d)``           ``batch_matmul_te`` (int32); the scale factor is
                                                 checked against the plan's (folded in softmax)
``take(relative_attention_bias, buckets)``,      ``RelativePositionBias``: the layer's integer table
its views, ``add(scores, bias)`` (MPNet)         gathered by ``j - i`` from the plan's buckets; the
                                                 graph's float bucket chain (weight-free) is dropped
``add(scores, mask)``, ``nn.softmax``            ``IntSoftmax(scores, attention_mask)``: the mask
                                                 side must derive from ``attention_mask`` only
``matmul(probs, v)``                             ``batch_matmul_te`` + the layer's ``ctx``
                                                 requantization
views (reshape, permute_dims, broadcast_to,      the same op on the integer tensor (an int32
expand_dims, squeeze, take of one token)         accumulator is requantized first when the view
                                                 moves its channel axis)
returned ``[batch, seq, H]`` hidden state         the plan's pooling (``op.pooling``: mean, cls
(a ``*Model``)                                   or max) + the pooled requantization
==============================================  ================================================

Plans are found by the HF module path of the weights, below the base-model prefix
(``bert.``/``roberta.``): ``embeddings.*`` (with ``embeddings.project``, the E -> H linear of
factorized embeddings), ``encoder.layer.<i>.*``. A shared layer (ALBERT) is one set of weights
read at every application: each application finds the same plan and the same integer parameters,
so ``main`` holds one copy of them; the classification head's
two linears by their role (the one feeding ``tanh`` is ``head.dense``, the one returned is
``head.out``). :func:`_plan_index` is that table.

Invariant
---------
``main``'s activations are all integer, its parameters are the token inputs followed by one
integer tensor per key of ``plan.arrays_for(strategy)`` (each used, in first-use order; names
recorded in the ``ibert_param_names`` attribute), and it returns int32: ``[batch, labels]``
logits or the ``[batch, H]`` pooled embedding, equal bit for bit to
``IntBertModel(plan, strategy)``. The only float left is weight-free (the additive-mask chain),
and dead. A float op on an activation that no rule above lowers, a plan tensor the graph never
uses, or a graph constant that disagrees with the plan raises ``IBertTVMError`` naming the op
and its binding (registered with TVM's FFI by ``ibert_tvm.passes``, it reaches the caller as itself).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.ir import GenericConst, Op

from ..errors import IBertTVMError
from ..op import wide_pv
from ..op.int_matmul import batch_matmul_te
from ..op.pooling import POOLINGS
from ..op.residual_add import ResidualAdd
from ..schedules import GENERIC, LinearStrategy
from .find_quantization_points import vars_read

_VIEWS = {"relax.reshape", "relax.permute_dims", "relax.broadcast_to", "relax.expand_dims", "relax.squeeze"}
_TABLES = {"word_embeddings": 0, "position_embeddings": 1, "token_type_embeddings": 2}  # EmbeddingSum order
_PLAN_NAME = re.compile(r"(?:^|\.)((?:embeddings|encoder\.layer\.\d+)\..+)$")
_PROBE = (2, 3)  # batch and seq at which the relative position bias's views are checked
_SCALE_RTOL = 1e-6  # the score scale constant is float32: 1/sqrt(d) within its rounding (2^-24 ~ 6e-8)


@tvm.transform.module_pass(opt_level=0, name="LowerToInteger")
class LowerToInteger:  # pylint: disable=too-few-public-methods
    """Rewrite ``main`` of an imported float module into the integer model of ``plan``."""

    def __init__(self, plan, strategy: LinearStrategy = GENERIC):
        self.plan = plan
        self.strategy = strategy

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return _Lowering(mod["main"], self.plan, self.strategy).run()


# -- lowered values -----------------------------------------------------------------------------
@dataclass
class _Int:
    """A materialised integer tensor; ``origin`` is the plan name of the op whose output it shows
    (a linear, a LayerNorm, ``probs:<scope>``), kept through views."""

    expr: relax.Expr
    origin: str | None = None


@dataclass
class _Acc:
    """The int32 accumulator ``x W^T + b`` of linear ``lp``, not yet requantized."""

    expr: relax.Expr
    lp: object  # LinearPlan
    hf: str  # the linear's HF module path (its bias must be ``<hf>.bias``)


@dataclass
class _Sliced:
    """Channels ``[begin, begin + n)`` of ``fused``, the int8 output of a fused linear
    (``ModelPlan``'s ``qkv``): linear ``origin``'s requantized output, not yet sliced out.
    ``hf``: set until the graph's bias add of that linear (in the fused kernel already) is seen.
    The slice is made where it is read (:meth:`_Lowering._slice`): after the head split's
    reshape when that comes first, so that it fuses with the head transpose; else on the last axis."""

    fused: relax.Expr
    begin: int
    n: int
    origin: str
    hf: str | None = None


@dataclass
class _Scores:
    """int32 ``q k^T`` of attention scope ``scope``; ``scaled`` once the 1/sqrt(d) factor was seen."""

    expr: relax.Expr
    scope: str
    head_dim: int
    scaled: bool = False
    biased: bool = False  # the relative position bias was added (MPNet)


@dataclass
class _Masked:
    """Scores plus the additive mask built from the ``attention_mask`` input."""

    scores: _Scores


@dataclass
class _RelBias:
    """The relative position bias ``W[bucket(j - i), h]`` (MPNet), not materialised: each layer adds
    its own integer table (``RelativePositionBias``) to its scores. ``probe`` is the graph's views
    applied to a small stand-in of the gathered rows (``[seq, seq, heads]`` or ``[seq * seq,
    heads]``, element = (i * seq + j) * heads + head, at batch ``_PROBE[0]`` and seq ``_PROBE[1]``):
    the add checks that it lines up as ``[batch, heads, i, j]``."""

    probe: np.ndarray


@dataclass
class _Gathers:
    """Embedding rows not yet summed: ``ids[k]`` = the index tensor of table k (``_TABLES``)."""

    ids: dict


def _plan_index(plan) -> dict:
    """Plan name -> the plan objects the lowering needs (the bridge to ``ModelPlan``'s fields).

    Keys are HF module paths below the base-model prefix; the head's linears are keyed by role."""
    idx = {"embeddings.LayerNorm": ("layer_norm", plan.emb_ln)}
    for i, lp in enumerate(plan.layers):
        hp = f"encoder.layer.{i}."
        idx[hp + "attention.self"] = ("attention", lp)
        idx[hp + "attention.output.LayerNorm"] = ("layer_norm", lp.ln1)
        idx[hp + "output.LayerNorm"] = ("layer_norm", lp.ln2)
        idx[hp + "intermediate.dense"] = ("gelu_after", lp.gelu)
    if getattr(plan, "head_act", None) == "gelu":  # ELECTRA's classifier: dense -> i-GELU -> out
        idx["head.dense"] = ("gelu_after", plan.head_gelu)
    return idx


class _Lowering:
    def __init__(self, func: relax.Function, plan, strategy: LinearStrategy):
        self.func, self.plan, self.st = func, plan, strategy
        n_in = int(func.attrs["num_input"])
        self.inputs = list(func.params[:n_in])
        self.weights = {p: p.name for p in func.params[n_in:]}
        self.mask = next((p for p in self.inputs if p.name == "attention_mask"), None)
        self.index = _plan_index(plan)
        self.arrays = plan.arrays_for(strategy)
        self.params: dict[str, relax.Var] = {}  # used plan tensors, first-use order
        self.value: dict = {}  # float var -> bound value
        self.low: dict = {}  # float activation var -> _Int | _Acc | _Scores | _Masked | _Gathers
        self.bb = relax.BlockBuilder()
        # q / k / v linear name -> (the fused linear, its channel offset) for layers with a fused qkv
        self.fused_of = {}
        for L in plan.layers:
            if L.qkv is not None:
                h = 0
                for part in (L.q, L.k, L.v):
                    self.fused_of[part.name] = (L.qkv, h)
                    h += int(plan.qm.tensor(part.name + ".weight").shape[0])
        self.fused_out: dict = {}  # (fused linear name, its input expr) -> its requantized output
        self.fused_views: dict = {}  # (fused output, head dim) -> its [..., 3H / d, d] view

    # -- driver ---------------------------------------------------------------------------------
    def run(self) -> tvm.IRModule:
        func = self.func
        if len(func.body.blocks) != 1 or self.mask is None:
            raise IBertTVMError("LowerToInteger: main needs one dataflow block and an attention_mask input")
        bb = self.bb
        with bb.function("main"):
            with bb.dataflow():
                for binding in func.body.blocks[0].bindings:
                    self._binding(binding)
                out = bb.emit_output(self._output(func.body.body))
            bb.emit_func_output(out, params=self.inputs + list(self.params.values()))
        unused = sorted(set(self.arrays) - set(self.params) - self._unread())
        if unused:
            raise IBertTVMError(f"LowerToInteger: the graph never uses the plan tensors {unused}: "
                                "the imported model and the quantized model differ")
        mod = bb.get()
        attrs = {k: func.attrs[k] for k in ("num_input", "tir_var_lower_bound", "tir_var_upper_bound")
                 if k in func.attrs}
        attrs["ibert_param_names"] = list(self.params)
        mod["main"] = mod["main"].with_attrs(attrs)
        return mod

    def _unread(self) -> set:
        """Plan tensors no graph reads: ``ModelPlan`` makes the mean-pool requantization
        (``pooler.*``) for every model, a classifier never pools (today's module declares them as
        unused parameters)."""
        out = {n for n in self.arrays if n.startswith("pooler.")} if self.plan.head != "embedding" else set()
        # the separate q, k, v tensors of a fused layer (the golden executor's; the graph reads the qkv ones)
        parts = tuple(f"{name}." for name in self.fused_of)
        return out | {n for n in self.arrays if n.startswith(parts)} if parts else out

    def _binding(self, binding: relax.VarBinding) -> None:
        var, value = binding.var, binding.value
        self.value[var] = value
        if not any(v in self.weights or v in self.low for v in vars_read(value)):
            self.bb.emit_normalized(binding)  # weight-free: copied, EliminateFloat removes the dead float
            return
        if isinstance(value, relax.Var):
            self.low[var] = self.low[value]
            return
        op = _op(value)
        if op == "relax.permute_dims" and value.args[0] in self.weights:
            return  # W^T of a linear: read by the matmul rule, never an activation
        rule = _RULES.get(op)
        low = rule(self, var, value) if rule is not None else None
        if low is None:
            raise self._error(var, value, "no rule lowers it to the integer op plans")
        self.low[var] = low

    def _error(self, var, value, why: str) -> IBertTVMError:
        op = _op(value) or type(value).__name__
        text = str(value)
        return IBertTVMError(f"LowerToInteger: cannot lower {op} at binding {var.name} = "
                             f"{text if len(text) < 200 else text[:200] + '...'}: {why}")

    # -- helpers --------------------------------------------------------------------------------
    def _param(self, name: str) -> relax.Var:
        """The run-time integer tensor ``name`` of the plan, as a parameter of ``main``."""
        if name not in self.params:
            if name not in self.arrays:
                raise IBertTVMError(f"LowerToInteger: the plan has no tensor {name!r}")
            a = np.asarray(self.arrays[name])
            self.params[name] = relax.Var(name, relax.TensorType([int(d) for d in a.shape], a.dtype.name))
        return self.params[name]

    def _te(self, body, name: str, args: list, kw: dict | None = None) -> relax.Var:
        """``body(*args, **kw)`` with ``kw`` values plan tensor names (passed by keyword, and as
        PrimFunc parameters in ``kw``'s order: today's module's order, so that the PrimFuncs, and
        the tuning records keyed by their structure, are the same)."""
        keys = list(kw or {})
        ps = [self._param(kw[k]) for k in keys]
        n = len(args)
        return self.bb.emit_te(lambda *t: body(*t[:n], **dict(zip(keys, t[n:]))), *args, *ps,
                               primfunc_name_hint=name)

    def _weight(self, e, suffix: str) -> str | None:
        """``L`` when ``e`` is (a ``permute_dims`` of) the weight parameter ``L<suffix>``."""
        v = self.value.get(e)
        if isinstance(v, relax.Call) and getattr(v.op, "name", None) == "relax.permute_dims":
            e = v.args[0]
        name = self.weights.get(e)
        return name[: -len(suffix)] if name is not None and name.endswith(suffix) else None

    def _same_shape(self, var, call, what: str, graph, plan) -> None:
        if tuple(graph) != tuple(plan):
            raise self._error(var, call, f"{what} is {list(graph)} in the graph, {list(plan)} in the quantized model")

    def _plan_name(self, hf: str) -> str | None:
        m = _PLAN_NAME.search(hf)
        return m.group(1) if m else None

    def _linear_plan(self, hf: str, var):
        """The LinearPlan of HF linear ``hf`` (encoder) or of a head linear (by its role)."""
        name = self._plan_name(hf)
        if name is None and self.plan.head == "classifier":
            name = "head.out" if self._returned(var) else "head.dense"
        elif name is None and self.plan.head in ("token_classifier", "qa") and self._returned(var):
            name = "head.out"
        lp = self.plan.linears.get(name)
        if lp is None:
            raise self._error(var, self.value[var], f"linear {hf} has no plan (plan name {name})")
        return lp

    def _returned(self, var) -> bool:
        """Whether ``var`` (through its bias add, views and aliases) is what ``main`` returns."""
        bindings = {b.var: b.value for b in self.func.body.blocks[0].bindings}
        users: dict = {}
        for v, val in bindings.items():
            for u in vars_read(val):
                users.setdefault(u, []).append(v)
        through = _VIEWS | {"relax.add", None}  # None: a Var alias (``gv = lv``)
        out, stack = self.func.body.body, [var]
        while stack:
            e = stack.pop()
            if e.same_as(out):
                return True
            stack.extend(u for u in users.get(e, []) if _op(bindings[u]) in through)
        return False

    def _int(self, low, var, why: str) -> _Int:
        """``low`` as a materialised integer tensor (requantizing a pending accumulator)."""
        if isinstance(low, _Int):
            return low
        if isinstance(low, _Sliced):
            return self._slice(low)
        if isinstance(low, _Acc):
            rq = low.lp.requant
            if isinstance(rq, ResidualAdd):
                raise self._error(var, self.value[var], f"linear {low.lp.name} adds a residual in the plan, "
                                  f"but its output is {why}")
            return _Int(self._requantize(low.expr, low.lp), origin=low.lp.name)
        raise self._error(var, self.value[var], f"its input is {type(low).__name__.strip('_').lower()}, not an "
                          f"integer activation ({why})")

    def _requantize(self, acc: relax.Expr, lp) -> relax.Expr:
        """Linear ``lp``'s int32 accumulator ``acc`` requantized by its plan (``LinearPlan.requant``)."""
        rq = lp.requant
        return self._te(rq.te, "requantize", [acc], {k: f"{lp.name}.{k}" for k in sorted(rq.params())})

    def _arg(self, value, i: int, var, why: str) -> _Int:
        x = value.args[i]
        low = self._int(self.low[x], var, why)
        if isinstance(self.low[x], _Acc):  # requantized once for all its readers (a projection feeds q, k, v)
            self.low[x] = low
        return low

    # -- outputs --------------------------------------------------------------------------------
    def _output(self, out):
        if out not in self.low:
            raise IBertTVMError(f"LowerToInteger: main returns {out.name}, which does not depend on any weight")
        if self.plan.head != "embedding":  # logits: [batch, labels] or [batch, seq, labels]
            return self._int(self.low[out], out, "returned").expr
        h = self._int(self.low[out], out, "returned")
        if len(out.ty.shape) != 3:
            raise IBertTVMError(f"LowerToInteger: a *Model must return the [batch, seq, H] hidden state, "
                                f"main returns {out.ty.shape}")
        pool = self.plan.pooling
        pooled = self.bb.emit_te(POOLINGS[pool][1], h.expr, self.mask, primfunc_name_hint=f"{pool}_pool")
        if self.plan.pool is None:
            return pooled
        rq = self.plan.pool
        return self._te(rq.te, "requantize", [pooled], {k: f"pooler.{k}" for k in sorted(rq.params())})

    # -- rules (one per float op; each returns the lowered value or None) ----------------------
    def _matmul(self, var, call):
        a, b = call.args
        hf = self._weight(b, ".weight")
        if hf is not None:
            return self._linear(var, call, hf)
        la, lb = self.low.get(a), self.low.get(b)
        if isinstance(la, _Int) and la.origin and la.origin.startswith("probs:"):
            scope = la.origin[len("probs:"):]
            lp = self.index[scope][1]
            v = self._int(lb, var, "the value operand of the attention product")
            vt = self.bb.emit(relax.op.permute_dims(v.expr, _swap_last(b)))  # [.., d, S]
            row_sum = lp.softmax.row_sum_bound  # P's row sum: proves the int32 accumulator (uint16 P too)
            if lp.softmax.out_dtype == "uint8":
                ctx = self.bb.emit_te(lambda p, t: batch_matmul_te(p, t, max_k=self.plan.max_seq, row_sum=row_sum),
                                      la.expr, vt, primfunc_name_hint="pv_matmul")
            else:  # a uint16 P (softmax_bits > 8): two uint8 byte products on the same units (op.wide_pv)
                ctx = self._wide_pv(la.expr, vt, row_sum)
            if lp.ctx.channels is not None:
                raise self._error(var, call, "the context requantization must be per-tensor")
            return _Int(self._te(lp.ctx.te, "requantize", [ctx]), origin=f"{scope}.ctx")
        q, k = self._int(la, var, "an attention operand"), self._int(lb, var, "an attention operand")
        scope = self._scope(q, k, var, call)
        kt = self.bb.emit(relax.op.permute_dims(k.expr, _swap_last(b)))  # [.., S, d]
        head_dim = int(a.ty.shape[-1])
        scores = self.bb.emit_te(batch_matmul_te, q.expr, kt, primfunc_name_hint="qk_matmul")
        return _Scores(scores, scope, head_dim)

    def _wide_pv(self, p, vt, row_sum: int):
        """``P V`` for a uint16 ``P`` as ``256 (hi V) + lo V`` (:mod:`~ibert_tvm.op.wide_pv`): both
        byte products are uint8 ``pv_matmul`` PrimFuncs, scheduled (and PTX-checked) as the 8-bit ones."""
        max_k = self.plan.max_seq
        wide_pv.check_bounds(max_k, row_sum)
        accs = []
        for high in (True, False):
            byte = self.bb.emit_te(lambda a, h=high: wide_pv.byte_te(a, h), p,
                                   primfunc_name_hint=wide_pv.HIGH_BLOCK if high else wide_pv.LOW_BLOCK)
            accs.append(self.bb.emit_te(lambda a, t: batch_matmul_te(a, t, max_k=max_k), byte, vt,
                                        primfunc_name_hint="pv_matmul"))
        return self.bb.emit_te(wide_pv.combine_te, *accs, primfunc_name_hint=wide_pv.COMBINE_BLOCK)

    def _scope(self, q: _Int, k: _Int, var, call) -> str:
        """The attention scope (``encoder.layer.<i>.attention.self``) of the q and k linears."""
        scopes = {o.rsplit(".", 1)[0] for o in (q.origin, k.origin) if o}
        if len(scopes) != 1 or next(iter(scopes)) not in self.index:
            raise self._error(var, call, f"the score product's operands come from {q.origin} and {k.origin}, "
                              "not from one attention block's linears")
        return scopes.pop()

    def _linear(self, var, call, hf: str):
        lp = self._linear_plan(hf, var)
        x = self._arg(call, 0, var, f"the input of linear {hf}")
        n, k = (int(d) for d in self.value[call.args[1]].args[0].ty.shape)  # the float W [N, K]
        self._same_shape(var, call, f"linear {hf}", (n, k), self.plan.qm.tensor(lp.name + ".weight").shape)
        if lp.name in self.fused_of:
            return self._fused_part(x, lp, hf, n)
        return _Acc(self._gemm(x, lp, n, k), lp, hf)

    def _gemm(self, x: _Int, lp, n: int, k: int) -> relax.Expr:
        """The int32 accumulator ``x W^T + b`` of linear ``lp`` (``[N, K]`` = ``n, k``): the strategy's TE."""
        names = self.st.packed_param_shapes(n, k, lp.bits) if lp.packed else self.st.param_shapes(n, k)
        kw = {key: f"{lp.name}.{key}" for key in sorted(names)}
        if lp.packed:
            def body(a, **ps):
                return self.st.packed_te(a, **ps, bits=lp.bits, k=lp.in_features)
        else:
            body = self.st.te
        return self._te(body, "linear", [x.expr], kw)

    def _fused_part(self, x: _Int, lp, hf: str, n: int) -> _Sliced:
        """Linear ``lp``'s int8 output as channels ``[h, h + n)`` of its fused linear's (``fused_qkv``),
        which is emitted once per input: the first of q, k, v to be lowered emits the GEMM and its
        requantization for all three, each then slices its own channels (the slice, a view, fuses
        into its reader: the head split)."""
        fused, h = self.fused_of[lp.name]
        key = (fused.name, x.expr)
        if key not in self.fused_out:
            acc = self._gemm(x, fused, fused.requant.channels, fused.in_features)
            self.fused_out[key] = self._requantize(acc, fused)
        return _Sliced(self.fused_out[key], h, n, lp.name, hf)

    def _slice(self, sl: _Sliced, shape=None) -> _Int:
        """``sl`` materialised: its channels sliced from the fused output; with ``shape`` (a
        reshape of the part to ``[..., a, b]``, ``a b = n``, its leading dims the part's), the fused
        output is reshaped to ``[..., 3H / b, b]`` (a view) and sliced on axis -2 instead, which is
        the same tensor (channel ``c`` of the part is element ``(c // b, c % b)`` either way)."""
        f = sl.fused
        rank = len(f.ty.shape)
        if shape is None:
            part = relax.op.strided_slice(f, axes=[rank - 1], begin=[sl.begin], end=[sl.begin + sl.n])
        else:
            b = int(shape[-1])
            total = int(f.ty.shape[-1])
            key = (f, b)
            if key not in self.fused_views:
                self.fused_views[key] = self.bb.emit(relax.op.reshape(f, [*list(f.ty.shape)[:-1], total // b, b]))
            view = self.fused_views[key]
            part = relax.op.strided_slice(view, axes=[rank - 1], begin=[sl.begin // b], end=[(sl.begin + sl.n) // b])
        return _Int(self.bb.emit(part), origin=sl.origin)

    def _split_heads(self, sl: _Sliced, call, var):
        """The target shape when view ``call`` of part ``sl`` splits its channels as ``[..., a, b]``
        (``a b = n``, ``b`` dividing the part's offset, the leading dims unchanged); else None."""
        if call.op.name != "relax.reshape":
            return None
        src, dst = list(sl.fused.ty.shape), list(var.ty.shape)
        if len(dst) != len(src) + 1 or not all(isinstance(d, tvm.tirx.IntImm) for d in dst[-2:]):
            return None
        a, b = int(dst[-2]), int(dst[-1])
        if a * b != sl.n or sl.begin % b:
            return None
        from tvm.sym import Analyzer

        analyzer = Analyzer()
        if not all(analyzer.can_prove_equal(x, y) for x, y in zip(src[:-1], dst[:-2])):
            return None
        return dst

    def _add(self, var, call):
        a, b = call.args
        la, lb = self.low.get(a), self.low.get(b)
        for sl, other in ((la, b), (lb, a)):  # the bias of a fused linear's part (in its kernel already)
            if isinstance(sl, _Sliced) and sl.hf is not None and other in self.weights \
                    and self._weight(other, ".bias") is not None:
                if self._weight(other, ".bias") != sl.hf:
                    raise self._error(var, call, f"bias {self.weights[other]} is not linear {sl.hf}'s")
                return _Sliced(sl.fused, sl.begin, sl.n, sl.origin)
        for acc, other in ((la, b), (lb, a)):  # the bias of a linear (te() added it already)
            if isinstance(acc, _Acc) and other in self.weights and self._weight(other, ".bias") is not None:
                if self._weight(other, ".bias") != acc.hf:
                    raise self._error(var, call, f"bias {self.weights[other]} is not linear {acc.lp.name}'s")
                return acc
        if la is not None and lb is not None:
            for sc, rb in ((la, lb), (lb, la)):
                if isinstance(sc, _Scores) and isinstance(rb, _RelBias):
                    return self._add_rel_bias(var, call, sc, rb)
            if isinstance(la, _Gathers) and isinstance(lb, _Gathers):
                if set(la.ids) & set(lb.ids):
                    raise self._error(var, call, "an embedding table is summed twice")
                return _Gathers({**la.ids, **lb.ids})
            for acc, skip in ((la, lb), (lb, la)):
                if isinstance(acc, _Acc) and isinstance(skip, (_Int, _Acc)):
                    ra = acc.lp.requant
                    if type(ra).__name__ != "ResidualAdd":
                        raise self._error(var, call, f"linear {acc.lp.name}'s plan requantizes to int8, "
                                          "but the graph adds a residual to it")
                    s = self._int(skip, var, "a residual input")
                    kw = {k: f"{acc.lp.name}.{k}" for k in sorted(ra.params())}
                    return _Int(self._te(ra.te, "residual_add", [acc.expr, s.expr], kw), origin=acc.lp.name)
            return None
        scores = la if isinstance(la, _Scores) else lb if isinstance(lb, _Scores) else None
        other = b if scores is la else a
        if scores is not None:  # the additive attention mask
            if not scores.scaled:
                raise self._error(var, call, "the mask is added before the 1/sqrt(d) scaling")
            if self._inputs_of(other) != {self.mask}:
                raise self._error(var, call, "the additive mask does not derive from attention_mask alone")
            return _Masked(scores)
        return None

    def _inputs_of(self, e) -> set:
        """The function inputs a weight-free expression reads (through its bindings)."""
        found, stack, seen = set(), [e], set()
        while stack:
            x = stack.pop()
            if x in seen:
                continue
            seen.add(x)
            if x in self.inputs:
                found.add(x)
            elif x in self.value:
                stack.extend(vars_read(self.value[x]))
        return found

    def _scale(self, var, call):
        s = self.low.get(call.args[0])
        c = call.args[1]
        if not isinstance(s, _Scores) or s.scaled or not _scalar(c):
            return None
        f = float(c.value.numpy())
        f = f if call.op.name == "relax.multiply" else 1.0 / f
        d = self.plan.head_dim  # = hidden / heads; the plan folds S_q S_k / sqrt(d) into i-softmax
        want = 1.0 / math.sqrt(d)
        if s.head_dim != d or abs(f - want) > _SCALE_RTOL * want:
            raise self._error(var, call, f"scores of head size {s.head_dim} scaled by {f}, the plan folds "
                              f"1/sqrt({d}) = {want}")
        return _Scores(s.expr, s.scope, s.head_dim, scaled=True, biased=s.biased)

    def _softmax(self, var, call):
        m = self.low.get(call.args[0])
        if not isinstance(m, _Masked) or int(call.attrs.axis) not in (-1, len(var.ty.shape) - 1):
            return None
        sm = self.index[m.scores.scope][1].softmax
        return _Int(self.bb.emit_te(sm.te, m.scores.expr, self.mask, primfunc_name_hint="int_softmax"),
                    origin=f"probs:{m.scores.scope}")

    def _layer_norm(self, var, call):
        hf = self._weight(call.args[1], ".weight")
        kind, ln = self.index.get(self._plan_name(hf or ""), (None, None))
        if kind != "layer_norm":
            raise self._error(var, call, f"LayerNorm {hf} has no plan")
        x = self.low.get(call.args[0])
        if isinstance(x, _Gathers):
            x = self._embedding_sum(x, call.args[0], var, call)
        if not isinstance(x, _Int) or x.expr.ty.dtype != "int32":
            raise self._error(var, call, "the LayerNorm input is not a wide int32 sum (residual or embeddings)")
        prefix = self._plan_name(hf)
        return _Int(self._te(ln.te, "int_layernorm", [x.expr], {"g": f"{prefix}.g", "beta_q": f"{prefix}.beta_q"}),
                    origin=prefix)

    def _embedding_sum(self, g: _Gathers, x, var, call) -> _Int:
        n = 3 if self.plan.embeddings.has_token_types else 2  # no token-type table: word + position
        if sorted(g.ids) != list(range(n)):
            raise self._error(var, call, f"EmbeddingSum needs {list(_TABLES)[:n]} gathered once each, got "
                              f"{sorted(k for k, i in _TABLES.items() if i in g.ids)}")
        rows = relax.ShapeExpr(list(x.ty.shape)[:-1])  # [batch, seq]
        ids = [self.bb.emit(relax.op.reshape(g.ids[i], rows)) for i in range(n)]
        tables = [self._param(f"embeddings.{k}.weight") for k in list(_TABLES)[:n]]
        if n == 3:
            return _Int(self.bb.emit_te(self.plan.embeddings.te, *ids, *tables, primfunc_name_hint="embedding_sum"))
        te = self.plan.embeddings.te
        return _Int(self.bb.emit_te(lambda i, p, w, pw: te(i, p, None, w, pw, None), *ids, *tables,
                                    primfunc_name_hint="embedding_sum"))

    def _take(self, var, call):
        table, idx = call.args
        hf = self._weight(table, ".weight")
        if hf is not None and (hf == "encoder.relative_attention_bias" or hf.endswith(".encoder.relative_attention_bias")):
            return self._rel_bias(var, call, hf)
        if hf is not None:  # an embedding gather
            name = self._plan_name(hf) or ""
            key = name.split(".")[1] if name.startswith("embeddings.") and name.count(".") == 1 else None
            if key not in _TABLES or int(call.attrs.axis) != 0:
                raise self._error(var, call, f"embedding table {hf} is not one EmbeddingSum knows")
            self._same_shape(var, call, f"table {hf}", tuple(int(d) for d in table.ty.shape),
                             self.arrays[f"embeddings.{key}.weight"].shape)
            return _Gathers({_TABLES[key]: idx})
        if _scalar(idx):  # one token of an activation (the classification head's first token)
            return self._view(var, call)
        return None

    def _rel_bias(self, var, call, hf: str):
        """``take(W, buckets)``: the relative position bias, to be added per layer (``_RelBias``).
        The bucket index must be data-independent (computed from the sequence length only: the
        plan holds the same buckets as integers, taken from HF's computation at calibration)."""
        table, idx = call.args
        if not getattr(self.plan, "rel_buckets", 0):
            raise self._error(var, call, f"{hf} is in the graph, but the quantized model has no relative position "
                              "bias (dims.rel_buckets)")
        self._same_shape(var, call, f"table {hf}", tuple(int(d) for d in table.ty.shape),
                         (self.plan.rel_buckets, self.plan.heads))
        if self._inputs_of(idx) or int(call.attrs.axis) != 0:
            raise self._error(var, call, "the relative position buckets must be computed from the sequence length "
                              "alone")
        sq, shape = _PROBE[1], self._probe_shape(idx.ty.shape)
        if shape not in ((sq, sq), (sq * sq,)):  # [query, key], or flattened row-major
            raise self._error(var, call, "the relative position buckets are not one per (query, key) pair")
        h = self.plan.heads
        return _RelBias(np.arange(sq * sq * h).reshape(*shape, h))

    def _probe_shape(self, shape) -> tuple:
        """``shape`` (of symbolic ``batch``/``seq``) at the probe sizes."""
        from tvm import tirx
        from tvm.sym import Analyzer

        an = Analyzer()
        for v, n in zip(self.inputs[0].ty.shape, _PROBE, strict=True):  # [batch, seq]
            an.bind(v, tirx.IntImm("int64", n))
        return tuple(int(an.simplify(d)) for d in shape)

    def _probe_view(self, var, call, probe: np.ndarray) -> np.ndarray:
        """View ``call`` applied to the numpy stand-in ``probe`` of the relative position bias."""
        op, a = call.op.name, call.attrs
        if op == "relax.permute_dims":
            return np.transpose(probe, None if a.axes is None else [int(x) for x in a.axes])
        if op == "relax.expand_dims":
            return np.expand_dims(probe, tuple(int(x) for x in a.axis))
        if op == "relax.squeeze":
            return np.squeeze(probe, None if a.axis is None else tuple(int(x) for x in a.axis))
        shape = self._probe_shape(var.ty.shape)
        if op == "relax.reshape":
            return probe.reshape(shape)
        if op == "relax.broadcast_to":
            return np.broadcast_to(probe, shape)
        raise self._error(var, call, "a view of the relative position bias this lowering does not follow")

    def _add_rel_bias(self, var, call, scores: _Scores, bias: _RelBias) -> _Scores:
        """scores + the layer's integer bias table, gathered by relative position (``RelativePositionBias``)."""
        if not scores.scaled or scores.biased:
            raise self._error(var, call, "the relative position bias must be added once, after the 1/sqrt(d) scaling")
        b, sq = _PROBE
        h = self.plan.heads
        i, j = np.arange(sq)[:, None], np.arange(sq)[None, :]
        want = np.broadcast_to(((i * sq + j) * h)[None, None] + np.arange(h)[None, :, None, None], (b, h, sq, sq))
        if bias.probe.shape != want.shape or not np.array_equal(bias.probe, want):
            raise self._error(var, call, "the relative position bias does not line up as [batch, heads, query, key]")
        lp = self.index[scores.scope][1]
        if lp.rel_bias is None or len(scores.expr.ty.shape) != 4:
            raise self._error(var, call, f"{scores.scope} has no relative position bias plan, or its scores are not "
                              "[batch, heads, seq, seq]")
        kw = {"bucket": "encoder.relative_attention_bucket", "table": f"{scores.scope}.position_bias"}
        expr = self._te(lp.rel_bias.te, "rel_pos_bias", [scores.expr], kw)
        return _Scores(expr, scores.scope, scores.head_dim, scaled=True, biased=True)

    def _view(self, var, call):
        low = self.low[call.args[0]]
        rest = list(call.args[1:])
        if isinstance(low, _RelBias):
            return _RelBias(self._probe_view(var, call, low.probe))
        if isinstance(low, _Gathers):
            if int(var.ty.shape[-1]) != int(call.args[0].ty.shape[-1]):
                raise self._error(var, call, "a view of embedding rows changes their width")
            return low
        if isinstance(low, _Scores):  # per-tensor scale: any view
            expr = self.bb.emit(relax.Call(call.op, [low.expr, *rest], call.attrs, call.ty_args))
            return _Scores(expr, low.scope, low.head_dim, low.scaled, low.biased)
        if isinstance(low, _Sliced):
            shape = self._split_heads(low, call, var)
            if shape is not None:  # the head split: reshape the fused output, slice the heads
                return self._slice(low, shape)
        if isinstance(low, _Acc) and _keeps_channels(call, var):  # per-channel requantization still applies
            expr = self.bb.emit(relax.Call(call.op, [low.expr, *rest], call.attrs, call.ty_args))
            return _Acc(expr, low.lp, low.hf)
        x = self._int(low, var, f"viewed by {call.op.name}")
        return _Int(self.bb.emit(relax.Call(call.op, [x.expr, *rest], call.attrs, call.ty_args)), x.origin)

    def _gelu(self, var, call):
        x = self._arg(call, 0, var, "the GELU input")
        kind, gelu = self.index.get(x.origin or "", (None, None))
        if kind != "gelu_after" or var.ty.shape[-1] != call.args[0].ty.shape[-1]:
            raise self._error(var, call, f"the GELU input comes from {x.origin}, which has no i-GELU plan")
        prefix = x.origin.rsplit(".", 1)[0] + ".act"
        return _Int(self._te(gelu.te_q, "int_gelu", [x.expr], {k: f"{prefix}.{k}" for k in sorted(gelu.params())}))

    def _relu(self, var, call):
        x = self._arg(call, 0, var, "the ReLU input")  # the head's dense, requantized to the ReLU output's scale
        if x.origin != "head.dense" or getattr(self.plan, "head_act", None) != "relu":
            raise self._error(var, call, f"the ReLU input comes from {x.origin}, not a ReLU classification head")
        return _Int(self.bb.emit_te(self.plan.relu.te, x.expr, primfunc_name_hint="int_relu"))

    def _tanh(self, var, call):
        x = self._arg(call, 0, var, "the tanh input")
        if x.origin != "head.dense" or getattr(self.plan, "head_act", None) != "tanh":
            raise self._error(var, call, f"the tanh input comes from {x.origin}, not a tanh classification head")
        return _Int(self.bb.emit_te(self.plan.tanh.te, x.expr, primfunc_name_hint="int_tanh"))


_RULES = {
    "relax.matmul": _Lowering._matmul,
    "relax.add": _Lowering._add,
    "relax.multiply": _Lowering._scale,
    "relax.divide": _Lowering._scale,
    "relax.nn.softmax": _Lowering._softmax,
    "relax.nn.layer_norm": _Lowering._layer_norm,
    "relax.nn.gelu": _Lowering._gelu,
    "relax.nn.gelu_tanh": _Lowering._gelu,  # gelu_new (ALBERT): i-GELU approximates both forms
    "relax.tanh": _Lowering._tanh,
    "relax.nn.relu": _Lowering._relu,
    "relax.take": _Lowering._take,
    **{v: _Lowering._view for v in _VIEWS},
}


def _op(value) -> str | None:
    return value.op.name if isinstance(value, relax.Call) and isinstance(value.op, Op) else None


def _scalar(e) -> bool:
    return isinstance(e, GenericConst) and e.ty.ndim == 0


def _keeps_channels(call, dst) -> bool:
    """Whether view ``call`` keeps every element on its channel (last-axis index), so that a
    per-channel requantization commutes with it: a row-major reshape / broadcast / expand /
    squeeze that keeps the static last extent, or a permute that keeps the last axis last."""
    src = call.args[0]
    a, b = src.ty.shape[-1], dst.ty.shape[-1]
    if not (isinstance(a, tvm.tirx.IntImm) and isinstance(b, tvm.tirx.IntImm) and int(a) == int(b)):
        return False
    if call.op.name == "relax.permute_dims":
        axes = call.attrs.axes
        if axes is None:  # reversed axes: the last stays last only in 1-D
            return src.ty.ndim == 1
        return int(axes[-1]) == src.ty.ndim - 1
    return True


def _swap_last(e) -> list[int]:
    n = e.ty.ndim
    return list(range(n - 2)) + [n - 1, n - 2]
