"""quantization/diagnose.py on name-mapped architectures (issue 15: MPNet's fidelity was undiagnosed
because the weight ablation walked BERT's attribute names) and its softmax-output kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ibert_tvm.model.hf_loader import load_checkpoint
from ibert_tvm.quantization.diagnose import _rounded_softmax, ablate, encoder_linears, saturation

SENTS = ["The cat sat on the mat.", "Nope", "How do I reset my password?", "Двое мужчин играют в шахматы."]


@pytest.mark.parametrize("arch", ["BertModel", "MPNetModel", "DistilBertModel"])
def test_ablate_works_on_name_mapped_models_and_restores_the_weights(arch, tiny_factory, quantized_factory):
    ckpt = load_checkpoint(tiny_factory(arch))
    qm, _ = quantized_factory(arch)
    lins = encoder_linears(ckpt)
    assert len(lins) == 6 * int(ckpt.config.num_hidden_layers)
    assert len({id(m) for _, m in lins}) == len(lins)  # every linear once, each a distinct module
    assert all(isinstance(m, torch.nn.Linear) for _, m in lins)
    before = {n: m.weight.detach().clone() for n, m in lins}
    rows = ablate(ckpt, qm, SENTS, softmax_bits=(8, 16))
    kinds = {k for k, _, _ in rows}
    assert {"weights (int8 per-channel)", "softmax out (uint8, 2^-8)", "softmax out (uint16, 2^-16)", "gelu",
            "ln2"} <= kinds
    for k, mean, worst in rows:
        assert -1.0 <= worst <= mean <= 1.0 + 1e-9, k
    # int8 weights do change the output; the originals are back afterwards
    assert dict((k, m) for k, m, _ in rows)["weights (int8 per-channel)"] < 1.0 - 1e-7
    for n, m in lins:
        assert torch.equal(m.weight, before[n]), n
    assert saturation(ckpt, qm, SENTS)  # the hooks resolve too


def test_rounded_softmax_rounds_the_attention_probabilities_and_restores(tiny_factory):
    ckpt = load_checkpoint(tiny_factory("BertModel"))
    impl = ckpt.model.config._attn_implementation
    with _rounded_softmax(ckpt, 8):
        x = torch.randn(1, 2, 3, 5)
        p = torch.nn.functional.softmax(x, dim=-1)
        assert ckpt.model.config._attn_implementation == "eager"
    assert torch.equal(p * 256, torch.round(p * 256))  # on the 2^-8 grid
    assert (p * 256).max() <= 255
    assert torch.allclose(p, torch.softmax(x, -1), atol=0.5 / 256 + 1e-7)
    assert torch.nn.functional.softmax(x, dim=-1).mul(256).frac().abs().max() > 0  # the patch is gone
    assert ckpt.model.config._attn_implementation == impl
    # and it reaches the model's attention: a 2-bit grid changes the output, 16 bits hardly
    enc = {"input_ids": torch.tensor([[101, 2023, 2003, 1037, 3231, 102]]), "attention_mask": torch.ones(1, 6, dtype=torch.long)}
    with torch.no_grad():
        ref = ckpt.model(**enc).last_hidden_state
        with _rounded_softmax(ckpt, 2):
            coarse = ckpt.model(**enc).last_hidden_state
        with _rounded_softmax(ckpt, 16):
            fine = ckpt.model(**enc).last_hidden_state
    assert (coarse - ref).abs().max() > 10 * (fine - ref).abs().max() > 0
