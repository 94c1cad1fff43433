"""Q-BERT sensitivity: per-layer Hessian top eigenvalues, and the bit widths they buy for a size budget.

    ibert-tvm sensitivity default --task sentiment --like-uniform 3 -o plan.json
    ibert-tvm calibrate MODEL --bits-plan plan.json -o q/

Offline analysis in float32 PyTorch: nothing here enters the compiled model, only the plan.

1. **Eigenvalues** (:func:`top_eigenvalues`). For each encoder layer ``l``, the block ``H_l`` of
   the Hessian of the task loss restricted to that layer's six linear weights (query, key, value,
   attention output, intermediate, output; :data:`LINEARS`) is probed by power iteration on
   Hessian-vector products (double backward through PyTorch autograd)::

       v <- H_l v / ||H_l v||,   lambda_l = v^T H_l v          (v a unit vector)

   stopping when ``lambda`` changes by less than ``tol`` relatively, or after ``iters`` steps.
   ``H_l v`` is the weighted mean of the per-batch products (weights = batch sizes), i.e. the
   Hessian of the mean loss over the data sample (Q-BERT averages over its data sample). The
   value is the *dominant* eigenvalue, with its sign (largest magnitude; for a trained model it
   is the largest positive one). The first-order graph of a batch is built once per iteration
   and shared by the six layers' products. The top eigenvalue of a few hundred examples is
   dominated by the few with the sharpest loss, so it moves with the sample; ``--subsets K``
   takes Q-BERT's statistic instead, ``|mean| + std`` of the K disjoint subsets' eigenvalues.

2. **Bits** (:func:`assign_bits`, :func:`solve_bits`). Q-BERT's rule: minimise

       sum_l |lambda_l| * ||Q_b(W_l) - W_l||^2       subject to  sum_l size_l(b_l) <= budget

   over ``b_l`` in ``choices`` (a subset of {2, 3, 4, 8}). ``Q_b`` is the symmetric weight
   quantizer of :func:`ibert_tvm.quantization.calibrate.quantize_weight`, dequantized again
   (:func:`fake_quantize` calls it): scale = absmax of the row / group / tensor over ``2^(b-1) - 1``,
   round to nearest (half to even, as ``np.round``), clip. ``W_l`` is the float weight as loaded.
   With per-channel activation scales (the default scheme) calibrate quantizes ``W diag(s)``
   instead (``s`` = the scales of the LayerNorm / GELU output feeding the linear), so the error
   it really makes is ``||(Q_b(W diag s) - W diag s) diag(s)^-1||^2``: ``--fold-activations``
   measures that one (:func:`folded_input_scales`; often several times larger at 3-4 bits,
   because outlier input channels set each row's absmax). ``size_l(b)`` counts the stored weight bytes only:
   ``N * row_bytes(K, b)`` packed (``op/packed_weights.py``) for b < 8, ``N * K`` at 8 bits;
   scales (in the JSON) and biases are not counted, exactly as
   ``QuantizedModel.weight_bytes()["encoder_linears"]``. The search is exact: a dynamic program
   over layers keeping only the Pareto front (size, cost) of partial assignments.

3. **The plan file** (``ibert-tvm-bits/1``, read back by :func:`load_bits_plan`)::

       {"format": "ibert-tvm-bits/1", "model": ..., "model_hash": ..., "task": ..., "layers": L,
        "layer_bits": [b_0, ..., b_{L-1}], "eigenvalues": [...], "weight_groups": G,
        "budget_bytes": ..., "size_bytes": ..., "errors": {"2": [per layer], ...}, ...}
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import IBertTVMError
from ..op.packed_weights import WEIGHT_BITS, row_bytes
from .calibrate import check_groups

PLAN_FORMAT = "ibert-tvm-bits/1"
# The six weight matrices of an encoder layer (HF names under encoder.layer.<i>.)
LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
           "intermediate.dense", "output.dense")


# -- 1. Hessian top eigenvalues -----------------------------------------------------------------
@dataclass(frozen=True)
class Eigen:
    """The dominant eigenvalue of one layer's Hessian block, as power iteration found it."""

    value: float
    iterations: int  # Hessian-vector products taken (each over the whole data sample)
    converged: bool  # relative change < tol before running out of iterations
    history: tuple = ()  # the Rayleigh quotient after each iteration


def top_eigenvalues(model, batches: Sequence, loss_fn: Callable, layers: Sequence[Sequence], *, iters: int = 20,
                    tol: float = 1e-3, seed: int = 0, weights: Sequence[float] | None = None,
                    progress=None) -> list[Eigen]:
    """Dominant eigenvalue of each layer's Hessian block, by power iteration on Hessian-vector products.

    ``model``: a ``torch.nn.Module`` (its other parameters are frozen meanwhile, then restored);
    ``batches``: the data sample, each item passed as ``loss_fn(model, batch) -> scalar tensor``
    (the batch's mean loss); ``layers``: for each layer, the parameters (tensors of ``model``)
    whose Hessian block is wanted; ``weights``: per-batch weights (default equal; pass the batch
    sizes to get the Hessian of the mean loss over all examples); ``seed``: the random start
    vectors; ``progress``: ``(total) -> bar`` with ``update(n)`` / ``set_postfix_str`` (ticks are
    layers x iterations).
    """
    import torch

    layers = [list(ps) for ps in layers]
    batches = list(batches)
    if not layers or any(not ps for ps in layers):
        raise IBertTVMError("top_eigenvalues needs at least one layer, each with at least one parameter")
    if not batches:
        raise IBertTVMError("top_eigenvalues needs at least one batch of data")
    if int(iters) < 1 or not tol >= 0:
        raise IBertTVMError(f"iters must be >= 1 and tol >= 0, got iters={iters}, tol={tol}")
    seen = set()
    for ps in layers:
        for p in ps:
            if not isinstance(p, torch.Tensor) or not p.is_floating_point():
                raise IBertTVMError("every layer parameter must be a floating-point torch tensor")
            if id(p) in seen:
                raise IBertTVMError("a parameter appears in two layers: the Hessian blocks must not overlap")
            seen.add(id(p))
    w = np.ones(len(batches)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(batches),) or not np.all(w >= 0) or w.sum() <= 0:
        raise IBertTVMError(f"weights must be {len(batches)} non-negative numbers, not all zero")
    w = (w / w.sum()).tolist()

    gen = torch.Generator().manual_seed(int(seed))
    vecs = []  # per layer: the current unit vector, as one tensor per parameter
    for ps in layers:
        v = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) for p in ps]
        vecs.append(_normalized(v))
    hist: list[list[float]] = [[] for _ in layers]
    done: dict[int, bool] = {}  # layer -> converged
    bar = progress(len(layers) * int(iters)) if progress else None
    saved = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for ps in layers:
            for p in ps:
                p.requires_grad_(True)
        for it in range(int(iters)):
            active = [i for i in range(len(layers)) if i not in done]
            if not active:
                break
            hv = {i: [torch.zeros_like(p) for p in layers[i]] for i in active}
            for b, batch in enumerate(batches):
                if w[b] == 0:
                    continue
                loss = loss_fn(model, batch)
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise IBertTVMError("loss_fn must return a scalar tensor")
                flat = [p for i in active for p in layers[i]]
                grads = torch.autograd.grad(loss, flat, create_graph=True, allow_unused=True)
                k = 0
                for j, i in enumerate(active):
                    g = grads[k : k + len(layers[i])]
                    k += len(layers[i])
                    terms = [(gg * vv).sum() for gg, vv in zip(g, vecs[i]) if gg is not None and gg.requires_grad]
                    if not terms:  # the loss is at most linear in this layer: H_l = 0
                        continue
                    h = torch.autograd.grad(sum(terms), layers[i], retain_graph=j < len(active) - 1,
                                            allow_unused=True)
                    for acc, x in zip(hv[i], h):
                        if x is not None:
                            acc.add_(x.detach(), alpha=w[b])
                del loss, grads
            for i in active:
                lam = float(sum((v.double() * h.double()).sum() for v, h in zip(vecs[i], hv[i])))
                prev = hist[i][-1] if hist[i] else None
                hist[i].append(lam)
                norm = math.sqrt(float(sum((h.double() ** 2).sum() for h in hv[i])))
                if norm == 0.0:
                    done[i] = True  # H_l v = 0: v is an eigenvector of eigenvalue 0 (and so is every v)
                elif prev is not None and abs(lam - prev) <= tol * abs(lam):
                    done[i] = True
                else:
                    vecs[i] = [h / norm for h in hv[i]]
                if bar is not None:
                    bar.update(int(iters) - it if i in done else 1)
            if bar is not None:
                bar.set_postfix_str(" ".join(f"{h[-1]:.3g}" for h in hist))
    finally:
        for p, r in saved.items():
            p.requires_grad_(r)
        if bar is not None and hasattr(bar, "close"):
            bar.close()
    return [Eigen(h[-1], len(h), done.get(i, False), tuple(h)) for i, h in enumerate(hist)]


def _normalized(v):
    n = math.sqrt(float(sum((x.double() ** 2).sum() for x in v)))
    return [x / n for x in v]


def encoder_layer_weights(model_base) -> list[list[tuple[str, object]]]:
    """``[(name, weight Parameter)] * 6`` for each encoder layer of a BERT-like base model."""
    out = []
    for i, layer in enumerate(model_base.encoder.layer):
        row = []
        for name in LINEARS:
            mod = layer
            for part in name.split("."):
                mod = getattr(mod, part)
            row.append((f"encoder.layer.{i}.{name}.weight", mod.weight))
        out.append(row)
    return out


# -- 2. quantization error, packed sizes, the bit assignment --------------------------------------
def check_choices(choices) -> tuple[int, ...]:
    """``choices`` as a sorted tuple of distinct bit widths, each in {2, 3, 4, 8}."""
    try:
        cs = list(choices)
    except TypeError:
        cs = [choices]
    bad = [c for c in cs if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or int(c) not in WEIGHT_BITS]
    if bad or not cs:
        raise IBertTVMError(f"weight bits must be among {set(WEIGHT_BITS)}, got {bad or 'none'}")
    return tuple(sorted({int(c) for c in cs}))


def fake_quantize(w: np.ndarray, bits: int, groups: int = 0) -> np.ndarray:
    """``Q_b(W)``: ``w [N, K]`` quantized as calibrate stores it
    (:func:`~ibert_tvm.quantization.calibrate.quantize_weight`: symmetric ``bits``-bit, a scale per
    output row, per tensor or per group of rows) and back, in float64."""
    from .calibrate import quantize_weight

    (bits,) = check_choices([bits])
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2:
        raise IBertTVMError(f"a weight matrix [N, K] expected, got shape {w.shape}")
    q, s = quantize_weight(w, bits, groups)
    return q.astype(np.float64) * s[:, None]


def quantization_error(w: np.ndarray, bits: int, groups: int = 0, input_scale: np.ndarray | None = None) -> float:
    """``||Q_b(W) - W||_F^2`` (float64).

    With ``input_scale`` (``[K]``, the per-channel scales of the activation feeding ``W``), the
    error of the weight calibrate really stores: it quantizes ``W' = W diag(s)`` (the folded
    weight), so the perturbation of ``W`` is ``(Q_b(W') - W') diag(s)^-1``.
    """
    w64 = np.asarray(w, dtype=np.float64)
    if input_scale is None:
        return float(((fake_quantize(w64, bits, groups) - w64) ** 2).sum())
    s = np.asarray(input_scale, dtype=np.float64)
    if s.shape != (w64.shape[1],) or not np.all(s > 0):
        raise IBertTVMError(f"input scales must be {w64.shape[1]} positive numbers, got shape {s.shape}")
    wf = w64 * s[None, :]
    return float((((fake_quantize(wf, bits, groups) - wf) / s[None, :]) ** 2).sum())


def weight_bytes(shape, bits: int) -> int:
    """Stored bytes of one ``[N, K]`` weight at ``bits``: packed rows below 8 bits, int8 at 8."""
    (bits,) = check_choices([bits])
    n, k = (int(x) for x in shape)
    return n * k if bits == 8 else n * row_bytes(k, bits)


@dataclass(frozen=True)
class LayerInfo:
    """One layer for :func:`assign_bits`: its Hessian eigenvalue and its weight matrices."""

    eigenvalue: float
    weights: Sequence[np.ndarray]
    name: str = ""
    # per weight: the per-channel activation scales calibrate folds into it, or None (see
    # quantization_error); None for the whole layer: errors of the weights as they are
    input_scales: Sequence | None = None


@dataclass(frozen=True)
class BitPlan:
    bits: tuple  # per layer
    size_bytes: int
    budget_bytes: int
    objective: float  # sum_l |lambda_l| * error_l(b_l)
    eigenvalues: tuple = ()
    errors: tuple = ()  # per layer: {bits: ||Q_b(W_l) - W_l||^2}
    sizes: tuple = ()  # per layer: {bits: bytes}
    choices: tuple = WEIGHT_BITS
    groups: int = 0
    names: tuple = field(default=())

    def uniform(self, b: int) -> tuple[int, float]:
        """(size, objective) of every layer at ``b`` bits."""
        return (sum(s[b] for s in self.sizes),
                float(sum(abs(lam) * e[b] for lam, e in zip(self.eigenvalues, self.errors))))


def solve_bits(eigenvalues: Sequence[float], errors: Sequence[dict], sizes: Sequence[dict], budget_bytes: int,
               choices=WEIGHT_BITS) -> tuple[tuple[int, ...], float, int]:
    """Exact ``argmin_b sum_l |lambda_l| errors[l][b_l]`` s.t. ``sum_l sizes[l][b_l] <= budget_bytes``.

    Returns ``(bits, objective, size)``. Dynamic program over layers on the Pareto front of partial
    assignments (a prefix with more bytes and no smaller cost than another can never win, since the
    remaining layers add the same to both). Ties: the smaller size, then the first found in
    ascending-bits order. ``IBertTVMError`` if no assignment fits, naming the smallest size.
    """
    choices = check_choices(choices)
    L = len(eigenvalues)
    if L == 0 or len(errors) != L or len(sizes) != L:
        raise IBertTVMError(f"one eigenvalue, error table and size table per layer needed, got "
                            f"{L}, {len(errors)}, {len(sizes)}")
    lam = [abs(float(x)) for x in eigenvalues]
    if not all(math.isfinite(x) for x in lam):
        raise IBertTVMError(f"eigenvalues must be finite, got {list(eigenvalues)}")
    for i in range(L):
        missing = [b for b in choices if b not in errors[i] or b not in sizes[i]]
        if missing:
            raise IBertTVMError(f"layer {i} has no error or size for {missing} bits")
    if isinstance(budget_bytes, bool) or int(budget_bytes) != budget_bytes:
        raise IBertTVMError(f"the budget must be a whole number of bytes, got {budget_bytes!r}")
    budget = int(budget_bytes)
    smallest = sum(min(int(sizes[i][b]) for b in choices) for i in range(L))
    if budget < smallest:
        raise IBertTVMError(f"no bit assignment fits {budget:,} bytes: the smallest achievable size with bits "
                            f"{'/'.join(map(str, choices))} is {smallest:,} bytes")
    # suffix minimum sizes: a prefix whose size + the rest's minimum exceeds the budget is dead
    rest = [0] * (L + 1)
    for i in range(L - 1, -1, -1):
        rest[i] = rest[i + 1] + min(int(sizes[i][b]) for b in choices)
    front: list[tuple[int, float, tuple]] = [(0, 0.0, ())]  # (size, cost, bits), size ascending, cost descending
    for i in range(L):
        best: dict[int, tuple[float, tuple]] = {}
        for size, cost, bits in front:
            for b in choices:
                s2 = size + int(sizes[i][b])
                if s2 + rest[i + 1] > budget:
                    continue
                c2 = cost + lam[i] * float(errors[i][b])
                if s2 not in best or c2 < best[s2][0]:
                    best[s2] = (c2, bits + (b,))
        front = []
        for s2 in sorted(best):
            c2, bits = best[s2]
            if not front or c2 < front[-1][1]:
                front.append((s2, c2, bits))
    size, cost, bits = front[-1]  # the cheapest (front costs fall as sizes grow)
    return bits, cost, size


def layer_tables(layers_info: Sequence[LayerInfo], choices=WEIGHT_BITS, groups: int = 0):
    """Per layer: ``{bits: ||Q_b(W) - W||^2 summed over its matrices}`` and ``{bits: stored bytes}``."""
    choices = check_choices(choices)
    errors, sizes = [], []
    for i, info in enumerate(layers_info):
        if not len(info.weights):
            raise IBertTVMError(f"layer {info.name or i} has no weights")
        for w in info.weights:
            if np.ndim(w) != 2:
                raise IBertTVMError(f"layer {info.name or i}: weights must be [N, K] matrices, got {np.shape(w)}")
            check_groups(groups, np.shape(w)[0], f"a {np.shape(w)} weight of layer {info.name or i}")
        scales = info.input_scales if info.input_scales is not None else [None] * len(info.weights)
        if len(scales) != len(info.weights):
            raise IBertTVMError(f"layer {info.name or i}: {len(scales)} input scales for {len(info.weights)} weights")
        errors.append({b: sum(quantization_error(w, b, groups, s) for w, s in zip(info.weights, scales))
                       for b in choices})
        sizes.append({b: sum(weight_bytes(np.shape(w), b) for w in info.weights) for b in choices})
    return errors, sizes


def assign_bits(layers_info: Sequence[LayerInfo], budget_bytes: int, choices=WEIGHT_BITS,
                groups: int = 0) -> BitPlan:
    """Q-BERT's bits per layer for a weight-size budget (see the module docstring)."""
    choices = check_choices(choices)
    errors, sizes = layer_tables(layers_info, choices, groups)
    eig = [float(x.eigenvalue) for x in layers_info]
    bits, cost, size = solve_bits(eig, errors, sizes, budget_bytes, choices)
    return BitPlan(bits, size, int(budget_bytes), cost, tuple(eig), tuple(errors), tuple(sizes), choices,
                   int(groups), tuple(x.name for x in layers_info))


def folded_input_scales(ckpt, sentences: Sequence[str], *, progress=None) -> list[list]:
    """Per encoder layer, per :data:`LINEARS`: the per-channel activation scales calibrate (with
    per-channel activations, the default) folds into that weight, from the FP32 ranges over
    ``sentences`` (calibrate's own observers and rule); None for the attention output dense,
    whose input (the attention context) has one per-tensor scale."""
    from .calibrate import channel_scales, collect_ranges
    from .config import QuantConfig

    obs = collect_ranges(ckpt, list(sentences), progress=progress)
    cfg = QuantConfig()

    def pc(name):  # the int8 per-channel scales calibrate gives the point (the default scheme's rule)
        gelu = name.endswith(".gelu")
        return channel_scales(obs[name], 8, name,
                              headroom=cfg.gelu_channel_headroom if gelu else cfg.ln_channel_headroom,
                              floor=cfg.gelu_channel_floor if gelu else cfg.ln_channel_floor)

    out = []
    for i in range(len(ckpt.base.encoder.layer)):
        h = pc("embeddings.ln" if i == 0 else f"layer{i - 1}.ln2")
        out.append([h, h, h, None, pc(f"layer{i}.ln1"), pc(f"layer{i}.gelu")])
    return out


# -- 3. the plan file -----------------------------------------------------------------------------------
def plan_dict(plan: BitPlan, *, model: str, model_hash: str | None, task: str, extra: dict | None = None) -> dict:
    d = {
        "format": PLAN_FORMAT,
        "model": model,
        "model_hash": model_hash,
        "task": task,
        "layers": len(plan.bits),
        "layer_bits": list(plan.bits),
        "eigenvalues": list(plan.eigenvalues),
        "weight_groups": plan.groups,
        "budget_bytes": plan.budget_bytes,
        "size_bytes": plan.size_bytes,
        "size_counts": "stored encoder-linear weight bytes (packed rows below 8 bits); scales and biases not counted",
        "objective": plan.objective,
        "choices": list(plan.choices),
        "errors": {str(b): [e[b] for e in plan.errors] for b in plan.choices},
        "sizes": {str(b): [s[b] for s in plan.sizes] for b in plan.choices},
        "uniform": {str(b): dict(zip(("size_bytes", "objective"), plan.uniform(b))) for b in plan.choices},
    }
    d.update(extra or {})
    return d


def write_plan(path: str | os.PathLike, d: dict) -> Path:
    """Write the plan JSON atomically (temporary sibling, then rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(d, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p


def load_bits_plan(path: str | os.PathLike, num_layers: int) -> tuple[int, ...]:
    """The per-layer weight bits of a ``ibert-tvm-bits/1`` plan, checked against ``num_layers``."""
    return read_bits_plan(path, num_layers)[0]


def read_bits_plan(path: str | os.PathLike, num_layers: int) -> tuple[tuple[int, ...], int | None]:
    """``(layer bits, weight groups)`` of a ``ibert-tvm-bits/1`` plan: :func:`load_bits_plan`'s bits,
    and the ``weight_groups`` its errors were computed for (``sensitivity --groups``; None if the
    plan does not say)."""
    p = Path(path)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IBertTVMError(f"bits plan {p} does not exist") from None
    except (OSError, ValueError) as e:
        raise IBertTVMError(f"bits plan {p} is unreadable or not JSON: {e}") from None
    if not isinstance(d, dict) or d.get("format") != PLAN_FORMAT:
        got = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise IBertTVMError(f"{p} is not a bits plan (format {got!r}, expected {PLAN_FORMAT!r}); "
                            "write one with `ibert-tvm sensitivity -o plan.json`")
    bits = d.get("layer_bits")
    if not isinstance(bits, list):
        raise IBertTVMError(f"bits plan {p} has no layer_bits list")
    bad = [b for b in bits if isinstance(b, bool) or not isinstance(b, int) or b not in WEIGHT_BITS]
    if bad:
        raise IBertTVMError(f"bits plan {p}: layer bits must be among {set(WEIGHT_BITS)}, got {bad}")
    if len(bits) != int(num_layers):
        raise IBertTVMError(f"bits plan {p} is for {len(bits)} encoder layers, the model has {num_layers}")
    if "layers" in d and d["layers"] != len(bits):
        raise IBertTVMError(f"bits plan {p} is inconsistent: layers={d['layers']} but {len(bits)} layer_bits")
    g = d.get("weight_groups")
    if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 0):
        raise IBertTVMError(f"bits plan {p}: weight_groups must be an integer >= 0, got {g!r}")
    return tuple(bits), g


# -- the task: data sample and loss ---------------------------------------------------------------------
def task_batches(task, ckpt, samples: int, batch_size: int, *, skip: int = 0) -> tuple[list[dict], list[int]]:
    """Examples ``skip .. skip + samples`` of ``task`` in batches (grouped by length), and the batch sizes."""
    import torch

    from ..support.tokenize import Tokenizer
    from ..model.hf_loader import load_tokenizer_json
    from .calibrate import torch_inputs

    ex = task.examples[skip : skip + samples]
    if not ex:
        raise IBertTVMError(f"task {task.name} has no examples from {skip}")
    tok = Tokenizer(load_tokenizer_json(ckpt.path), ckpt.max_positions, ckpt.family, ckpt.pad_token_id)
    ex = sorted(ex, key=lambda e: (len(e.text) + len(e.text_b or ""), e.text))
    out = []
    if task.kind == "similarity":
        top = max(1.0, float(np.abs(task.labels).max()))  # of the whole task: STS-B scores 0..5 -> 0..1
        for i in range(0, len(ex), batch_size):
            chunk = ex[i : i + batch_size]
            out.append({"a": torch_inputs(tok([e.text for e in chunk])),
                        "b": torch_inputs(tok([e.text_b for e in chunk])),
                        "target": torch.tensor([e.label / top for e in chunk], dtype=torch.float32)})
    else:
        for i in range(0, len(ex), batch_size):
            chunk = ex[i : i + batch_size]
            pairs = [e.text_b for e in chunk] if task.pairs else None
            out.append({"inputs": torch_inputs(tok([e.text for e in chunk], pairs)),
                        "labels": torch.tensor([int(e.label) for e in chunk], dtype=torch.int64)})
    return out, [len(b["target"] if "target" in b else b["labels"]) for b in out]


def task_loss(kind: str) -> Callable:
    """Classification: cross-entropy of the logits. Similarity: MSE between the cosine of the two
    mean-pooled embeddings and the score scaled to [0, 1]."""
    import torch

    def pooled(model, enc):
        hs = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(hs.dtype)
        return (hs * m).sum(1) / m.sum(1).clamp(min=1.0)

    def similarity(model, batch):
        cos = torch.nn.functional.cosine_similarity(pooled(model, batch["a"]), pooled(model, batch["b"]), dim=-1)
        return torch.nn.functional.mse_loss(cos, batch["target"])

    def classification(model, batch):
        return torch.nn.functional.cross_entropy(model(**batch["inputs"]).logits, batch["labels"])

    return similarity if kind == "similarity" else classification


def train_task(name: str):
    """The task's *training* data (sensitivity is measured where the model was fitted, not on test)."""
    from ..tasks import load_task

    return load_task(name, split="train") if name in ("sentiment", "stsb") else load_task(name)
