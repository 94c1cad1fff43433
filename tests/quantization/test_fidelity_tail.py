"""Issue 15: the fidelity *tail* on text unlike the calibration set, on a tiny model with planted outliers.

The tiny BERT gets two planted GELU channels in layer 0, the pattern found in all-MiniLM-L6-v2
(docs/fidelity.md):

* an outlier channel, about 6 on every token (calibration text included), so the GELU point's
  max |x| is large while most channels stay near 1;
* a channel that never fires on the calibration text (STS-B train) but fires on a token the
  calibration text lacks ("ж"), at about a quarter of the outlier's value, and feeds the output
  dense with large weights.

With the old rule (each GELU channel's range = its own max over the calibration text), the
second channel's range is GELU's negative dip (~0.17) and its values saturate ~10x on the probe
sentences. The integer model (golden executor, bit-identical to compiled) is compared with the
FP32 Hugging Face model; the bound must hold with the default scheme and fail with the old rule.
"""

from __future__ import annotations

import numpy as np
import pytest

TOKEN = 1186  # "ж" in the MiniLM vocabulary; no sentence of the calibration fixture has it
DEAD, OUTLIER = 7, 11  # layer-0 intermediate channels
PROBE = ["ж", "ж ж", "Nope ж", "see ж below", "ж ж ж ж", "yes ж", "A man ж is playing a guitar.", "ж?"]
TAIL_BOUND = 0.98  # worst cosine to FP32 over PROBE


@pytest.fixture(scope="module")
def planted(tiny_factory, tmp_path_factory):
    import torch
    import transformers

    from ibert_tvm.model.hf_loader import default_model_dir

    src = tiny_factory("BertModel")
    m = transformers.BertModel.from_pretrained(str(src)).eval()
    g = torch.Generator().manual_seed(15)
    with torch.no_grad():
        grab = []
        hk = m.encoder.layer[0].attention.output.LayerNorm.register_forward_hook(lambda mod, a, o: grab.append(o))
        m(input_ids=torch.tensor([[101, TOKEN, 102]]))
        hk.remove()
        v = grab[0][0, 1]
        inter = m.encoder.layer[0].intermediate.dense
        out = m.encoder.layer[0].output.dense
        inter.weight[DEAD] = v / v.norm()  # fires in the direction of "ж"'s LayerNorm output only
        inter.bias[DEAD] = -0.7 * v.norm()
        out.weight[:, DEAD] = torch.randn(out.weight.shape[0], generator=g) * 3.0
        inter.weight[OUTLIER] *= 0.1  # ~6 on every token
        inter.bias[OUTLIER] = 6.0
        out.weight[:, OUTLIER] *= 0.05
    d = tmp_path_factory.mktemp("planted")
    m.save_pretrained(str(d))
    (d / "tokenizer.json").write_bytes((default_model_dir() / "tokenizer.json").read_bytes())
    return d


def _worst(ckpt, qm, sentences):
    from ibert_tvm.fidelity import cosine_rows, fp32_embedder, golden_embedder

    return cosine_rows(golden_embedder(qm)(sentences), fp32_embedder(ckpt)(sentences))


def test_tail_bound_holds_with_the_default_and_fails_with_the_old_rule(planted, calibration_sentences):
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.quantization.calibrate import calibrate, collect_ranges
    from ibert_tvm.quantization.config import QuantConfig

    assert not any("ж" in s for s in calibration_sentences)
    ckpt = load_checkpoint(planted)
    # the plant is what it claims: silent on the calibration text, firing on the probe sentences
    cal = collect_ranges(ckpt, calibration_sentences)["layer0.gelu"]
    probe = collect_ranges(ckpt, PROBE)["layer0.gelu"]
    assert cal.channel_absmax[DEAD] < 0.2 and probe.channel_absmax[DEAD] > 5 * cal.channel_absmax[DEAD]
    assert cal.channel_absmax[OUTLIER] > 5.0 and probe.channel_absmax[DEAD] < cal.absmax / 3

    old = calibrate(ckpt, calibration_sentences, QuantConfig(gelu_channel_floor=1e-4))
    new = calibrate(ckpt, calibration_sentences)  # the default scheme
    c_old, c_new = _worst(ckpt, old, PROBE), _worst(ckpt, new, PROBE)
    assert c_old.min() < TAIL_BOUND, f"the old rule should fail the bound: {np.round(c_old, 4)}"
    assert c_new.min() >= TAIL_BOUND, f"tail bound {TAIL_BOUND} not met: {np.round(c_new, 4)}"
    # and the calibration-like text does not get worse by more than a hair
    s_old = _worst(ckpt, old, calibration_sentences[:16])
    s_new = _worst(ckpt, new, calibration_sentences[:16])
    assert s_new.mean() >= s_old.mean() - 0.002, (s_old.mean(), s_new.mean())
