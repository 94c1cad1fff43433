"""Derived figures (statistics, ratios, GEMM throughput, targets), the markdown report, the chart.

Speedups are ratios of medians measured in the same interleaved rounds of one run:
``speedup of E vs R = median(R) / median(E)`` (> 1: E is faster).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np

from .engines import ENGINES
from .profile import CATEGORIES, NONLINEAR, gemm_throughput

REFERENCES = ("torch-fp32", "ort-int8")  # the ratio columns of the report
FP32_REFERENCES = ("torch-fp32", "ort-fp32", "tvm-fp32")  # for the output check
TARGET_SPEEDUP = 1.3  # issue 6: >= 1.3x ONNX Runtime dynamic int8
TARGET_GEMM = 0.60  # int8 GEMMs at >= 60% of the measured peak
TARGET_SIZE = 0.30  # int8 artifact <= 30% of the FP32 model on disk


def stats(times_ms) -> dict:
    t = np.sort(np.asarray(times_ms, dtype=np.float64))
    q1, med, q3 = (float(np.percentile(t, p)) for p in (25, 50, 75))
    return {"n": int(t.size), "median_ms": med, "q1_ms": q1, "q3_ms": q3, "min_ms": float(t[0]),
            "max_ms": float(t[-1]), "iqr_pct": 100.0 * (q3 - q1) / med if med > 0 else None}


def median(mres: dict, engine: str, shape: str) -> float | None:
    e = mres["engines"].get(engine) or {}
    cell = (e.get("shapes") or {}).get(shape) or {}
    return (cell.get("stats") or {}).get("median_ms")


def _cosine(a, b) -> tuple[float, float]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    c = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)
    return float(c.mean()), float(c.min())


def kernel_family(name: str) -> str:
    """``fused_linear1_requantize2_int_gelu7`` -> ``fused_linear1_requantize2_int_gelu``: the same
    kernel with another layer's constants (TVM numbers the copies ``name``, ``name1``, ...)."""
    return re.sub(r"\d+$", "", name)


def group_kernels(kernels: list[dict]) -> list[dict]:
    """Kernels of one family (and shapes) merged: calls and ms summed, ``*`` marks a family of
    several copies; sorted by ms."""
    out: dict[tuple, dict] = {}
    for k in kernels:
        key = (kernel_family(k["name"]), k["category"], json.dumps(k.get("gemm")))
        if key not in out:
            out[key] = {**k, "name": key[0], "calls": 0, "ms": 0.0, "variants": 0}
        out[key]["calls"] += k["calls"]
        out[key]["ms"] += k["ms"]
        out[key]["variants"] += 1
    for g in out.values():
        if g["variants"] > 1:
            g["name"] += "*"
    return sorted(out.values(), key=lambda k: -k["ms"])


def _gemm_summary(prof: dict, peak_gops: float | None) -> dict:
    rows = gemm_throughput({"kernels": group_kernels(prof["kernels"])})
    ops = sum(2 * r["M"] * r["N"] * r["K"] * r["calls"] for r in rows)
    ms = sum(r["ms_per_call"] * r["calls"] for r in rows)
    total = ops / (ms * 1e-3) / 1e9 if ms > 0 else None
    for r in rows:
        r["pct_of_peak"] = 100.0 * r["gops"] / peak_gops if peak_gops else None
    return {"kernels": rows, "gops": total, "pct_of_peak": 100.0 * total / peak_gops if total and peak_gops else None,
            "linear_ms": ms}


def summarize(report: dict) -> dict:
    """Add ``stats`` to every timed cell, ``speedups``, output cosines, GEMM figures, ``targets``."""
    peak = report.get("peak") or {}
    peak_gops = peak.get("int8_gops")
    for mres in report["models"].values():
        shapes = sorted({s for e in mres["engines"].values() for s in (e.get("shapes") or {})},
                        key=lambda k: tuple(int(x) for x in k[1:].split("_s"))[::-1])
        for e in mres["engines"].values():
            for cell in (e.get("shapes") or {}).values():
                if cell.get("times_ms"):
                    cell["stats"] = stats(cell["times_ms"])
                elif "skipped" not in cell:
                    cell["skipped"] = "no timed run completed"
            if None not in (e.get("rss_mb_after_load"), e.get("rss_mb_before_load"), e.get("rss_mb_bare")):
                e["load_rss_mb"] = round(e["rss_mb_after_load"] - e["rss_mb_before_load"], 1)
                e["libs_rss_mb"] = round(e["rss_mb_before_load"] - e["rss_mb_bare"], 1)
        sp = mres["speedups"] = {}
        for shape in shapes:
            sp[shape] = {}
            for name in mres["engines"]:
                m = median(mres, name, shape)
                if m is None:
                    continue
                sp[shape][name] = {f"vs_{ref}": (median(mres, ref, shape) / m) if median(mres, ref, shape) else None
                                   for ref in REFERENCES}
        # outputs: every engine against the first FP32 reference that produced one
        ref = next((r for r in FP32_REFERENCES if "output" in mres["engines"].get(r, {})), None)
        for name, e in mres["engines"].items():
            if "output" in e and ref is not None:
                mean, low = _cosine(e["output"], mres["engines"][ref]["output"])
                e["cosine_vs_fp32"] = {"reference": ref, "mean": mean, "min": low}
        for e in mres["engines"].values():
            e.pop("output", None)
        ours = mres["engines"].get("tvm-int8") or {}
        mres["gemm"] = {s: _gemm_summary(p, peak_gops) for s, p in (ours.get("profiles") or {}).items()}
        for e in mres["engines"].values():
            for p in (e.get("profiles") or {}).values():
                total = sum(p["categories"].values()) or 1.0
                p["nonlinear_pct"] = 100.0 * sum(p["categories"].get(c, 0.0) for c in NONLINEAR) / total
    report["targets"] = targets(report)
    return report


def targets(report: dict) -> list[dict]:
    """The issue's three targets, each with what was measured and whether it was reached."""
    out = []

    def speed(model, shape):
        mres = report["models"].get(model)
        if mres is None:
            return None
        return ((mres.get("speedups") or {}).get(shape) or {}).get("tvm-int8", {}).get("vs_ort-int8")

    for model, shape in (("bert-base", "b8_s128"), ("minilm", "b1_s32"), ("minilm", "b1_s128")):
        v = speed(model, shape)
        out.append({"target": f"TVM int8 >= {TARGET_SPEEDUP}x ONNX Runtime int8, {model} {shape}",
                    "value": v, "display": f"{v:.2f}x" if v else "not measured",
                    "reached": None if v is None else v >= TARGET_SPEEDUP})
    for model, mres in report["models"].items():
        g = mres.get("gemm") or {}
        if g:
            best_shape = max(g, key=lambda s: g[s].get("gops") or 0)
            pct = g[best_shape].get("pct_of_peak")
            out.append({"target": f"int8 GEMMs >= {TARGET_GEMM:.0%} of the measured int8 peak, {model}",
                        "value": pct, "display": f"{pct:.0f}% ({g[best_shape]['gops']:.0f} GOP/s at {best_shape})"
                        if pct is not None else "no peak measured", "reached": None if pct is None else pct >= 100 * TARGET_GEMM})
        ours, fp32 = mres["engines"].get("tvm-int8", {}), mres["engines"].get("torch-fp32", {})
        if ours.get("size_bytes") and fp32.get("size_bytes"):
            r = ours["size_bytes"] / fp32["size_bytes"]
            out.append({"target": f"int8 artifact <= {TARGET_SIZE:.0%} of the FP32 model on disk, {model}", "value": r,
                        "display": f"{r:.0%} ({_mb(ours['size_bytes'])} vs {_mb(fp32['size_bytes'])} MB)",
                        "reached": r <= TARGET_SIZE})
    return out


# -- markdown -------------------------------------------------------------------------------------
def _mb(n) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def _ms(x) -> str:
    return "-" if x is None else (f"{x:.3g}" if x < 10 else f"{x:.0f}" if x >= 100 else f"{x:.1f}")


def _shape_label(key: str) -> str:
    b, s = key[1:].split("_s")
    return f"batch {b}, seq {s}"


def _engines_in(mres):
    return [n for n in ENGINES if n in mres["engines"]] + [n for n in mres["engines"] if n not in ENGINES]


def loaded(report: dict) -> bool:
    """Were other processes running? The 1-min load average before the bench started, and the
    one sampled after each timing round minus the bench's own threads (one engine times at a
    time with ``threads`` busy threads, so a quiet machine shows about that much load then),
    against half the CPUs. The load at the end alone would count the bench itself."""
    cpus = (report.get("machine") or {}).get("cpu", {}).get("logical_cpus") or 1
    own = (report.get("config") or {}).get("threads") or 0
    la = report.get("load_average") or {}
    excess = [x for x in (la.get("start") or [])[:1]]
    during = [r[0] for m in (report.get("models") or {}).values() for r in (m.get("load_during") or []) if r]
    excess += [x - own for x in during] or [x - own for x in (la.get("end") or [])[:1]]
    return bool(excess) and max(excess) > 0.5 * cpus


def markdown(report: dict) -> str:
    m = report.get("machine") or {}
    cpu = m.get("cpu") or {}
    cfg = report["config"]
    git = report.get("git") or {}
    v = report.get("versions") or {}
    la = report.get("load_average") or {}
    L = ["# ibert-tvm bench", ""]
    L.append(f"{report.get('started')} ({report.get('seconds')} s); git {str(git.get('commit'))[:10]}"
             f"{' (uncommitted changes)' if git.get('dirty') else ''}; {cpu.get('model')}, {cpu.get('logical_cpus')} CPUs, "
             f"{m.get('memory_gb')} GB; {cfg['threads']} threads per engine (idle threads: {cfg.get('wait_policy')}), "
             "one worker process per engine; "
             f"median of >= {cfg['runs']} timed runs ({cfg['rounds']} interleaved rounds x {cfg['runs_per_round']}) "
             "after warm-up; spread = interquartile range.")
    L.append("")
    L.append("Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val))
    L.append("")
    L.append(f"Load average (1/5/15 min) at start {la.get('start')}, at end {la.get('end')}.")
    if loaded(report):
        L += ["", "**The machine was loaded (other processes were running): absolute figures are indicative "
                  "only; ratios between engines are fairer, since engines were interleaved.**"]
    peak = report.get("peak") or {}
    if peak.get("int8_gops"):
        L += ["", f"Measured peak of this machine, {peak['threads']} threads: int8 {peak['int8_gops']:.0f} GOP/s "
                  f"(`torch._int_mm`), FP32 {peak['fp32_gflops']:.0f} GFLOP/s (`torch.mm`); best of "
                  + ", ".join(f"{r['M']}x{r['N']}x{r['K']}" for r in peak["int8"]) + "."]
    if report.get("targets"):
        L += ["", "## Targets (issue 6)", "", "| target | measured | reached |", "|---|---|---|"]
        for t in report["targets"]:
            mark = "n/a" if t["reached"] is None else ("yes" if t["reached"] else "**no**")
            L.append(f"| {t['target']} | {t['display']} | {mark} |")
    for name, mres in report["models"].items():
        L += ["", *model_markdown(name, mres, report)]
    if report.get("compare"):
        L += ["", *compare_markdown(report["compare"])]
    return "\n".join(L) + "\n"


def model_markdown(name: str, mres: dict, report: dict) -> list[str]:
    md = mres["model"]
    engines = _engines_in(mres)
    ok = [e for e in engines if mres["engines"][e].get("status") == "ok"]
    shapes = list(mres.get("speedups") or {})
    L = [f"## {name}: {md['layers']} layers, hidden {md['hidden']}, {md['heads']} heads, intermediate "
         f"{md['intermediate']} (calibration {md['calibration']})", ""]
    if not ok:
        L.append("No engine ran.")
    head = "| shape | " + " | ".join(mres["engines"][e]["label"] for e in ok) + " |"
    sep = "|---|" + "---|" * len(ok)
    L += ["### Latency, ms: median [q1-q3] (n runs)", "", head, sep]
    for s in shapes:
        cells = []
        for e in ok:
            c = mres["engines"][e]["shapes"].get(s) or {}
            st = c.get("stats")
            cells.append(f"{_ms(st['median_ms'])} [{_ms(st['q1_ms'])}-{_ms(st['q3_ms'])}] ({st['n']})" if st
                         else f"skipped: {c.get('skipped', 'not run')}")
        L.append(f"| {_shape_label(s)} | " + " | ".join(cells) + " |")
    for ref in REFERENCES:
        if ref not in ok:
            L += ["", f"(no ratios against {ref}: it did not run)"]
            continue
        L += ["", f"### Speedup vs {mres['engines'][ref]['label']} (median ratio, > 1 = faster)", "", head, sep]
        for s in shapes:
            row = mres["speedups"][s]
            L.append(f"| {_shape_label(s)} | " + " | ".join(
                f"{row[e][f'vs_{ref}']:.2f}x" if e in row and row[e].get(f"vs_{ref}") else "-" for e in ok) + " |")
    L += ["", "### Engines: artifacts, memory, outputs", "",
          "| engine | status | notes | size on disk, MB | peak RSS, MB | of which libraries, MB | cosine vs FP32 (mean/min) |",
          "|---|---|---|---|---|---|---|"]
    for e in engines:
        d = mres["engines"][e]
        spec = d.get("spec") or {}
        notes = "; ".join(str(x) for x in (spec.get("tuning"), spec.get("target") and f"target {spec['target']}",
                                            spec.get("fusions") and f"ORT fusions: {spec['fusions']}",
                                            spec.get("backend") and f"quantized engine {spec['backend']}") if x)
        cos = d.get("cosine_vs_fp32")
        status = d.get("status", "?") + (f": {d['reason']}" if d.get("reason") else "")
        L.append(f"| {d['label']} | {status} | {notes or '-'} | {_mb(d.get('size_bytes'))} | {d.get('peak_rss_mb', '-')} | "
                 f"{d.get('libs_rss_mb', '-')} | "
                 + (f"{cos['mean']:.4f} / {cos['min']:.4f} vs {cos['reference']}" if cos else "-") + " |")
    L += ["", "Size on disk: what a deployment ships (TVM: model.so + params; PyTorch FP32: safetensors; PyTorch "
              "int8: the quantized state dict; ONNX Runtime: the .onnx file). Peak RSS: the worker process's high-water "
              "mark over loading, the timed runs and the output (interpreter, engine libraries, model, activations of "
              "the largest shape), taken before the per-kernel profile, which loads a second, instrumented copy of "
              "the model in the same worker (bench.json keeps that figure as peak_rss_mb_with_profiles); of "
              "which libraries: what importing the engine added before the model was loaded. The TVM workers do not "
              "import PyTorch, as on a deployment. Cosine: pooled outputs on the same random input, batch "
              f"{(mres.get('output_shape') or ['?'])[0]}, sequence {(mres.get('output_shape') or ['?', '?'])[1]}."]
    gemm = mres.get("gemm") or {}
    peak = (report.get("peak") or {}).get("int8_gops")
    if gemm:
        L += ["", "### int8 GEMM throughput of our linear kernels (per-kernel profile of TVM int8)", "",
              f"Against the measured int8 peak {peak:.0f} GOP/s." if peak else "No peak measured.", "",
              "| shape | kernel | M x N x K | calls | ms per call | GOP/s | % of peak |", "|---|---|---|---|---|---|---|"]
        for s, g in gemm.items():
            for r in g["kernels"]:
                pct = f"{r['pct_of_peak']:.0f}%" if r.get("pct_of_peak") is not None else "-"
                L.append(f"| {_shape_label(s)} | `{r['kernel']}` | {r['M']}x{r['N']}x{r['K']} | {r['calls']} | "
                         f"{r['ms_per_call']:.3f} | {r['gops']:.0f} | {pct} |")
            if g.get("gops"):
                pct = f"{g['pct_of_peak']:.0f}%" if g.get("pct_of_peak") is not None else "-"
                L.append(f"| {_shape_label(s)} | **all linears** | | | {g['linear_ms']:.2f} ms | **{g['gops']:.0f}** | **{pct}** |")
    for e in ("tvm-int8", "tvm-int8-untuned", "tvm-fp32"):
        profs = (mres["engines"].get(e) or {}).get("profiles") or {}
        if not profs:
            continue
        cats = [c for c in CATEGORIES if any(c in p["categories"] for p in profs.values())]
        L += ["", f"### Where the time goes: {mres['engines'][e]['label']} (% of kernel time, profiled run)", "",
              "| shape | timed median, ms | profiled run, ms | " + " | ".join(cats) + " | non-linear |",
              "|---|---|---|" + "---|" * (len(cats) + 1)]
        for s, p in profs.items():
            tot = sum(p["categories"].values()) or 1.0
            med = ((mres["engines"][e]["shapes"].get(s) or {}).get("stats") or {}).get("median_ms")
            L.append(f"| {_shape_label(s)} | {_ms(med)} | {p['total_ms']:.1f} | " + " | ".join(
                f"{100 * p['categories'].get(c, 0.0) / tot:.0f}%" for c in cats) + f" | {p['nonlinear_pct']:.0f}% |")
        L += ["", "The profiled run times every VM call from Python (a few microseconds each): small kernels and "
                  "VM builtins look slower than they are."]
        if report["config"].get("profile"):
            s = max(profs, key=lambda k: profs[k]["total_ms"])
            p = profs[s]
            L += ["", f"Top kernels, {_shape_label(s)} (`*`: the same kernel with each layer's constants, summed):", "",
                  "| kernel | category | calls | ms | % |", "|---|---|---|---|---|"]
            tot = sum(p["categories"].values()) or 1.0
            for k in group_kernels(p["kernels"])[:12]:
                L.append(f"| `{k['name']}` | {k['category']} | {k['calls']} | {k['ms']:.2f} | {100 * k['ms'] / tot:.1f}% |")
    return L


# -- against an earlier run ----------------------------------------------------------------------------
def compare(report: dict, prev: dict, prev_name: str = "previous") -> dict:
    """Per (model, engine, shape) in both runs: the earlier and the new median and their ratio.

    Latencies of two runs are only as comparable as the machine's load allowed (both load
    averages are kept); speedups against a reference engine, each taken within its own run,
    compare better."""
    rows = []
    for model, mres in report["models"].items():
        pm = (prev.get("models") or {}).get(model)
        if not pm:
            continue
        for engine in _engines_in(mres):
            for shape in mres.get("speedups") or {}:
                new, old = median(mres, engine, shape), median(pm, engine, shape)
                if new is None or old is None:
                    continue
                sp_new = ((mres["speedups"].get(shape) or {}).get(engine) or {}).get("vs_ort-int8")
                sp_old = (((pm.get("speedups") or {}).get(shape) or {}).get(engine) or {}).get("vs_ort-int8")
                rows.append({"model": model, "engine": engine, "shape": shape, "previous_ms": old, "ms": new,
                             "ratio": new / old, "previous_vs_ort_int8": sp_old, "vs_ort_int8": sp_new})
    return {"previous": prev_name, "previous_started": prev.get("started"),
            "previous_git": (prev.get("git") or {}).get("commit"),
            "previous_load_average": prev.get("load_average"), "rows": rows}


def compare_markdown(cmp: dict) -> list[str]:
    L = ["## Against the previous run", "",
         f"{cmp['previous']} ({cmp.get('previous_started')}, git {str(cmp.get('previous_git'))[:10]}, load average "
         f"{(cmp.get('previous_load_average') or {}).get('start')}). Ratio < 1: faster now.", "",
         "| model | engine | shape | previous, ms | now, ms | now / previous | vs ORT int8: previous -> now |",
         "|---|---|---|---|---|---|---|"]
    for r in cmp["rows"]:
        sp = (f"{r['previous_vs_ort_int8']:.2f}x -> {r['vs_ort_int8']:.2f}x"
              if r.get("previous_vs_ort_int8") and r.get("vs_ort_int8") else "-")
        L.append(f"| {r['model']} | {r['engine']} | {_shape_label(r['shape'])} | {_ms(r['previous_ms'])} | "
                 f"{_ms(r['ms'])} | {r['ratio']:.2f} | {sp} |")
    return L


# -- chart ----------------------------------------------------------------------------------------
COLORS = {"tvm-int8": "#d62728", "tvm-int8-untuned": "#8c564b", "tvm-fp32": "#ff9896", "torch-fp32": "#1f77b4", "torch-int8": "#aec7e8",
          "ort-fp32": "#2ca02c", "ort-int8": "#98df8a"}


def chart(report: dict, path: Path) -> Path:
    """Latency (log scale, IQR whiskers) and speedup vs ONNX Runtime int8 per model, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(report["models"])
    fig, axes = plt.subplots(2, max(1, len(models)), figsize=(7 * max(1, len(models)), 8), squeeze=False)
    for col, name in enumerate(models):
        mres = report["models"][name]
        ok = [e for e in _engines_in(mres) if mres["engines"][e].get("status") == "ok"]
        shapes = list(mres.get("speedups") or {})
        width = 0.8 / max(1, len(ok))
        top = 1.5
        x = np.arange(len(shapes))
        ax = axes[0][col]
        ref = "ort-int8" if "ort-int8" in ok else "torch-fp32"
        for i, e in enumerate(ok):
            meds, lo, hi = [], [], []
            for s in shapes:
                st = (mres["engines"][e]["shapes"].get(s) or {}).get("stats")
                meds.append(st["median_ms"] if st else np.nan)
                lo.append(st["median_ms"] - st["q1_ms"] if st else 0)
                hi.append(st["q3_ms"] - st["median_ms"] if st else 0)
            ax.bar(x + i * width, meds, width, yerr=[lo, hi], label=mres["engines"][e]["label"],
                   color=COLORS.get(e), capsize=2)
            sp = [((mres["speedups"].get(s) or {}).get(e) or {}).get(f"vs_{ref}") or np.nan for s in shapes]
            bars = axes[1][col].bar(x + i * width, sp, width, color=COLORS.get(e), label=mres["engines"][e]["label"])
            for b, v in zip(bars, sp):
                if np.isfinite(v):
                    axes[1][col].annotate(f"{v:.2f}", (b.get_x() + b.get_width() / 2, min(v, 3.0)), ha="center",
                                          va="bottom", fontsize=6)
            top = max([top, *[v for v in sp if np.isfinite(v)]])
        for ax_, ylabel in ((ax, "latency, ms (log)"), (axes[1][col], f"speedup vs {ENGINES[ref].label if ref in ENGINES else ref} (> 1: faster)")):
            ax_.set_xticks(x + width * (len(ok) - 1) / 2)
            ax_.set_xticklabels([_shape_label(s).replace("batch ", "b").replace(", seq ", " s") for s in shapes])
            ax_.set_ylabel(ylabel)
        ax.set_yscale("log")
        axes[1][col].set_ylim(0, min(3.0, max(1.5, top)) * 1.45)  # headroom: the legend sits above the bars
        lo_, hi_ = ax.get_ylim()
        ax.set_ylim(lo_, hi_ * 6)
        ax.set_title(f"{name} ({mres['model']['layers']} layers, hidden {mres['model']['hidden']})")
        axes[1][col].axhline(1.0, color="black", lw=0.8)
        if ref == "ort-int8":
            axes[1][col].axhline(TARGET_SPEEDUP, color="grey", lw=0.8, ls="--", label=f"target {TARGET_SPEEDUP}x")
        ax.legend(fontsize=7, ncol=3, loc="upper left")
        axes[1][col].legend(fontsize=7, ncol=3, loc="upper left")
    note = " (machine loaded: indicative)" if loaded(report) else ""
    fig.suptitle(f"ibert-tvm bench, {report['config']['threads']} threads, median of >= {report['config']['runs']} runs{note}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def json_safe(obj):
    """NaN/inf -> None, recursively (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_outputs(report: dict, out_json: Path, *, log=print) -> dict[str, Path]:
    """JSON + markdown (+ PNG when matplotlib is available), each written atomically."""
    out_json.parent.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_json, "md": out_json.with_suffix(".md"), "png": out_json.with_suffix(".png")}
    try:
        tmp = paths["png"].with_name(f".{paths['png'].stem}.tmp-{os.getpid()}.png")
        chart(report, tmp)
        os.replace(tmp, paths["png"])
        report["chart"] = paths["png"].name
    except ModuleNotFoundError as e:
        report["chart"] = f"skipped: {e.name} is not installed (pip install matplotlib)"
        log(f"no chart: {report['chart']}")
        paths.pop("png")
    for key, text in (("md", markdown(report)), ("json", json.dumps(json_safe(report), indent=1, allow_nan=False))):
        tmp = paths[key].with_name(f".{paths[key].name}.tmp-{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, paths[key])
    return paths
