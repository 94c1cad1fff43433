"""The README's architecture x head table: every cell no other test builds, one tiny model each.

Each cell is one case: a 1-layer random model of that ``config.json`` architecture (ALBERT: its
one shared layer applied twice; ``SESSION_BUILT``: the suite's 2-layer build reused) calibrates, compiles (llvm) float-free, equals golden bit for bit
on right-padded random batches, and tracks HF's FP32 forward on padded real sentences within
:func:`arch_checks.assert_tracks_fp32`'s bounds (token heads: per-token argmax agreement >= 0.9 and
max |error| < 0.2 x max |logit| over the real tokens; classifiers the same per text; bodies: min
cosine of the mean-pooled embeddings > 0.95). The cells already built elsewhere are named in the
README's table; this module holds the rest.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from arch_checks import assert_equals_golden, assert_float_free, assert_tracks_fp32, build_once

ONE = {"num_hidden_layers": 1}
TOKEN = {"num_hidden_layers": 1, "num_labels": 5}
CELLS = {
    # the heads BERT's and RoBERTa's bodies have that test_token_heads.py does not build
    "BertForTokenClassification": TOKEN,
    "RobertaForQuestionAnswering": ONE,
    # BERT's classifier: SESSION_BUILT (the API, CLI and server tests compile it)
    "BertForSequenceClassification": {},
    # I-BERT (its float path: RoBERTa's body)
    "IBertForSequenceClassification": {},  # SESSION_BUILT: conftest's 2-layer model
    "IBertForTokenClassification": TOKEN,
    "IBertForQuestionAnswering": ONE,
    # RoBERTa's body under other names
    "XLMRobertaForSequenceClassification": ONE,
    "XLMRobertaForTokenClassification": TOKEN,
    "XLMRobertaForQuestionAnswering": ONE,
    "CamembertModel": ONE,
    "CamembertForTokenClassification": TOKEN,
    "CamembertForQuestionAnswering": ONE,
    # the token-level heads on the bodies with their own module names (MPNet NER and ALBERT QA: the
# same overrides as tests/deploy/test_aarch64.py's BOARD_CASES, so the board test reuses the build)
    "DistilBertForTokenClassification": {"n_layers": 1, "num_labels": 5},  # DistilBertConfig's name
    "DistilBertForQuestionAnswering": {"n_layers": 1},
    "ElectraForTokenClassification": TOKEN,
    "ElectraForQuestionAnswering": ONE,
    "MPNetForTokenClassification": TOKEN,
    "MPNetForQuestionAnswering": ONE,
    "AlbertForTokenClassification": {"num_hidden_layers": 2, "num_labels": 5},  # the shared layer twice
    "AlbertForQuestionAnswering": {"num_hidden_layers": 2},
}
SHAPES = [(1, 1), (3, 33)]  # rows after the first are right-padded (conftest.random_batch)
# Compiled by other default tests already (conftest's compiled_factory, 2 layers): this module adds
# the float-free, padded-golden and FP32 checks at no build cost in the suite.
SESSION_BUILT = {"IBertForSequenceClassification", "BertForSequenceClassification"}
# Cells marked slow (README table: "(slow)"): none. Every cell runs in the default suite, which
# pytest-xdist runs on 2 workers (pyproject addopts), so the 14 cells that were slow cost ~2 min.
SLOW: set[str] = set()


@pytest.fixture(scope="module")
def cell(tiny_factory, calibration_sentences, tmp_path_factory, quantized_factory, compiled_factory):
    """arch -> (ckpt, qm, dir with q/ and out/, manifest), built on first use (``-k`` builds only its
    cells) and once per session (:func:`arch_checks.build_once`; the aarch64 board test reuses two)."""
    from ibert_tvm.model.hf_loader import load_checkpoint

    def get(arch: str):
        if arch in SESSION_BUILT:
            qm, _ = quantized_factory(arch)
            out = compiled_factory(arch)
            return load_checkpoint(tiny_factory(arch)), qm, out.parent, json.loads((out / "manifest.json").read_text())
        return build_once(arch, CELLS[arch], tiny_factory, calibration_sentences, tmp_path_factory)

    return get


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a in SLOW else a for a in CELLS])
def test_cell(arch, cell, calibration_sentences):
    """Calibrate, compile (llvm) float-free, compiled == golden bit for bit on padded batches (random
    and real sentences), within the stated bounds of HF's FP32 forward."""
    import torch

    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.plan import ModelPlan
    from ibert_tvm.quantization.calibrate import torch_inputs

    ckpt, qm, d, manifest = cell(arch)
    head = ckpt.head
    assert manifest["head"] == head
    labels = {"token_classifier": 5, "qa": 2, "classifier": 2}.get(head)
    if labels is not None:
        assert qm.dims["num_labels"] == labels
    want_shape = {"token_classifier": ["batch", "seq", 5], "qa": ["batch", "seq", 2],
                  "classifier": ["batch", 2]}.get(head, ["batch", qm.dims["hidden"]])
    assert manifest["output"]["shape"] == want_shape
    assert_float_free(manifest)
    token_types = "token_type_ids" in manifest["inputs"]
    assert token_types == (not arch.startswith(("DistilBert", "MPNet")))  # those two bodies have none
    assert_equals_golden(arch, qm, d, SHAPES, seed=13, family=ckpt.family)

    # real sentences, padded: compiled == golden, and within the stated bounds of HF's FP32 forward
    model, plan = CompiledModel(d / "out"), ModelPlan(qm)
    enc = model.tokenizer(calibration_sentences[:16])
    assert enc["attention_mask"].min() == 0
    got = model.run_ids(enc)
    np.testing.assert_array_equal(got, run_golden(plan, **enc))
    fp32_inputs = {k: v for k, v in enc.items() if token_types or k != "token_type_ids"}
    with torch.no_grad():
        res = ckpt.model(**torch_inputs(fp32_inputs))
    assert_tracks_fp32(arch, ckpt, got * plan.out_scale, res, enc["attention_mask"])


@pytest.mark.parametrize("arch", ["AlbertForQuestionAnswering", "MPNetForQuestionAnswering", "BertForQuestionAnswering"])
def test_qa_head_without_two_outputs_is_refused_before_any_work(arch, tmp_path, capsys):
    """HF splits qa_outputs' logits into start and end: a QA config with 3 labels is refused from
    config.json alone (no weights in the dir), naming the file and the field."""
    from cli_helpers import assert_user_error, cli

    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": [arch], "hidden_size": 32, "id2label": {"0": "a", "1": "b", "2": "c"}}))
    rc, _, err = cli(capsys, "calibrate", tmp_path, "-o", tmp_path / "q")
    assert_user_error(rc, err, "calibrate", f"{tmp_path}/config.json: id2label/num_labels 3", "exactly 2 outputs")
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "q").exists()


README = Path(__file__).resolve().parents[2] / "README.md"


def _table_rows() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Models and heads", 1)[1]
    lines = section[section.index("| body"):].splitlines()
    rows = []
    for ln in lines[2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip().strip("|").split("|")])
    return rows


def test_readme_table_names_a_test_for_every_cell():
    """Every cell of the README's architecture x head table names at least one ``file::test`` (or
    ``::test`` of the file named before it in the cell), each test exists in that file, and the
    cells of this module named there are exactly ``CELLS``."""
    import re

    root = README.parent
    rows = _table_rows()
    assert len(rows) >= 10
    named = set()
    for row in rows:
        if row[0].startswith("DeBERTa"):
            assert "::test_known_unsupported_architecture_is_refused_with_the_reason" in row[1]
            continue
        assert len(row) == 5, row
        for col, cell_text in zip(("embeddings", "classification", "NER", "QA"), row[1:]):
            refs = re.findall(r"`((?:tests/[\w/]+\.py)?::(\w+)(?:\[([\w-]+)\])?)`", cell_text)
            assert refs, f"{row[0]} / {col}: no test named in {cell_text!r}"
            current = None
            for ref, name, param in refs:
                path = ref.split("::")[0] or current
                assert path, f"{row[0]} / {col}: {ref} names no file"
                current = path
                src = (root / path).read_text(encoding="utf-8")
                assert re.search(rf"^def {name}\(", src, re.M), f"{path} has no test {name}"
                if path.endswith("test_head_matrix.py") and name == "test_cell":
                    assert param in CELLS, f"{row[0]} / {col}: {param!r} is no cell of this module"
                    named.add(param)
    assert named == set(CELLS), sorted(set(CELLS) ^ named)
