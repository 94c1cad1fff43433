"""FindQuantizationPoints: where the imported float graph gets activation scales.

An analysis (it changes nothing): it reads ``main`` of a float module from
:func:`ibert_tvm.frontend.importer.import_model` and returns every tensor at which the integer
model quantizes, found from the graph's structure alone and named after the graph's own
weights. No point is listed by hand for any architecture.

Preconditions
-------------
* ``main`` as the importer makes it: token inputs first (``attrs["num_input"]`` of them), then
  one float parameter per weight, each named by its HF name (``<module>.weight`` /
  ``<module>.bias``); one dataflow block.
* LayerNorm as ``nn.layer_norm`` (run :class:`~ibert_tvm.passes.fold_layer_norm.FoldLayerNorm`
  first), GELU as ``nn.gelu`` / ``nn.gelu_tanh``, attention probabilities as ``nn.softmax``.
* A linear is ``matmul(x, permute_dims(W))`` (+ ``add`` of its bias ``B``, either order),
  ``W`` and ``B`` weights named ``<L>.weight`` / ``<L>.bias``; an embedding is
  ``take(<E>.weight, ids, axis=0)``.

Result
------
:func:`find_quantization_points` returns a list of :class:`QuantizationPoint`, one per distinct
tensor, in binding order. A tensor is the same through value-preserving views (``reshape``,
``permute_dims``, ``broadcast_to``, ``expand_dims``, ``squeeze``, a ``take`` of one token of an
activation). Points are the inputs and outputs of every linear, ``nn.layer_norm``, GELU,
``tanh``, ``nn.relu`` and ``nn.softmax``, the outputs of the embedding gathers and of activation x
activation matmuls (attention context). Each point's ``aliases`` are all its graph names:

    ``<L>:in`` / ``<L>:out``   input / output of linear ``L``  (``encoder.layer.3.attention.self.query:out``)
    ``<N>:in`` / ``<N>:out``   input / output of ``nn.layer_norm`` with weight ``<N>.weight``
    ``<E>:out``                gathered rows of embedding table ``<E>.weight``
    ``<P>:scores`` / ``<P>:probs``  softmax input / output; ``P`` = the longest common module
                               path of the linears feeding the score product (``...attention.self``)

and ``name`` is the first of: a ``:out`` of a weighted producer, a ``:in`` of a weighted
consumer, a structural name. GELU, ``tanh`` and ReLU carry no weights: their input and output are
named by the linears on either side (``...intermediate.dense:out``, ``...output.dense:in``).

``kind`` follows from the neighbours (first match wins):

    ``residual``     feeds a LayerNorm (embedding sum, residual adds)   calibrated, wide
    ``gelu_in``      feeds a GELU                                       calibrated, wide
    ``tanh_in``      feeds a tanh                                       calibrated, wide
    ``relu_in``      feeds a ReLU: requantized to the ReLU output's scale  not calibrated
    ``scores``       feeds a softmax: scale S_q S_k / sqrt(d), derived   not calibrated
    ``embedding``    gathered table rows: the table's own scale          not calibrated
    ``probs``        softmax output: fixed scale                         not calibrated
    ``tanh_out``     tanh output: fixed scale 1/127                      not calibrated
    ``relu_out``     ReLU output, int8, non-negative (one scale)         calibrated
    ``act_channel``  LayerNorm / GELU output, int8, per-channel scales   calibrated
    ``branch``       a linear output only summed into a residual: its
                     int32 accumulator is requantized into the sum       not calibrated
    ``logits``       a linear output the function returns                calibrated, wide
    ``act``          any other linear / attention-context output, int8   calibrated

A module whose weights are applied more than once (ALBERT's one shared layer, run
``num_hidden_layers`` times) names a tensor of each application alike: those points share their
``name`` and are told apart by ``application`` (0, 1, .. in binding order), so that calibration
gives every application of a shared module's point one scale (the range over all of them).

Invariant: ``(name, application)`` pairs are unique; the tensor of a point is float32 with its channels on the
last axis (``[batch, seq, C]``, ``[batch * seq, C]`` token rows, or ``[batch, C]`` per
sequence; ``[batch, heads, seq, seq]`` for scores and probs). A float op on an activation that
none of the rules above places (e.g. ``erf``, ``mean``, a ``tanh`` inside a hand-written GELU)
raises ``IBertTVMError`` naming the op and its binding: nothing float is left unaccounted for.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import relax
from tvm.ir import GenericConst, Op
from tvm.relax.expr_functor import PyExprVisitor, visitor

from ..errors import IBertTVMError

KINDS = {  # kind -> calibrated (its scale comes from an observed range)
    "residual": True, "gelu_in": True, "tanh_in": True, "scores": False, "embedding": False,
    "probs": False, "tanh_out": False, "act_channel": True, "branch": False, "logits": True, "act": True,
    "relu_in": False, "relu_out": True,
}
_VIEWS = {"relax.reshape", "relax.permute_dims", "relax.broadcast_to", "relax.expand_dims", "relax.squeeze"}
_GELU = {"relax.nn.gelu", "relax.nn.gelu_tanh"}
_SCALARS = {"relax.multiply", "relax.divide"}  # by a scalar constant: folded into a derived scale
_OUT, _IN, _STRUCTURAL, _UNNAMED = range(4)  # name preference: producer's, consumer's, structural


@dataclass(frozen=True)
class QuantizationPoint:
    """One quantized tensor of ``main``: ``var`` is its binding at the role ``name`` names."""

    name: str
    kind: str
    var: relax.Var
    aliases: tuple[str, ...]
    application: int = 0  # the k-th tensor named ``name``: k-th application of a shared module

    @property
    def calibrated(self) -> bool:
        """Whether its scale comes from a calibration range (else it is derived or fixed)."""
        return KINDS[self.kind]


def find_quantization_points(mod) -> list[QuantizationPoint]:
    """The quantization points of ``mod["main"]`` (see the module docstring)."""
    func = mod["main"]
    graph = _Graph(func)
    graph.visit_expr(func)
    return graph.points()


@visitor
class _Graph(PyExprVisitor):
    """Records ``main``'s bindings, then places every float op on the tensors it reads/writes."""

    def __init__(self, func: relax.Function):
        n_in = int(func.attrs["num_input"])
        self.weights = {p: p.name for p in func.params[n_in:]}
        self.value: dict = {}  # var -> bound value
        self.order: list = []
        self.active: set = set()  # vars whose value depends on a weight (float activations)
        self.output = func.body.body

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        var, value = binding.var, binding.value
        self.value[var] = value
        self.order.append(var)
        if any(v in self.weights or v in self.active for v in vars_read(value)):
            self.active.add(var)

    # -- graph helpers --------------------------------------------------------------------
    def _op(self, var) -> str | None:
        v = self.value.get(var)
        return v.op.name if isinstance(v, relax.Call) and isinstance(v.op, Op) else None

    def source(self, e):
        """Follow value-preserving views back to the tensor they show."""
        while isinstance(e, relax.Var) and e in self.value:
            v = self.value[e]
            if isinstance(v, relax.Var):
                e = v
            elif self._op(e) in _VIEWS or (self._op(e) == "relax.take" and _is_scalar_const(v.args[1])
                                             and v.args[0] not in self.weights):
                e = v.args[0]
            else:
                break
        return e

    def weight(self, e, suffix: str) -> str | None:
        """``L`` when ``e`` shows the weight ``L<suffix>``, else None."""
        name = self.weights.get(self.source(e))
        return name[: -len(suffix)] if name is not None and name.endswith(suffix) else None

    # -- placement ------------------------------------------------------------------------
    def points(self) -> list[QuantizationPoint]:
        roles: dict = {}  # source tensor -> {"names": [(preference, name, var)], "prod": op, "cons": set}
        placed: set = set()  # bindings accounted for

        def role(e, name, pref, prod=None, cons=None):
            t = self.source(e)
            r = roles.setdefault(t, {"names": [], "prod": None, "cons": set()})
            r["names"].append((pref, name, e))
            r["prod"] = prod or r["prod"]
            if cons:
                r["cons"].add(cons)

        linears = self._linears()
        for var, (lin, x, out) in linears.items():
            placed.update({var, out})
            role(x, f"{lin}:in", _IN, cons="linear")
            role(out, f"{lin}:out", _OUT, prod="linear")
        for var in self.order:
            op, call = self._op(var), self.value[var]
            if var not in self.active or var in placed:
                continue
            if op == "relax.nn.layer_norm":
                ln = self.weight(call.args[1], ".weight")
                if ln is None:
                    raise IBertTVMError(f"FindQuantizationPoints: layer_norm {var.name} has no named weight")
                role(call.args[0], f"{ln}:in", _IN, cons="layer_norm")
                role(var, f"{ln}:out", _OUT, prod="layer_norm")
            elif op == "relax.take" and self.weight(call.args[0], ".weight") is not None:
                role(var, f"{self.weight(call.args[0], '.weight')}:out", _OUT, prod="embedding")
            elif op in _GELU:
                role(call.args[0], None, _UNNAMED, cons="gelu")
                role(var, None, _UNNAMED, prod="gelu")
            elif op == "relax.tanh":
                role(call.args[0], None, _UNNAMED, cons="tanh")
                role(var, None, _UNNAMED, prod="tanh")
            elif op == "relax.nn.relu":
                role(call.args[0], None, _UNNAMED, cons="relu")
                role(var, None, _UNNAMED, prod="relu")
            elif op == "relax.nn.softmax":
                scope = self._scope(call.args[0], linears)
                role(call.args[0], f"{scope}:scores", _STRUCTURAL, cons="softmax")
                role(var, f"{scope}:probs", _STRUCTURAL, prod="softmax")
            elif op == "relax.matmul" and all(self.source(a) in self.active for a in call.args):
                pass  # q k^T (scaled into the scores) or probs v (the context, named by its consumer)
            elif op == "relax.add" and self._add_kind(call) is not None:
                pass  # residual / embedding sum / mask: its output is named by its consumer
            elif not self.source(var).same_as(var) or (op in _SCALARS and _is_scalar_const(call.args[1])):
                pass  # a view of another tensor, or a scalar folded into a derived scale
            elif not isinstance(call, relax.Tuple):
                raise IBertTVMError(f"FindQuantizationPoints: cannot place {op or type(call).__name__} at "
                                    f"{var.name} = {call}: no rule quantizes it")
        return self._finish(roles)

    def _linears(self) -> dict:
        """matmul var -> (L, input, output var): output is the bias add when there is one."""
        users: dict = {}
        for var in self.order:
            for v in vars_read(self.value[var]):
                users.setdefault(self.source(v), []).append(var)
        found = {}
        for var in self.order:
            call = self.value[var]
            if self._op(var) != "relax.matmul" or self.weight(call.args[1], ".weight") is None:
                continue
            lin, out = self.weight(call.args[1], ".weight"), var
            for u in users.get(var, []):
                if self._op(u) == "relax.add" and any(self.weight(a, ".bias") == lin for a in self.value[u].args):
                    out = u
            found[var] = (lin, call.args[0], out)
        return found

    def _add_kind(self, call) -> str | None:
        """An add of two float activations (residual / embedding sum) or of an activation and a
        weight-free tensor (the attention mask); None otherwise."""
        a, b = (self.source(x) for x in call.args)
        if a in self.weights or b in self.weights:
            return None
        return "sum" if (a in self.active and b in self.active) else "mask"

    def _scope(self, scores, linears) -> str:
        """Longest common module path of the linears whose outputs feed the score product."""
        outs = {self.source(o): lin for lin, _, o in linears.values()}
        names, stack, seen = [], [scores], set()
        while stack:
            e = self.source(stack.pop())
            if e in outs:
                names.append(outs[e].split("."))
            elif e in self.active and e not in seen:
                seen.add(e)
                stack.extend(v for v in vars_read(self.value[e]) if v in self.active or v in self.weights)
        if not names:
            raise IBertTVMError(f"FindQuantizationPoints: softmax input {scores.name} is not fed by any linear")
        common = []
        for parts in zip(*names, strict=False):  # up to the shortest path
            if len(set(parts)) > 1:
                break
            common.append(parts[0])
        return ".".join(common)

    def _finish(self, roles) -> list[QuantizationPoint]:
        rank = {v: i for i, v in enumerate(self.order)}
        points = []
        for t, r in sorted(roles.items(), key=lambda kv: rank.get(kv[0], -1)):
            named = sorted((k, n, v) for k, n, v in r["names"] if n is not None)
            if not named:
                raise IBertTVMError(f"FindQuantizationPoints: {t.name} has no weighted neighbour to name it by")
            kind = self._kind(t, r)
            name = named[0][1]
            app = sum(p.name == name for p in points)  # earlier tensors of that name: shared weights
            if app and not self._shared(name):
                raise IBertTVMError(f"FindQuantizationPoints: names not unique: {name} names two tensors, "
                                    "and no weight of it is read more than once")
            points.append(QuantizationPoint(name, kind, named[0][2], tuple(n for _, n, _ in named), app))
        return points

    def _shared(self, name: str) -> bool:
        """Whether the module ``name`` names (``<module>:<role>``) has a weight read by more than one
        binding (one layer applied several times)."""
        module = name.rpartition(":")[0]
        if module.endswith(".self"):  # an attention scope: its query/key/value
            module = module.rpartition(".")[0]
        if "_reads" not in self.__dict__:
            reads: dict = {}
            for var in self.order:
                for v in vars_read(self.value[var]):
                    if v in self.weights:
                        reads[self.weights[v]] = reads.get(self.weights[v], 0) + 1
            self.__dict__["_reads"] = reads
        return any(n > 1 for w, n in self.__dict__["_reads"].items() if w.startswith(module + "."))

    def _kind(self, t, r) -> str:
        cons, prod = r["cons"], r["prod"]
        for c, kind in (("layer_norm", "residual"), ("gelu", "gelu_in"), ("tanh", "tanh_in"), ("softmax", "scores"),
                        ("relu", "relu_in")):
            if c in cons:
                return kind
        by_prod = {"embedding": "embedding", "softmax": "probs", "tanh": "tanh_out",
                   "layer_norm": "act_channel", "gelu": "act_channel", "relu": "relu_out"}
        if prod in by_prod:
            return by_prod[prod]
        if prod == "linear" and not cons and self._only_residual(t):
            return "branch"
        if prod == "linear" and self.source(self.output).same_as(t):
            return "logits"
        return "act"

    def _only_residual(self, t) -> bool:
        users = [v for v in self.order
                 if not self.source(v).same_as(t) and any(self.source(x).same_as(t) for x in vars_read(self.value[v]))]
        return bool(users) and all(self._op(u) == "relax.add" and self._add_kind(self.value[u]) == "sum"
                                   for u in users)


def _is_scalar_const(e) -> bool:
    ty = getattr(e, "ty", None)
    return isinstance(e, GenericConst) and getattr(ty, "ndim", None) == 0


def vars_read(e) -> list:
    """The relax Vars an expression reads directly (call arguments, tuple fields); shared with
    :mod:`.lower_to_integer`."""
    if isinstance(e, relax.Var):
        return [e]
    if isinstance(e, relax.Call):
        return [v for a in e.args for v in vars_read(a)]
    if isinstance(e, relax.Tuple):
        return [v for f in e.fields for v in vars_read(f)]
    if isinstance(e, relax.TupleGetItem):
        return vars_read(e.tuple_value)
    return []
