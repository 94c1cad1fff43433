"""Golden's intermediates: ``run_golden`` repeated step by step, recording every node's output.

:func:`trace_golden` makes exactly the calls of ``golden.encoder_np`` / ``golden.run_golden`` on
the same :class:`~ibert_tvm.model.plan.ModelPlan` objects (each plan's ``numpy()``, ``linear_np``,
``batch_matmul_np``, ``mean_pool_np``), in the same order and on the same arrays: it changes no
arithmetic, it only keeps the values. ``tests/quantization/test_fake_quant.py`` checks that its
``"output"`` equals ``run_golden`` bit for bit, so the copy cannot drift silently.

It exists so that an independent reference (``quantization.fake_quant``) can be compared with
golden node by node. Node names are the quantization-point names of ``qm.scales``:

==========================  =========================  ==================================
node                        dtype, shape               integer units (scale)
==========================  =========================  ==================================
``embeddings.sum``          int32 [B, S, H]            ``S_embeddings.sum`` (residual_bits)
``embeddings.ln``           int8  [B, S, H]            ``S_embeddings.ln`` (per channel)
``layer{i}.q`` / k / v      int8  [B, S, H]            ``S_layer{i}.q`` / k / v
``layer{i}.p``              uint8 [B, heads, S, S]     2^-8 (i-softmax output)
``layer{i}.ctx``            int8  [B, S, H]            ``S_layer{i}.ctx``
``layer{i}.res1``           int32 [B, S, H]            ``S_layer{i}.res1`` (residual_bits)
``layer{i}.ln1``            int8  [B, S, H]            ``S_layer{i}.ln1`` (per channel)
``layer{i}.inter``          int16 [B, S, I]            ``S_layer{i}.inter`` (gelu_in_bits)
``layer{i}.gelu``           int8  [B, S, I]            ``S_layer{i}.gelu`` (per channel)
``layer{i}.res2``           int32 [B, S, H]            ``S_layer{i}.res2``
``layer{i}.ln2``            int8  [B, S, H]            ``S_layer{i}.ln2`` (per channel)
``pooled`` (mean pooling)   int32 [B, H]               last ``ln2`` scale / 2^FRAC_BITS
``head.pre_tanh``           int16 [B, H]               ``S_head.pre_tanh`` (tanh_in_bits)
``head.tanh``               int8  [B, H]               ``plan.tanh.out_scale`` (1/127)
``head.logits``             int32 [B, labels]          ``S_head.logits``
``output``                  int32                      ``plan.out_scale`` (== run_golden)
==========================  =========================  ==================================
"""

from __future__ import annotations

import numpy as np

from ..op.int_matmul import batch_matmul_np, linear_np
from ..op.pooling import mean_pool_np
from .golden import _heads, weight_np
from .plan import ModelPlan


def _merge(x: np.ndarray) -> np.ndarray:
    """[B, n, S, d] -> [B, S, n*d]"""
    B, n, S, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, S, n * d)


def trace_golden(plan: ModelPlan, input_ids, attention_mask, token_type_ids, position_ids) -> dict[str, np.ndarray]:
    """Every node of the golden executor (see the module docstring), plus ``"output"``.

    Inputs as ``run_golden`` (int32 ``[B, S]``). Returns name -> integer numpy array."""
    A = plan.arrays
    t: dict[str, np.ndarray] = {}
    x = plan.embeddings.numpy(
        input_ids,
        position_ids,
        token_type_ids,
        A["embeddings.word_embeddings.weight"],
        A["embeddings.position_embeddings.weight"],
        A["embeddings.token_type_embeddings.weight"],
    )
    t["embeddings.sum"] = x
    h = t["embeddings.ln"] = plan.emb_ln.numpy(x)
    for i, L in enumerate(plan.layers):
        p = f"layer{i}."

        def lin(lp, inp):
            return linear_np(inp, weight_np(plan, lp), A[lp.name + ".bias"])

        q = _heads(L.q.requant.numpy(lin(L.q, h)), plan.heads)
        k = _heads(L.k.requant.numpy(lin(L.k, h)), plan.heads)
        v = _heads(L.v.requant.numpy(lin(L.v, h)), plan.heads)
        t[p + "q"], t[p + "k"], t[p + "v"] = _merge(q), _merge(k), _merge(v)
        pr = t[p + "p"] = L.softmax.numpy(batch_matmul_np(q, k), attention_mask)
        ctx = L.ctx.numpy(batch_matmul_np(pr, np.swapaxes(v, -1, -2)))
        ctx = t[p + "ctx"] = _merge(ctx)
        r1 = t[p + "res1"] = L.attn_out.requant.numpy(lin(L.attn_out, ctx), h)
        a = t[p + "ln1"] = L.ln1.numpy(r1)
        g = t[p + "inter"] = L.inter.requant.numpy(lin(L.inter, a))
        f = t[p + "gelu"] = L.gelu.numpy_q(g)
        r2 = t[p + "res2"] = L.out.requant.numpy(lin(L.out, f), a)
        h = t[p + "ln2"] = L.ln2.numpy(r2)
    if plan.head != "classifier":
        pooled = t["pooled"] = mean_pool_np(h, attention_mask)
        t["output"] = pooled if plan.pool is None else plan.pool.numpy(pooled)
        return t
    cls = np.ascontiguousarray(h[:, 0, :])
    pre = linear_np(cls, weight_np(plan, plan.head_dense), A["head.dense.bias"])
    pre = t["head.pre_tanh"] = plan.head_dense.requant.numpy(pre)
    th = t["head.tanh"] = plan.tanh.numpy(pre)
    t["head.logits"] = plan.head_out.requant.numpy(linear_np(th, weight_np(plan, plan.head_out), A["head.out.bias"]))
    t["output"] = t["head.logits"]
    return t
