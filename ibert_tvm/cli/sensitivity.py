"""``ibert-tvm sensitivity MODEL --task T -o plan.json``: Q-BERT's per-layer Hessian eigenvalues ->
weight bits per layer for a size budget (the measurement lives in :mod:`ibert_tvm.quantization.sensitivity`)."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from ..errors import IBertTVMError
from ..quantization.sensitivity import (
    BitPlan,
    Eigen,
    LayerInfo,
    WEIGHT_BITS,
    assign_bits,
    check_choices,
    encoder_layer_weights,
    folded_input_scales,
    load_bits_plan,
    plan_dict,
    task_batches,
    task_loss,
    top_eigenvalues,
    train_task,
    weight_bytes,
    write_plan,
)
from ..quantization.calibrate import check_groups
from .argtypes import nonneg_int, positive_int


# -- the command --------------------------------------------------------------------------------------------------
def _budget(args, mats: list[list[np.ndarray]]) -> tuple[int, str]:
    """The budget in bytes from --budget-bytes / --budget-bits / --like-uniform, and how to say it."""
    if args.budget_bytes is not None:
        return args.budget_bytes, f"{args.budget_bytes:,} bytes"
    if args.budget_bits is not None:
        if not 0 < args.budget_bits <= 8:
            raise IBertTVMError(f"--budget-bits must be in (0, 8], got {args.budget_bits}")
        b = math.floor(sum(w.size for layer in mats for w in layer) * args.budget_bits / 8)
        return b, f"{args.budget_bits:g} bits per weight on average ({b:,} bytes)"
    u = args.like_uniform
    (u,) = check_choices([u])
    b = sum(weight_bytes(w.shape, u) for layer in mats for w in layer)
    return b, f"the size of uniform {u}-bit weights ({b:,} bytes)"


def _measure(args, task, ckpt, named) -> tuple[list[Eigen], dict]:
    """Power iteration on each of ``--subsets`` disjoint slices of the sample. One subset: the
    eigenvalues of the whole sample. K > 1: Q-BERT's sensitivity ``|mean| + std`` over the subsets
    (as ``Eigen.value``; the plan also keeps every subset's eigenvalues)."""
    from tqdm.auto import tqdm

    k = args.subsets
    n = min(args.samples, len(task.examples))
    if n < k:
        raise IBertTVMError(f"--subsets {k} needs at least {k} examples, the sample has {n}")
    edges = [round(i * n / k) for i in range(k + 1)]
    layers = [[p for _, p in layer] for layer in named]
    print(f"task: {task.name} ({task.kind}), {n} examples" + (f" in {k} subsets" if k > 1 else "")
          + f"; power iteration up to {args.iters} steps, tol {args.tol:g}, seed {args.seed}")
    runs = []
    for j in range(k):
        batches, sizes = task_batches(task, ckpt, edges[j + 1] - edges[j], args.batch, skip=edges[j])
        desc = "hessian (layers x iterations)" + (f" subset {j + 1}/{k}" if k > 1 else "")
        runs.append(top_eigenvalues(ckpt.model, batches, task_loss(task.kind), layers, iters=args.iters,
                                    tol=args.tol, seed=args.seed, weights=sizes,
                                    progress=lambda total, d=desc: tqdm(total=total, desc=d, unit="step",
                                                                        leave=False, disable=None)))
    lam = np.array([[e.value for e in run] for run in runs])  # [subsets, layers]
    measured = {"samples": n, "batch": args.batch, "iters": args.iters, "tol": args.tol, "seed": args.seed,
                "iterations": [[e.iterations for e in run] for run in runs] if k > 1 else [e.iterations for e in runs[0]],
                "converged": [all(run[i].converged for run in runs) for i in range(len(layers))]}
    if k == 1:
        return runs[0], measured
    omega = np.abs(lam.mean(0)) + lam.std(0)
    measured.update({"subsets": k, "subset_eigenvalues": lam.tolist(), "eigenvalue_mean": lam.mean(0).tolist(),
                     "eigenvalue_std": lam.std(0).tolist(),
                     "sensitivity_of": "Q-BERT's |mean| + std of the subsets' top eigenvalues (the 'eigenvalues')"})
    for i in range(len(layers)):
        print(f"  layer {i}: eigenvalues over the subsets {np.array2string(lam[:, i], precision=3)} -> "
              f"|mean| + std = {omega[i]:.4g}")
    return [Eigen(float(omega[i]), sum(run[i].iterations for run in runs), measured["converged"][i])
            for i in range(len(layers))], measured


def _reused_eigenvalues(path, model_hash: str, task: str, num_layers: int) -> tuple[list[Eigen], dict]:
    """The eigenvalues (and how they were measured) of an earlier plan for the same model and task."""
    load_bits_plan(path, num_layers)  # format and layer count
    d = json.loads(Path(path).read_text(encoding="utf-8"))
    if d.get("model_hash") != model_hash:
        raise IBertTVMError(f"--reuse {path} was measured on another model (hash {str(d.get('model_hash'))[:12]}, "
                            f"this one {model_hash[:12]})")
    if d.get("task") != task:
        raise IBertTVMError(f"--reuse {path} was measured on task {d.get('task')!r}, not {task!r}")
    lam = d.get("eigenvalues")
    if (not isinstance(lam, list) or len(lam) != num_layers
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in lam)):
        raise IBertTVMError(f"--reuse {path} has no valid eigenvalues ({num_layers} finite numbers expected)")
    conv = d.get("converged") or [False] * num_layers
    eig = [Eigen(float(x), 0, bool(c)) for x, c in zip(lam, conv)]
    keys = ("samples", "batch", "iters", "tol", "seed", "iterations", "converged", "subsets", "subset_eigenvalues",
            "eigenvalue_mean", "eigenvalue_std", "sensitivity_of")
    return eig, {**{k: d[k] for k in keys if k in d}, "eigenvalues_from": str(path)}


def _table(plan: BitPlan) -> str:
    cs = plan.choices
    head = ["layer", "lambda"] + [f"err@{b}" for b in cs] + ["bits", "bytes"]
    rows = []
    for i, lam in enumerate(plan.eigenvalues):
        b = plan.bits[i]
        rows.append([str(i), f"{lam:.4g}"] + [f"{plan.errors[i][c]:.4g}" for c in cs] + [str(b), f"{plan.sizes[i][b]:,}"])
    widths = [max(len(h), *(len(r[j]) for r in rows)) for j, h in enumerate(head)]
    fmt = lambda r: "  ".join(x.rjust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)])


def cmd(args) -> int:
    import torch

    from ..evaluate import check_task_model, resolve_model

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output)
    if out.is_dir():
        raise IBertTVMError(f"--output {out} is a directory; give a file name such as plan.json")
    choices = check_choices(args.choices)
    t0 = time.time()
    task = train_task(args.task)
    ckpt = resolve_model(args.task, args.model)
    check_task_model(task, ckpt)
    ckpt.model.set_attn_implementation("eager")  # SDPA has no double backward on CPU
    named = encoder_layer_weights(ckpt.base)
    mats = [[p.detach().double().numpy() for _, p in layer] for layer in named]
    for layer in mats:  # before any long work: groups, budget
        for w in layer:
            check_groups(args.groups, w.shape[0], f"the {w.shape[0]}x{w.shape[1]} encoder matrices")
    budget, budget_text = _budget(args, mats)
    smallest = sum(min(sum(weight_bytes(w.shape, b) for w in layer) for b in choices) for layer in mats)
    if budget < smallest:
        raise IBertTVMError(f"no bit assignment fits {budget:,} bytes: the smallest achievable size with bits "
                            f"{'/'.join(map(str, choices))} is {smallest:,} bytes")
    print(f"model: {ckpt.architecture}, {len(named)} encoder layers, from {ckpt.path}")
    t1 = time.time()
    if args.reuse:
        eig, measured = _reused_eigenvalues(args.reuse, ckpt.model_hash, args.task, len(named))
        print(f"eigenvalues from {args.reuse} (no Hessian run)")
    else:
        eig, measured = _measure(args, task, ckpt, named)
    t_eig = time.time() - t1
    folded = None
    if args.fold_activations:
        from ..evaluate import calibration_sentences

        sentences = calibration_sentences(args.task, args.fold_sentences)
        print(f"errors of the folded weights: activation channel scales from {len(sentences)} calibration sentences")
        folded = folded_input_scales(ckpt, sentences)
    infos = [LayerInfo(e.value, layer, f"layer{i}", folded[i] if folded else None)
             for i, (e, layer) in enumerate(zip(eig, mats))]
    plan = assign_bits(infos, budget, choices, args.groups)
    print(_table(plan))
    print(f"budget: {budget_text}; plan: {plan.size_bytes:,} bytes, bits {list(plan.bits)}, "
          f"objective sum |lambda| err = {plan.objective:.4g}")
    for b in choices:
        s, c = plan.uniform(b)
        print(f"  uniform {b}-bit: {s:,} bytes, objective {c:.4g}" + ("" if s <= budget else " (over budget)"))
    unconverged = [i for i, e in enumerate(eig) if not e.converged]
    if unconverged:
        print(f"note: power iteration did not reach the tolerance for layers {unconverged}")
    extra = {"model_path": str(ckpt.path), **measured, "budget": budget_text,
             "error_of": (f"W as calibrate stores it: W diag(s) quantized, s = per-channel activation scales from "
                          f"{args.fold_sentences} calibration sentences of the task" if folded else "W as loaded"),
             "seconds": {"eigenvalues": round(t_eig, 1), "total": round(time.time() - t0, 1)}}
    write_plan(out, plan_dict(plan, model=str(args.model), model_hash=ckpt.model_hash, task=args.task, extra=extra))
    print(f"wrote {out} (eigenvalues in {t_eig:.0f} s, {time.time() - t0:.0f} s in all)")
    return 0


def _bits_list(s: str) -> tuple[int, ...]:
    try:
        vals = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r}: comma-separated bit widths expected, e.g. 2,3,4,8") from None
    try:
        return check_choices(vals)
    except IBertTVMError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sensitivity", help="Q-BERT: per-layer Hessian top eigenvalues -> weight bits per layer for a size budget",
        description="Estimate each encoder layer's Hessian top eigenvalue (power iteration on Hessian-vector "
        "products of the task loss, FP32 PyTorch, on a sample of the task's training data), then choose each "
        "layer's weight bits to minimise sum |lambda| * ||Q_b(W) - W||^2 within a size budget (exact search). "
        "Writes a plan for `ibert-tvm calibrate --bits-plan`.",
    )
    p.add_argument("model", help="Hugging Face model directory, or 'default' (all-MiniLM-L6-v2; for --task "
                   "sentiment its fine-tuned sentiment classifier, trained once and cached)")
    p.add_argument("--task", required=True, help="sentiment (train split, cross-entropy), stsb (train pairs, MSE "
                   "of the embedding cosine vs score/5) or tsv:PATH (a GLUE-format TSV of training data)")
    p.add_argument("-o", "--output", required=True, help="plan JSON to write (atomically)")
    p.add_argument("--samples", type=positive_int, default=64, help="examples in the data sample (default 64)")
    p.add_argument("--batch", type=positive_int, default=8, help="batch size of the Hessian-vector products (default 8)")
    p.add_argument("--iters", type=positive_int, default=20, help="power iterations at most (default 20)")
    p.add_argument("--tol", type=float, default=1e-3, help="stop when the eigenvalue changes by less than this, "
                   "relatively (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the start vectors (default 0)")
    p.add_argument("--subsets", type=positive_int, default=1, help="split the sample into K disjoint subsets, "
                   "take each one's top eigenvalues and rank layers by Q-BERT's |mean| + std over them (default 1: "
                   "the eigenvalues of the whole sample)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--budget-bits", type=float, metavar="AVG", help="budget: AVG bits per encoder weight on "
                   "average, i.e. floor(weights * AVG / 8) bytes (3-bit rows carry a spare byte, so AVG=3 is a "
                   "little less than uniform 3-bit: use --like-uniform 3 for that)")
    g.add_argument("--budget-bytes", type=positive_int, metavar="N", help="budget: N bytes of encoder weights")
    g.add_argument("--like-uniform", type=int, metavar="B", default=3, help="budget: the packed size of every "
                   "layer at B bits (default 3)")
    p.add_argument("--groups", type=nonneg_int, default=0, help="weight scales per matrix for the error: "
                   "0 = per output row (default), 1 = per tensor, G = G groups of consecutive rows")
    p.add_argument("--choices", type=_bits_list, default=WEIGHT_BITS, help="bit widths to choose from "
                   "(default 2,3,4,8)")
    p.add_argument("--fold-activations", action="store_true", help="measure each weight's error as calibrate "
                   "stores it (default scheme): per-channel activation scales folded into W before quantizing "
                   "(outlier input channels then coarsen the other columns); default: W as loaded")
    p.add_argument("--fold-sentences", type=positive_int, default=300, help="calibration sentences for "
                   "--fold-activations (default 300, the task's training text, as `ibert-tvm eval` calibrates)")
    p.add_argument("--reuse", metavar="PLAN", help="take the eigenvalues from an earlier plan of the same model "
                   "and task (skips the Hessian run; to re-plan for another budget, groups or choices)")
    p.add_argument("--threads", type=positive_int, default=None, help="PyTorch threads (default: PyTorch's)")
    p.set_defaults(func=cmd)
