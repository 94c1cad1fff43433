"""Q-BERT sensitivity: power-iteration eigenvalues vs explicit Hessians, the exact bit assignment vs
brute force, the plan file, and the CLI on a tiny model."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from ibert_tvm.errors import IBertTVMError
from ibert_tvm.quantization import sensitivity as S

torch.set_num_threads(1)

TEXTS = ["A plane is taking off.", "A man is playing a flute.", "The cat sat on the mat today.", "Nobody came.",
         "It was a wonderful, moving film.", "Terrible service and cold food."]
LABELS = [0, 1, 1, 0, 1, 0]


# -- eigenvalues ------------------------------------------------------------------------------------
def _spectrum_matrix(rng, eigs):
    q, _ = np.linalg.qr(rng.standard_normal((len(eigs), len(eigs))))
    return q @ np.diag(eigs) @ q.T


class _Quadratic(torch.nn.Module):
    """loss = c/2 x^T A x over x = [x1 (3x4 flattened), x2 (5)]; A's diagonal blocks have chosen spectra."""

    def __init__(self, rng):
        super().__init__()
        self.x1 = torch.nn.Parameter(torch.tensor(rng.standard_normal((3, 4))))
        self.x2 = torch.nn.Parameter(torch.tensor(rng.standard_normal(5)))
        a = rng.standard_normal((17, 17)) * 0.5
        a = a + a.T  # the off-diagonal coupling must not leak into the blocks' eigenvalues
        a[:12, :12] = _spectrum_matrix(rng, [5.0, 2.0, 1.5, 1.0, 0.5, 0.1, 0, 0, -0.3, -1.0, -2.0, -3.0])
        a[12:, 12:] = _spectrum_matrix(rng, [-4.0, 1.0, 0.5, 0.2, 3.0])  # dominant eigenvalue negative
        self.register_buffer("a", torch.tensor(a))

    def forward(self, c):
        x = torch.cat([self.x1.reshape(-1), self.x2])
        return 0.5 * c * (x @ self.a @ x)


def test_quadratic_known_spectrum():
    m = _Quadratic(np.random.default_rng(0))
    batches = [1.0, 3.0]
    loss = lambda model, c: model(c)  # noqa: E731
    eig = S.top_eigenvalues(m, batches, loss, [[m.x1], [m.x2]], iters=400, tol=1e-12, seed=3)
    assert eig[0].value == pytest.approx(2.0 * 5.0, rel=1e-7)  # mean of c = 2
    assert eig[1].value == pytest.approx(2.0 * -4.0, rel=1e-7)  # largest magnitude, sign kept
    assert all(e.converged for e in eig)
    # weighted batches: (3 * 1 + 1 * 3) / 4 = 1.5
    eig = S.top_eigenvalues(m, batches, loss, [[m.x1], [m.x2]], iters=400, tol=1e-12, weights=[3, 1])
    assert [e.value for e in eig] == pytest.approx([7.5, -6.0], rel=1e-7)
    assert m.a.requires_grad is False and m.x1.requires_grad and m.x2.requires_grad  # flags restored


def test_quadratic_progress_and_iteration_limit():
    m = _Quadratic(np.random.default_rng(1))
    ticks = []

    class Bar:
        def update(self, n):
            ticks.append(n)

        def set_postfix_str(self, s):
            pass

    eig = S.top_eigenvalues(m, [1.0], lambda model, c: model(c), [[m.x1], [m.x2]], iters=3, tol=0.0,
                            progress=lambda total: Bar())
    assert sum(ticks) == 2 * 3
    assert [e.iterations for e in eig] == [3, 3] and not any(e.converged for e in eig)
    assert len(eig[0].history) == 3


def test_bad_eigen_input():
    m = _Quadratic(np.random.default_rng(0))
    with pytest.raises(IBertTVMError, match="two layers"):
        S.top_eigenvalues(m, [1.0], lambda model, c: model(c), [[m.x1], [m.x1]])
    with pytest.raises(IBertTVMError, match="at least one batch"):
        S.top_eigenvalues(m, [], lambda model, c: model(c), [[m.x1]])


@pytest.fixture(scope="module")
def tiny_classifier(tiny_factory):
    """A tiny classifier (hidden 8: 512 weights per layer) with a well separated top eigenvalue."""
    from ibert_tvm.support.tokenize import Tokenizer
    from ibert_tvm.model.hf_loader import load_checkpoint, load_tokenizer_json
    from ibert_tvm.quantization.calibrate import torch_inputs

    ck = load_checkpoint(tiny_factory("BertForSequenceClassification", seed=1, hidden_size=8,
                                      num_attention_heads=2, intermediate_size=16, initializer_range=0.3))
    ck.model.set_attn_implementation("eager")
    tok = Tokenizer(load_tokenizer_json(ck.path), ck.max_positions, ck.family, ck.pad_token_id)
    batches = [{"inputs": torch_inputs(tok(TEXTS[:4])), "labels": torch.tensor(LABELS[:4])},
               {"inputs": torch_inputs(tok(TEXTS[4:])), "labels": torch.tensor(LABELS[4:])}]
    return ck, batches


def _explicit_hessian(ck, layer, batches, weights):
    """The Hessian of the weighted mean loss w.r.t. one layer's six weights, flattened, in float64:
    torch.autograd.functional.hessian over a functional_call (no power iteration, no double backward
    on module parameters)."""
    import copy

    from torch.func import functional_call

    m64 = copy.deepcopy(ck.model).double()
    full = {id(p): n for n, p in ck.model.named_parameters()}
    names = [full[id(p)] for _, p in layer]
    shapes = [p.shape for _, p in layer]
    flat0 = torch.cat([p.detach().double().reshape(-1) for _, p in layer])

    def f(flat):
        parts, k = {}, 0
        for n, s in zip(names, shapes):
            parts[n] = flat[k : k + s.numel()].reshape(s)
            k += s.numel()
        total = 0.0
        for b, w in zip(batches, weights):
            logits = functional_call(m64, parts, args=(), kwargs=b["inputs"]).logits
            total = total + w * torch.nn.functional.cross_entropy(logits, b["labels"])
        return total / sum(weights)

    return torch.autograd.functional.hessian(f, flat0, vectorize=True).numpy()


def test_tiny_model_matches_explicit_hessian(tiny_classifier):
    ck, batches = tiny_classifier
    named = S.encoder_layer_weights(ck.base)
    assert [len(x) for x in named] == [6, 6] and sum(p.numel() for _, p in named[0]) == 512
    weights = [4, 2]
    eig = S.top_eigenvalues(ck.model, batches, S.task_loss("classification"), [[p for _, p in x] for x in named],
                            iters=100, tol=1e-7, seed=0, weights=weights)
    for e, layer in zip(eig, named):
        h = _explicit_hessian(ck, layer, batches, weights)
        assert np.abs(h - h.T).max() < 1e-10
        ev = np.linalg.eigvalsh(h)
        assert ev[-1] > abs(ev[0])  # this model's dominant eigenvalue is its largest (positive) one
        assert e.converged
        assert e.value == pytest.approx(ev[-1], rel=1e-4)
    assert all(p.requires_grad for p in ck.model.parameters())  # flags restored


def test_tiny_model_deterministic(tiny_classifier):
    ck, batches = tiny_classifier
    layers = [[p for _, p in x] for x in S.encoder_layer_weights(ck.base)]
    loss = S.task_loss("classification")
    a = S.top_eigenvalues(ck.model, batches, loss, layers, iters=4, tol=0.0, seed=7)
    b = S.top_eigenvalues(ck.model, batches, loss, layers, iters=4, tol=0.0, seed=7)
    c = S.top_eigenvalues(ck.model, batches, loss, layers, iters=4, tol=0.0, seed=8)
    assert [e.history for e in a] == [e.history for e in b]
    assert [e.history for e in a] != [e.history for e in c]


# -- quantization error and sizes ------------------------------------------------------------------------
def test_error_shrinks_with_bits_and_groups():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 24)) * rng.uniform(0.1, 3.0, (32, 1))
    errs = [S.quantization_error(w, b) for b in (2, 3, 4, 8)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < errs[0] / 100
    # finer scales never lose: per tensor >= 4 groups >= 16 groups >= per row
    per = [S.quantization_error(w, 4, g) for g in (1, 4, 16, 0)]
    assert per == sorted(per, reverse=True)


def test_bad_bits_and_groups():
    w = np.ones((6, 4))
    with pytest.raises(IBertTVMError, match="among"):
        S.fake_quantize(w, 5)
    with pytest.raises(IBertTVMError, match="among"):
        S.check_choices([2, 16])
    with pytest.raises(IBertTVMError, match="does not divide"):
        S.fake_quantize(w, 4, groups=4)
    with pytest.raises(IBertTVMError, match="among"):
        S.assign_bits([S.LayerInfo(1.0, [w])], 100, choices=(1, 4))


def test_weight_bytes():
    assert S.weight_bytes((10, 384), 8) == 3840
    assert S.weight_bytes((10, 384), 4) == 10 * 192
    assert S.weight_bytes((10, 384), 3) == 10 * (144 + 1)  # the spare byte of 3-bit rows
    assert S.weight_bytes((10, 384), 2) == 10 * 96


def test_sizes_match_the_calibrated_artifact(tiny_factory, calibration_sentences):
    """The planner's bytes are what calibrate stores for the encoder linears (packed)."""
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.quantization.calibrate import calibrate
    from ibert_tvm.quantization.config import QuantConfig

    ck = load_checkpoint(tiny_factory())
    mats = [[p.detach().double().numpy() for _, p in layer] for layer in S.encoder_layer_weights(ck.base)]
    infos = [S.LayerInfo(lam, m) for lam, m in zip((1.0, 3.0), mats)]
    plan = S.assign_bits(infos, sum(S.weight_bytes(w.shape, 4) for m in mats for w in m) - 1, groups=4)
    assert plan.bits == (3, 4)  # the budget is one byte short of uniform 4: the flatter layer gives way
    qm = calibrate(ck, calibration_sentences[:8], QuantConfig(weight_groups=4, layer_weight_bits=plan.bits))
    assert qm.weight_bytes()["encoder_linears"] == plan.size_bytes


@pytest.mark.parametrize("bits,groups", [(3, 0), (4, 4), (2, 1)])
def test_folded_errors_match_the_calibrated_weights(tiny_factory, calibration_sentences, bits, groups):
    """--fold-activations: the error is that of the weights calibrate stores (W diag(s) quantized)."""
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.quantization.calibrate import calibrate
    from ibert_tvm.quantization.config import QuantConfig

    ck = load_checkpoint(tiny_factory())
    sentences = calibration_sentences[:16]
    folded = S.folded_input_scales(ck, sentences)
    qm = calibrate(ck, sentences, QuantConfig(weight_bits=bits, weight_groups=groups))
    for i, layer in enumerate(S.encoder_layer_weights(ck.base)):
        h = "embeddings.ln" if i == 0 else f"layer{i - 1}.ln2"
        act = [h, h, h, None, f"layer{i}.ln1", f"layer{i}.gelu"]  # the activation feeding each linear
        ref = mine = raw = 0.0
        for j, (name, p) in enumerate(layer):
            w = p.detach().double().numpy()
            prefix = name[: -len(".weight")]
            w_hat = qm.tensor(name).astype(np.float64) * qm.scale(name)[:, None]
            if act[j] is not None:  # per-channel input scales folded into the stored weight
                w_hat = w_hat / qm.scale(act[j])[None, :]
            assert qm.weight_bits(prefix) == bits
            ref += float(((w_hat - w) ** 2).sum())
            mine += S.quantization_error(w, bits, groups, folded[i][j])
            raw += S.quantization_error(w, bits, groups)
        assert mine == pytest.approx(ref, rel=1e-6)
        assert mine > raw  # folding the outlier channels costs accuracy
    infos = [S.LayerInfo(1.0, [p.detach().numpy() for _, p in x], input_scales=f)
             for x, f in zip(S.encoder_layer_weights(ck.base), folded)]
    errors, _ = S.layer_tables(infos, (bits,), groups)
    assert errors[0][bits] == pytest.approx(sum(S.quantization_error(p.detach().numpy(), bits, groups, s)
                                                for (_, p), s in zip(S.encoder_layer_weights(ck.base)[0], folded[0])))


# -- the assignment -------------------------------------------------------------------------------------------
def _brute(lam, errors, sizes, budget, choices):
    best = None
    for bits in itertools.product(choices, repeat=len(lam)):
        size = sum(s[b] for s, b in zip(sizes, bits))
        if size > budget:
            continue
        cost = sum(abs(x) * e[b] for x, e, b in zip(lam, errors, bits))
        if best is None or cost < best[1] - 1e-12:
            best = (bits, cost, size)
    return best


def test_solve_by_hand():
    # three layers of equal shape; sizes 2/3/4/8 bytes at 2/3/4/8 bits; errors 16/4/1/0.01
    err = {2: 16.0, 3: 4.0, 4: 1.0, 8: 0.01}
    size = {2: 2, 3: 3, 4: 4, 8: 8}
    lam = [10.0, 1.0, 0.1]
    # at uniform 3-bit size (9): (4,3,2) costs 10 + 4 + 1.6 = 15.6; (3,3,3) 44.4; (4,2,3) 26.4
    bits, cost, s = S.solve_bits(lam, [err] * 3, [size] * 3, 9)
    assert (bits, s) == ((4, 3, 2), 9) and cost == pytest.approx(15.6)
    # 14 bytes: (8,4,2) costs 0.1 + 1 + 1.6 = 2.7 beats (4,4,4) 11.1 and (8,3,3) 4.5
    assert S.solve_bits(lam, [err] * 3, [size] * 3, 14)[:1] == ((8, 4, 2),)
    assert S.solve_bits(lam, [err] * 3, [size] * 3, 24)[0] == (8, 8, 8)
    assert S.solve_bits(lam, [err] * 3, [size] * 3, 6)[0] == (2, 2, 2)
    # a negative eigenvalue counts by its magnitude; only the chosen widths are used
    assert S.solve_bits([-10.0, 1.0, 0.1], [err] * 3, [size] * 3, 10, choices=(2, 4))[0] == (4, 4, 2)
    with pytest.raises(IBertTVMError, match="smallest achievable size with bits 2/3/4/8 is 6 bytes"):
        S.solve_bits(lam, [err] * 3, [size] * 3, 5)
    with pytest.raises(IBertTVMError, match="smallest achievable size with bits 3/4 is 9 bytes"):
        S.solve_bits(lam, [err] * 3, [size] * 3, 8, choices=(3, 4))


def test_solve_matches_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(60):
        L = int(rng.integers(1, 6))
        choices = tuple(sorted(rng.choice([2, 3, 4, 8], size=int(rng.integers(1, 5)), replace=False).tolist()))
        lam = rng.uniform(-2, 10, L)
        errors, sizes = [], []
        for _ in range(L):
            e = np.sort(rng.uniform(0, 100, 4))[::-1]  # more bits, less error
            n = int(rng.integers(1, 50))
            errors.append(dict(zip((2, 3, 4, 8), e.tolist())))
            sizes.append({b: n * b + int(rng.integers(0, 3)) for b in (2, 3, 4, 8)})
        lo = sum(min(s[b] for b in choices) for s in sizes)
        hi = sum(max(s[b] for b in choices) for s in sizes)
        for budget in np.unique(rng.integers(lo, hi + 2, 6)):
            ref = _brute(lam, errors, sizes, int(budget), choices)
            bits, cost, size = S.solve_bits(lam, errors, sizes, int(budget), choices)
            assert size <= budget and size == sum(s[b] for s, b in zip(sizes, bits))
            assert cost == pytest.approx(ref[1], rel=1e-12, abs=1e-12), (trial, budget)
            assert cost == pytest.approx(sum(abs(x) * e[b] for x, e, b in zip(lam, errors, bits)))


def test_assign_bits_plan_fields():
    rng = np.random.default_rng(2)
    infos = [S.LayerInfo(lam, [rng.standard_normal((8, 16)), rng.standard_normal((16, 8))], f"l{i}")
             for i, lam in enumerate([0.5, 4.0, 1.0])]
    u3 = sum(S.weight_bytes(w.shape, 3) for x in infos for w in x.weights)
    plan = S.assign_bits(infos, u3)
    ref = _brute([x.eigenvalue for x in infos], plan.errors, plan.sizes, u3, (2, 3, 4, 8))
    assert plan.objective == pytest.approx(ref[1]) and plan.size_bytes <= u3
    assert plan.uniform(3) == (u3, pytest.approx(sum(abs(x.eigenvalue) * e[3] for x, e in zip(infos, plan.errors))))
    assert plan.objective <= plan.uniform(3)[1]
    with pytest.raises(IBertTVMError, match="smallest achievable size"):
        S.assign_bits(infos, sum(S.weight_bytes(w.shape, 2) for x in infos for w in x.weights) - 1)


# -- the plan file ------------------------------------------------------------------------------------------
def _plan_file(tmp_path, **over):
    plan = S.BitPlan((2, 8), 10, 12, 1.0, (1.0, 2.0), ({2: 1.0, 8: 0.0},) * 2, ({2: 2, 8: 8},) * 2, (2, 8), 0)
    d = S.plan_dict(plan, model="m", model_hash=None, task="sentiment")
    d.update(over)
    return S.write_plan(tmp_path / "plan.json", d)


def test_load_bits_plan(tmp_path):
    p = _plan_file(tmp_path)
    assert S.load_bits_plan(p, 2) == (2, 8)
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]  # no temporary left
    with pytest.raises(IBertTVMError, match="for 2 encoder layers, the model has 6"):
        S.load_bits_plan(p, 6)
    with pytest.raises(IBertTVMError, match="not a bits plan"):
        S.load_bits_plan(_plan_file(tmp_path, format="ibert-tvm-bits/0"), 2)
    with pytest.raises(IBertTVMError, match=r"among .* got \[5\]"):
        S.load_bits_plan(_plan_file(tmp_path, layer_bits=[2, 5]), 2)
    with pytest.raises(IBertTVMError, match=r"got \[True\]"):
        S.load_bits_plan(_plan_file(tmp_path, layer_bits=[2, True]), 2)
    with pytest.raises(IBertTVMError, match="no layer_bits"):
        S.load_bits_plan(_plan_file(tmp_path, layer_bits=None), 2)
    with pytest.raises(IBertTVMError, match="does not exist"):
        S.load_bits_plan(tmp_path / "nope.json", 2)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(IBertTVMError, match="not JSON"):
        S.load_bits_plan(tmp_path / "bad.json", 2)


# -- CLI -------------------------------------------------------------------------------------------------------
def _tsv(tmp_path, pairs=False):
    p = tmp_path / ("pairs.tsv" if pairs else "train.tsv")
    if pairs:
        rows = ["sentence1\tsentence2\tscore"] + [f"{a}\t{b}\t{s}" for a, b, s in
                                                  zip(TEXTS, TEXTS[1:] + TEXTS[:1], (0.5, 4.0, 2.5, 1.0, 5.0, 3.2))]
    else:
        rows = ["sentence\tlabel"] + [f"{t}\t{y}" for t, y in zip(TEXTS, LABELS)]
    p.write_text("\n".join(rows) + "\n")
    return p


def test_cli_classifier(tiny_factory, tmp_path, capsys):
    from ibert_tvm.cli import main

    model = tiny_factory("BertForSequenceClassification")
    out = tmp_path / "plan.json"
    rc = main(["sensitivity", str(model), "--task", f"tsv:{_tsv(tmp_path)}", "--samples", "6", "--batch", "4",
               "--iters", "4", "--like-uniform", "3", "--groups", "4", "-o", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "err@2" in text and "uniform 3-bit" in text
    d = json.loads(out.read_text())
    assert d["format"] == "ibert-tvm-bits/1" and d["layers"] == 2 and d["weight_groups"] == 4
    assert d["model"] == str(model) and len(d["model_hash"]) == 64 and d["samples"] == 6
    assert len(d["eigenvalues"]) == 2 and set(d["errors"]) == {"2", "3", "4", "8"}
    assert d["budget_bytes"] == d["uniform"]["3"]["size_bytes"] >= d["size_bytes"]
    assert d["objective"] <= d["uniform"]["3"]["objective"]
    assert S.load_bits_plan(out, 2) == tuple(d["layer_bits"])
    # re-plan from the saved eigenvalues for another budget: no Hessian run, same eigenvalues
    out2 = tmp_path / "plan-u4.json"
    tsv = f"tsv:{_tsv(tmp_path)}"
    assert main(["sensitivity", str(model), "--task", tsv, "--reuse", str(out), "--like-uniform", "4",
                 "-o", str(out2)]) == 0
    d2 = json.loads(out2.read_text())
    assert d2["eigenvalues"] == d["eigenvalues"] and d2["eigenvalues_from"] == str(out)
    assert d2["budget_bytes"] == d2["uniform"]["4"]["size_bytes"] and d2["iterations"] == d["iterations"]
    capsys.readouterr()
    other = tiny_factory("BertForSequenceClassification", seed=5)
    assert main(["sensitivity", str(other), "--task", tsv, "--reuse", str(out), "-o", str(tmp_path / "x.json")]) == 2
    assert "another model" in capsys.readouterr().err and not (tmp_path / "x.json").exists()


def test_cli_subsets(tiny_factory, tmp_path):
    """--subsets K: each disjoint slice's eigenvalues, ranked by Q-BERT's |mean| + std."""
    from ibert_tvm.cli import main

    model = tiny_factory("BertForSequenceClassification")
    tsv = f"tsv:{_tsv(tmp_path)}"
    common = ["sensitivity", str(model), "--task", tsv, "--iters", "3", "--batch", "2"]
    assert main(common + ["--samples", "6", "--subsets", "2", "-o", str(tmp_path / "k2.json")]) == 0
    assert main(common + ["--samples", "3", "-o", str(tmp_path / "first.json")]) == 0
    d = json.loads((tmp_path / "k2.json").read_text())
    lam = np.array(d["subset_eigenvalues"])
    assert lam.shape == (2, 2) and d["subsets"] == 2 and d["samples"] == 6
    np.testing.assert_allclose(d["eigenvalues"], np.abs(lam.mean(0)) + lam.std(0), rtol=1e-12)
    assert lam[0].tolist() == json.loads((tmp_path / "first.json").read_text())["eigenvalues"]  # subset 1 = examples 0-2
    assert main(common + ["--samples", "6", "--subsets", "7", "-o", str(tmp_path / "x.json")]) == 2


def test_cli_similarity_and_errors(tiny_factory, tmp_path, capsys):
    from ibert_tvm.cli import main

    model = tiny_factory()
    out = tmp_path / "plan.json"
    args = ["sensitivity", str(model), "--task", f"tsv:{_tsv(tmp_path, pairs=True)}", "--samples", "6",
            "--iters", "2", "-o", str(out)]
    assert main(args + ["--budget-bits", "2.5", "--choices", "2,4", "--fold-activations", "--fold-sentences", "8"]) == 0
    d = json.loads(out.read_text())
    assert d["task"].startswith("tsv:") and set(d["layer_bits"]) <= {2, 4} and d["choices"] == [2, 4]
    assert d["error_of"].startswith("W as calibrate stores it")
    n_weights = 2 * (4 * 32 * 32 + 2 * 32 * 64)
    assert d["budget_bytes"] == n_weights * 25 // 80 >= d["size_bytes"]
    out.unlink()
    capsys.readouterr()
    # a budget no assignment meets: exit 2, a clear message, nothing written
    assert main(args + ["--budget-bytes", "1000"]) == 2
    err = capsys.readouterr().err
    assert "smallest achievable size" in err and f"{2 * (4 * 32 * 8 + 2 * 32 * 16):,} bytes" in err
    assert main(args + ["--groups", "3"]) == 2
    assert "does not divide" in capsys.readouterr().err
    assert main(args + ["--like-uniform", "5"]) == 2
    assert "among" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):
        main(args + ["--choices", "2,6"])
    with pytest.raises(SystemExit):
        main(args + ["--budget-bytes", "10", "--like-uniform", "4"])
    # a classification task on an embedding model
    assert main(["sensitivity", str(model), "--task", f"tsv:{_tsv(tmp_path)}", "-o", str(out)]) == 2
    assert "classification" in capsys.readouterr().err and not out.exists()
