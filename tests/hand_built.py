"""The hand-built integer BERT that ``compile`` built before issue 12: kept as a test oracle only.

``compile`` now imports the float model and lowers it with Relax passes
(``ibert_tvm.frontend.lower.integer_module``); ``tests/passes/test_lower_to_integer.py`` checks
that build against this one, tensor for tensor and output for output. Nothing in ``ibert_tvm``
imports this file.

The integer BERT as ``relax.frontend.nn`` modules, named like Hugging Face's.

Every module holds integer ``nn.Parameter``s only (int8 weights, or uint8 packed 2/3/4-bit
weights; int32 biases, int32 per-channel requantization multipliers/shifts, LayerNorm integer
affine) and emits the TE bodies of the op plans in :mod:`ibert_tvm.model.plan` through
``op.tensor_expr_op``; the parameter names equal the keys of ``ModelPlan.arrays``. Batch and
sequence length are symbolic. ``IntBertModel.export(plan)`` returns the Relax IRModule and the
ordered param names.
"""

from __future__ import annotations

from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op, spec

from ibert_tvm.model.plan import LayerPlan, LinearPlan, ModelPlan
from ibert_tvm.op.int_matmul import batch_matmul_te
from ibert_tvm.op.pooling import mean_pool_te
from ibert_tvm.schedules import GENERIC, LinearStrategy
from ibert_tvm.support.tokenize import INPUTS


class IntLinear(nn.Module):
    """``x [.., K] int8 -> requant(x W^T + b)``; weight/bias laid out by the target's
    :class:`~ibert_tvm.schedules.LinearStrategy` (generic: [N, K] int8, [N] int32); the
    requantization's per-channel tensors (``m``, ``s``; ``mb``, ``sb`` for a per-channel
    residual input) are int32 [N] parameters named as in ``requant.params()``. A packed
    low-bit linear (``lp.packed``) declares the strategy's ``packed_param_shapes`` (a uint8
    ``weight_packed``) and its kernel is the strategy's ``packed_te`` (unpack in-kernel)."""

    def __init__(self, lp: LinearPlan, in_features: int, out_features: int, strategy: LinearStrategy = GENERIC):
        self.plan = lp
        self.strategy = strategy
        if lp.packed:
            if lp.in_features != in_features:
                raise ValueError(f"{lp.name}: plan K={lp.in_features}, module K={in_features}")
            shapes = strategy.packed_param_shapes(out_features, in_features, lp.bits)
        else:
            shapes = strategy.param_shapes(out_features, in_features)
        self._packed = sorted(shapes)
        for pname, (shape, dtype) in shapes.items():
            setattr(self, pname, nn.Parameter(shape, dtype))
        rq = lp.requant.params()
        self._rq = sorted(rq)
        for pname, arr in rq.items():
            setattr(self, pname, nn.Parameter(arr.shape, str(arr.dtype)))

    def _rq_args(self):
        return [getattr(self, n) for n in self._rq]

    def acc(self, x: nn.Tensor) -> nn.Tensor:
        names = self._packed
        st, lp = self.strategy, self.plan
        if lp.packed:
            def body(a, *ps):
                return st.packed_te(a, **dict(zip(names, ps)), bits=lp.bits, k=lp.in_features)
        else:
            def body(a, *ps):
                return st.te(a, **dict(zip(names, ps)))
        return op.tensor_expr_op(body, "linear", [x, *(getattr(self, n) for n in names)])

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        rq, names = self.plan.requant, self._rq
        return op.tensor_expr_op(
            lambda a, *ps: rq.te(a, **dict(zip(names, ps))), "requantize", [self.acc(x), *self._rq_args()]
        )

    def residual(self, x: nn.Tensor, skip: nn.Tensor) -> nn.Tensor:
        """``sat24(requant(x W^T + b) + requant(skip))`` (the plan's ResidualAdd)."""
        ra, names = self.plan.requant, self._rq
        return op.tensor_expr_op(
            lambda a, b, *ps: ra.te(a, b, **dict(zip(names, ps))), "residual_add", [self.acc(x), skip, *self._rq_args()]
        )


class _Requant(nn.Module):
    """The per-channel tensors of a fused requantization (GELU output, pooled output)."""

    def __init__(self, params: dict):
        self._names = sorted(params)
        for pname, arr in params.items():
            setattr(self, pname, nn.Parameter(arr.shape, str(arr.dtype)))

    def args(self):
        return [getattr(self, n) for n in self._names]

    def kwargs(self, ps):
        return dict(zip(self._names, ps))


class IntLayerNorm(nn.Module):
    def __init__(self, ln_plan, hidden: int):
        self.plan = ln_plan
        self.g = nn.Parameter((hidden,), "int32")
        self.beta_q = nn.Parameter((hidden,), "int64")

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        return op.tensor_expr_op(lambda a, g, b: self.plan.te(a, g, b), "int_layernorm", [x, self.g, self.beta_q])


class BertEmbeddings(nn.Module):
    def __init__(self, plan: ModelPlan):
        d = plan.qm.dims
        self.plan = plan.embeddings
        self.word_embeddings = nn.Module()
        self.word_embeddings.weight = nn.Parameter((d["vocab"], d["hidden"]), "int8")
        self.position_embeddings = nn.Module()
        self.position_embeddings.weight = nn.Parameter((d["max_positions"], d["hidden"]), "int8")
        self.token_type_embeddings = nn.Module()
        self.token_type_embeddings.weight = nn.Parameter((d["type_vocab"], d["hidden"]), "int8")
        self.LayerNorm = IntLayerNorm(plan.emb_ln, d["hidden"])

    def forward(self, input_ids, token_type_ids, position_ids):
        x = op.tensor_expr_op(
            self.plan.te,
            "embedding_sum",
            [
                input_ids,
                position_ids,
                token_type_ids,
                self.word_embeddings.weight,
                self.position_embeddings.weight,
                self.token_type_embeddings.weight,
            ],
        )
        return self.LayerNorm(x)


class _Holder(nn.Module):
    """A plain namespace module so parameter names follow HF's nesting."""


class BertLayer(nn.Module):
    def __init__(self, lp: LayerPlan, plan: ModelPlan, st: LinearStrategy = GENERIC):
        H, I = plan.hidden, plan.qm.dims["intermediate"]
        self.lp, self.heads, self.head_dim, self.max_seq = lp, plan.heads, plan.head_dim, plan.max_seq
        self.attention = _Holder()
        self.attention.self = _Holder()
        self.attention.self.query = IntLinear(lp.q, H, H, st)
        self.attention.self.key = IntLinear(lp.k, H, H, st)
        self.attention.self.value = IntLinear(lp.v, H, H, st)
        self.attention.output = _Holder()
        self.attention.output.dense = IntLinear(lp.attn_out, H, H, st)
        self.attention.output.LayerNorm = IntLayerNorm(lp.ln1, H)
        self.intermediate = _Holder()
        self.intermediate.dense = IntLinear(lp.inter, H, I, st)
        self.intermediate.act = _Requant(lp.gelu.params())
        self.output = _Holder()
        self.output.dense = IntLinear(lp.out, I, H, st)
        self.output.LayerNorm = IntLayerNorm(lp.ln2, H)

    def _split(self, x: nn.Tensor) -> nn.Tensor:  # [B, S, H] -> [B, n, S, d]
        B, S, _ = x.shape
        return op.permute_dims(op.reshape(x, (B, S, self.heads, self.head_dim)), (0, 2, 1, 3))

    def forward(self, h: nn.Tensor, mask: nn.Tensor) -> nn.Tensor:
        lp, sa = self.lp, self.attention.self
        q, k, v = self._split(sa.query(h)), self._split(sa.key(h)), self._split(sa.value(h))
        scores = op.tensor_expr_op(batch_matmul_te, "qk_matmul", [q, k])
        p = op.tensor_expr_op(lp.softmax.te, "int_softmax", [scores, mask])
        vt = op.permute_dims(v, (0, 1, 3, 2))  # [B, n, d, S]
        ctx = op.tensor_expr_op(lambda a, b: batch_matmul_te(a, b, max_k=self.max_seq), "pv_matmul", [p, vt])
        ctx = op.tensor_expr_op(lp.ctx.te, "requantize", [ctx])
        B, n, S, d = ctx.shape
        ctx = op.reshape(op.permute_dims(ctx, (0, 2, 1, 3)), (B, S, n * d))
        a = self.attention.output.LayerNorm(self.attention.output.dense.residual(ctx, h))
        g = self.intermediate.dense(a)
        act = self.intermediate.act
        g = op.tensor_expr_op(lambda x, *ps: lp.gelu.te_q(x, **act.kwargs(ps)), "int_gelu", [g, *act.args()])
        return self.output.LayerNorm(self.output.dense.residual(g, a))


class IntBertModel(nn.Module):
    """Integer BERT/RoBERTa with a mean-pooling or classification head."""

    def __init__(self, plan: ModelPlan, strategy: LinearStrategy = GENERIC):
        self.mplan = plan
        self.strategy = st = strategy
        self.embeddings = BertEmbeddings(plan)
        self.encoder = _Holder()
        self.encoder.layer = nn.ModuleList([BertLayer(lp, plan, st) for lp in plan.layers])
        if plan.pool is not None:
            self.pooler = _Requant(plan.pool.params())
        if plan.head == "classifier":
            H, C = plan.hidden, plan.qm.dims["num_labels"]
            self.head = _Holder()
            self.head.dense = IntLinear(plan.head_dense, H, H, st)
            self.head.out = IntLinear(plan.head_out, H, C, st)

    def forward(self, input_ids, attention_mask, token_type_ids, position_ids):
        h = self.embeddings(input_ids, token_type_ids, position_ids)
        for layer in self.encoder.layer:
            h = layer(h, attention_mask)
        if self.mplan.head != "classifier":
            pooled = op.tensor_expr_op(mean_pool_te, "mean_pool", [h, attention_mask])
            if self.mplan.pool is None:
                return pooled
            rq, pool = self.mplan.pool, self.pooler
            return op.tensor_expr_op(lambda x, *ps: rq.te(x, **pool.kwargs(ps)), "requantize", [pooled, *pool.args()])
        cls = op.tensor_expr_op(_first_token_te, "first_token", [h])
        t = op.tensor_expr_op(self.mplan.tanh.te, "int_tanh", [self.head.dense(cls)])
        return self.head.out(t)

    def export(self):
        """-> (Relax IRModule, [param names in call order])."""
        tensor = spec.Tensor(["batch", "seq"], "int32")
        mod, params = self.export_tvm(spec={"forward": {name: tensor for name in INPUTS}})
        return mod, [name for name, _ in params]

    def arrays(self) -> dict:
        """The run-time integer tensors for this model's strategy (linears packed by it)."""
        return self.mplan.arrays_for(self.strategy)


def _first_token_te(x):
    """[B, S, H] -> [B, H]: the <s>/[CLS] token the classification head reads."""
    from tvm import te

    return te.compute((x.shape[0], x.shape[2]), lambda b, h: x[b, 0, h], name="first_token")


def hand_listed_points(ckpt):
    """The calibration hooks as ``quantization.calibrate`` listed them by hand before issue 12
    (plus the token-level heads' logits): the oracle the graph's points are checked against."""
    from ibert_tvm.quantization.calibrate import head_modules

    base = ckpt.base
    pts = [("embeddings.sum", base.embeddings.LayerNorm, "in"), ("embeddings.ln", base.embeddings.LayerNorm, "out")]
    for i, layer in enumerate(base.encoder.layer):
        a, p = layer.attention, f"layer{i}."
        pts += [
            (p + "q", a.self.query, "out"),
            (p + "k", a.self.key, "out"),
            (p + "v", a.self.value, "out"),
            (p + "ctx", a.output.dense, "in"),
            (p + "res1", a.output.LayerNorm, "in"),
            (p + "ln1", a.output.LayerNorm, "out"),
            (p + "inter", layer.intermediate.dense, "out"),
            (p + "gelu", layer.output.dense, "in"),
            (p + "res2", layer.output.LayerNorm, "in"),
            (p + "ln2", layer.output.LayerNorm, "out"),
        ]
    if ckpt.head == "classifier":
        dense, out = head_modules(ckpt)
        pts += [("head.pre_tanh", dense, "out"), ("head.logits", out, "out")]
    elif ckpt.head in ("token_classifier", "qa"):
        pts.append(("head.logits", head_modules(ckpt)[1], "out"))
    return pts
