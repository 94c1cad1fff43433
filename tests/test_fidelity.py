"""``ibert-tvm eval --task fidelity`` and the probe set's slicing, on tiny models (no network).

The report's cosines are checked against an independent reference: the Hugging Face model run
directly (its own tokenizer call, its own mean pooling) and the compiled model's ``run_text``
output dequantized by hand. The probe set's slicing rules run on a tiny made-up corpus.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_helpers import cli

SENTENCES = [
    "How do I reset my password?",
    "No.",
    "See the link below.",
    "Turn off the lights in the kitchen.",
    "Stocks Slide as Oil Prices Jump",
    "The 3 servers at 10.0.0.1 returned HTTP 503 after 42 ms.",
    "Die Würde des Menschen ist unantastbar.",
    "A long sentence about the integer-only implementation of the transformer encoder, its requantization "
    "constants, and the way LayerNorm statistics are computed with an integer square root.",
]


def _hf_reference(model_dir, sentences):
    """FP32 mean-pooled embeddings straight from transformers (independent of ibert_tvm's encoders)."""
    import torch
    import transformers
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()  # the MiniLM tokenizer.json pads to 128 and truncates by default
    tok.no_truncation()
    model = transformers.AutoModel.from_pretrained(str(model_dir)).eval()
    out = []
    for s in sentences:
        ids = tok.encode(s).ids[: model.config.max_position_embeddings]
        x = torch.tensor([ids])
        with torch.no_grad():
            h = model(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state[0].double().numpy()
        out.append(h.mean(0))
    return np.stack(out)


def test_stats_against_hand_values():
    from ibert_tvm.fidelity import stats

    c = np.array([1.0, 0.95, 0.5, 0.89, 0.99])
    s = stats(c)
    assert s["n"] == 5 and s["worst"] == 0.5 and s["median"] == 0.95
    assert s["mean"] == pytest.approx(4.33 / 5)
    assert s["below_090"] == pytest.approx(2 / 5)  # 0.5 and 0.89
    # 1st percentile, linear interpolation between the two smallest: 0.5 + 0.04 * (0.89 - 0.5)
    assert s["p1"] == pytest.approx(0.5 + 0.04 * 0.39)
    assert stats([])["n"] == 0


def test_fidelity_cli_on_a_text_file_matches_an_independent_reference(tiny_factory, compiled_factory,
                                                                      quantized_factory, tmp_path, capsys):
    from ibert_tvm.deploy.runtime import CompiledModel

    model = tiny_factory("BertModel")
    out = compiled_factory("BertModel")
    f1, f2 = tmp_path / "mine.txt", tmp_path / "other.txt"
    f1.write_text("\n".join(SENTENCES[:5]) + "\n\n", encoding="utf-8")
    f2.write_text("\n".join(SENTENCES[5:]), encoding="utf-8")
    rep_path = tmp_path / "res" / "fid.json"
    rc, stdout, err = cli(capsys, "eval", "--task", "fidelity", "--model", model, "--artifact", out,
                          "--text", f1, "--text", f2, "-o", rep_path)
    assert rc == 0, err
    rep = json.loads(rep_path.read_text())
    assert rep["slices"] == {"mine.txt": 5, "other.txt": 3}
    got = np.array(rep["results"]["integer"]["cosines"])

    ref = _hf_reference(model, SENTENCES)
    cm = CompiledModel(out)
    q = cm.run_text(SENTENCES).astype(np.float64) * cm.output_scale
    want = (q * ref).sum(1) / np.linalg.norm(q, axis=1) / np.linalg.norm(ref, axis=1)
    np.testing.assert_allclose(got, want, atol=2e-6)
    mine = rep["results"]["integer"]["slices"]["mine.txt"]
    assert mine["worst"] == pytest.approx(want[:5].min(), abs=2e-6)
    assert mine["below_090"] == pytest.approx(np.mean(want[:5] < 0.9))
    assert rep["results"]["integer"]["slices"]["all"]["n"] == 8
    md = rep_path.with_suffix(".md").read_text()
    assert "| mine.txt | 5 |" in md and "| all | 8 |" in md and "share < 0.90" in md
    assert "| mine.txt | 5 |" in stdout

    # the quantized q/ through the golden executor gives the same cosines (golden == compiled, bit for bit)
    rep2 = tmp_path / "golden.json"
    rc, _, err = cli(capsys, "eval", "--task", "fidelity", "--model", model, "--artifact",
                     quantized_factory("BertModel")[1], "--text", f1, "--text", f2, "-o", rep2)
    assert rc == 0, err
    assert json.loads(rep2.read_text())["results"]["integer"]["cosines"] == rep["results"]["integer"]["cosines"]


def test_probe_slicing_rules_on_a_made_up_corpus():
    """The slice rules and the seeded choice, on a tiny corpus in the packages' shapes."""
    from ibert_tvm.probe import SLICES, candidates, choose, slices_digest

    chatterbot = {
        "english": ["How are you?", "Fine, thanks.", "Tell me a joke.",
                    "Here is code:\n```\nx = compute(a, b)\nreturn x\n```"],
        "german": ["Wie geht es dir?", "Schön, dich zu sehen."],
    }
    nlp = [
        "Is it raining?", "Please close the door behind you.", "Oil Prices Jump After Storm Hits Gulf",
        "The budget of $1,044,300 covers 12 posts in 2024.",
        "The Committee noted that the implementation of the programme (see annex II) depends on contributions; "
        "it requested the secretariat to report on the administrative and budgetary arrangements for the coming "
        "biennium at its next regular session.",
        "Café society met again.",  # English with a stray accent: in no slice
        "A plain declarative sentence of middling length that fits no rule at all here.",
    ]
    udhr = [("deu", "Alle Menschen sind frei und gleich an Würde und Rechten geboren."), ("eng", "All are equal.")]
    cand = candidates(chatterbot, nlp, udhr)
    assert cand["short-qa"] == ["How are you?", "Fine, thanks.", "Is it raining?"]
    assert cand["commands"] == ["Tell me a joke.", "Please close the door behind you."]
    assert cand["headlines"] == ["Oil Prices Jump After Storm Hits Gulf"]
    assert cand["numbers-code"] == ["x = compute(a, b)", "The budget of $1,044,300 covers 12 posts in 2024."]
    assert len(cand["long-technical"]) == 1 and cand["long-technical"][0].startswith("The Committee")
    assert cand["non-ascii"] == ["Alle Menschen sind frei und gleich an Würde und Rechten geboren.",
                                 "Schön, dich zu sehen."]  # "Wie geht es dir?" is ASCII
    # dedupe + exclusion + seeded choice: deterministic, disjoint, calibration text excluded
    cand["commands"].append("How are you?")
    a = choose(cand, 2, exclude={"Is it raining?"})
    assert list(a) == list(SLICES)
    assert "Is it raining?" not in a["short-qa"] and "How are you?" not in a["commands"]
    assert all(len(v) <= 2 for v in a.values())
    assert slices_digest(a) == slices_digest(choose(cand, 2, exclude={"Is it raining?"}))
