"""Golden's intermediates: every node's output of ``run_golden``, by quantization-point name.

:func:`trace_golden` runs ``golden.run_golden`` itself with a ``trace`` dict, which records each
node's value as it is computed: the same calls on the same arrays, no arithmetic of its own.

It exists so that an independent reference (``quantization.fake_quant``) can be compared with
golden node by node. Node names are the quantization-point names of ``qm.scales``:

==========================  =========================  ==================================
node                        dtype, shape               integer units (scale)
==========================  =========================  ==================================
``embeddings.sum``          int32 [B, S, H]            ``S_embeddings.sum`` (residual_bits)
``embeddings.ln``           int8  [B, S, H]            ``S_embeddings.ln`` (per channel)
``embeddings.project``      int8  [B, S, H]            ``S_embeddings.project`` (factorized
                                                       embeddings: ``embeddings.*`` above are E-wide)
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

from .golden import run_golden
from .plan import ModelPlan


def trace_golden(plan: ModelPlan, input_ids, attention_mask, token_type_ids, position_ids) -> dict[str, np.ndarray]:
    """Every node of the golden executor (the table above), plus ``"output"``.

    Inputs as ``run_golden`` (int32 ``[B, S]``). Returns name -> integer numpy array."""
    trace: dict[str, np.ndarray] = {}
    trace["output"] = run_golden(plan, input_ids, attention_mask, token_type_ids, position_ids, trace=trace)
    return trace
