"""The golden integer executor: the quantized model in numpy, integer arithmetic only.

It runs each op plan's numpy reference in the order of ``plan.py``'s dataflow. The compiled
TVM module must equal it bit for bit, on every target.

Inputs (all int32 ``[B, S]``): ``input_ids``, ``attention_mask`` (1 = token, 0 = padding),
``token_type_ids`` (ignored by a model without token types), ``position_ids`` (see
``support.tokenize.position_ids``).
Output: ``[B, H]`` int32 mean-pooled embedding (scale ``plan.out_scale``) or ``[B, labels]``
int32 logits.

A linear with packed low-bit weights (``LinearPlan.packed``) is unpacked here with
``op.packed_weights.unpack_np`` (numpy, independent of the kernels' TE unpack) and multiplied
with ``linear_np`` like any int8 weight.
"""

from __future__ import annotations

import numpy as np

from ..op.int_matmul import batch_matmul_np, linear_np
from ..op.packed_weights import unpack_np
from ..op.pooling import POOLINGS
from .plan import LinearPlan, ModelPlan


def _heads(x: np.ndarray, n: int) -> np.ndarray:
    """[B, S, H] -> [B, n, S, H/n]"""
    B, S, H = x.shape
    return x.reshape(B, S, n, H // n).transpose(0, 2, 1, 3)


def weight_np(plan: ModelPlan, lp: LinearPlan) -> np.ndarray:
    """The int8 ``[N, K]`` weight of linear ``lp`` (unpacked once per plan when packed)."""
    if not lp.packed:
        return plan.arrays[lp.weight_name]
    cache = plan.__dict__.setdefault("_golden_unpacked", {})
    packed = plan.arrays[lp.weight_name]
    hit = cache.get(lp.name)
    if hit is None or hit[0] is not packed:
        hit = cache[lp.name] = (packed, unpack_np(packed, lp.bits, lp.in_features))
    return hit[1]


def _merge(x: np.ndarray) -> np.ndarray:
    """[B, n, S, d] -> [B, S, n*d]"""
    B, n, S, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, S, n * d)


def encoder_np(plan: ModelPlan, input_ids, attention_mask, token_type_ids, position_ids, *,
               trace: dict | None = None) -> np.ndarray:
    """Last hidden state, int8 [B, S, H] (scale: the last layer's ``ln2`` output scale).

    ``trace``: a dict that receives every node's output under its quantization-point name
    (``model/golden_trace.py`` lists them); recording changes no arithmetic."""
    rec = trace.__setitem__ if trace is not None else (lambda name, value: None)
    A = plan.arrays
    x = plan.embeddings.numpy(
        input_ids,
        position_ids,
        token_type_ids if plan.token_types else None,  # a model without token types never reads them
        A["embeddings.word_embeddings.weight"],
        A["embeddings.position_embeddings.weight"],
        A.get("embeddings.token_type_embeddings.weight"),
    )
    rec("embeddings.sum", x)
    h = plan.emb_ln.numpy(x)
    rec("embeddings.ln", h)
    if plan.project is not None:  # factorized embeddings: E -> H
        lp = plan.project
        h = lp.requant.numpy(linear_np(h, weight_np(plan, lp), A[lp.name + ".bias"]))
        rec("embeddings.project", h)
    for i, L in enumerate(plan.layers):
        p = f"layer{i}."

        def lin(lp, inp):
            return linear_np(inp, weight_np(plan, lp), A[lp.name + ".bias"])

        q = _heads(L.q.requant.numpy(lin(L.q, h)), plan.heads)
        k = _heads(L.k.requant.numpy(lin(L.k, h)), plan.heads)
        v = _heads(L.v.requant.numpy(lin(L.v, h)), plan.heads)
        if trace is not None:
            rec(p + "q", _merge(q)), rec(p + "k", _merge(k)), rec(p + "v", _merge(v))
        scores = batch_matmul_np(q, k)
        if L.rel_bias is not None:  # MPNet: the layer's integer bias table, gathered by relative position
            scores = L.rel_bias.numpy(scores, A["encoder.relative_attention_bucket"],
                                      A[L.prefix + "attention.self.position_bias"])
        pr = L.softmax.numpy(scores, attention_mask)
        rec(p + "p", pr)
        ctx = _merge(L.ctx.numpy(batch_matmul_np(pr, np.swapaxes(v, -1, -2), row_sum=L.softmax.row_sum_bound)))
        rec(p + "ctx", ctx)
        r1 = L.attn_out.requant.numpy(lin(L.attn_out, ctx), h)
        rec(p + "res1", r1)
        a = L.ln1.numpy(r1)
        rec(p + "ln1", a)
        g = L.inter.requant.numpy(lin(L.inter, a))
        rec(p + "inter", g)
        f = L.gelu.numpy_q(g)
        rec(p + "gelu", f)
        r2 = L.out.requant.numpy(lin(L.out, f), a)
        rec(p + "res2", r2)
        h = L.ln2.numpy(r2)
        rec(p + "ln2", h)
    return h


def run_golden(plan: ModelPlan, input_ids, attention_mask, token_type_ids, position_ids, *,
               trace: dict | None = None) -> np.ndarray:
    """The model's int32 output; ``trace`` as :func:`encoder_np` (plus ``pooled`` or the head's nodes)."""
    rec = trace.__setitem__ if trace is not None else (lambda name, value: None)
    h = encoder_np(plan, input_ids, attention_mask, token_type_ids, position_ids, trace=trace)
    A = plan.arrays
    if plan.head in ("token_classifier", "qa"):
        logits = plan.head_out.requant.numpy(linear_np(h, weight_np(plan, plan.head_out), A["head.out.bias"]))
        rec("head.logits", logits)
        return logits
    if plan.head != "classifier":
        pooled = POOLINGS[plan.pooling][0](h, attention_mask)
        rec("pooled", pooled)
        return pooled if plan.pool is None else plan.pool.numpy(pooled)
    cls = np.ascontiguousarray(h[:, 0, :])
    pre = plan.head_dense.requant.numpy(linear_np(cls, weight_np(plan, plan.head_dense), A["head.dense.bias"]))
    if plan.head_act == "relu":  # requantized to the ReLU output's scale, then max(x, 0)
        t = plan.relu.numpy(pre)
        rec("head.relu", t)
    elif plan.head_act == "gelu":
        rec("head.pre_gelu", pre)
        t = plan.head_gelu.numpy_q(pre)
        rec("head.gelu", t)
    else:
        rec("head.pre_tanh", pre)
        t = plan.tanh.numpy(pre)
        rec("head.tanh", t)
    logits = plan.head_out.requant.numpy(linear_np(t, weight_np(plan, plan.head_out), A["head.out.bias"]))
    rec("head.logits", logits)
    return logits
