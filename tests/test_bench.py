"""``ibert-tvm bench``: the harness on a tiny model, skipped engines, the report's arithmetic.

No test asserts a speed: timings on a shared machine are what they are. The tests check that
the harness runs engines in their own processes and reports well-formed JSON/markdown/PNG,
that ratios are taken between medians of the same run, and that an engine that cannot run
is skipped with its reason instead of ending the run.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from ibert_tvm.benchmarks import report as rep
from ibert_tvm.benchmarks.harness import BenchConfig, run_bench
from ibert_tvm.benchmarks.profile import category, gemm_dims
from ibert_tvm.benchmarks.report import write_outputs
from ibert_tvm.cli import main
from ibert_tvm.errors import IBertTVMError


def _strict_json(path: Path) -> dict:
    def bad(x):
        raise ValueError(f"non-standard JSON constant {x}")

    return json.loads(path.read_text(), parse_constant=bad)


def _check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000


# -- the report's arithmetic, on a synthetic run (no processes) ------------------------------------
def _synthetic(times: dict[str, dict[str, list[float]]], **engine_extra) -> dict:
    engines = {}
    for name, cells in times.items():
        engines[name] = {"label": name.upper(), "precision": "int8" if "int8" in name else "fp32", "status": "ok",
                         "shapes": {k: {"times_ms": v, "first_run_ms": v[0]} for k, v in cells.items()},
                         **engine_extra.get(name, {})}
    model = {"name": "m", "path": "/nowhere", "family": "bert", "head": "embedding", "pad_id": 0, "vocab": 100,
             "type_vocab": 2, "max_seq": 128, "layers": 2, "hidden": 64, "heads": 4, "intermediate": 128,
             "calibration": "stsb:8"}
    return {"format": "ibert-tvm-bench/1", "started": "t", "seconds": 1.0,
            "config": BenchConfig(models=["m"], engines=list(times)).to_dict(),
            "machine": {"cpu": {"model": "cpu", "logical_cpus": 2}, "memory_gb": 1.0},
            "versions": {"python": "3"}, "git": {"commit": "abc", "dirty": False},
            "load_average": {"start": [0.1, 0.1, 0.1], "end": [0.2, 0.1, 0.1]},
            "peak": {"threads": 2, "int8_gops": 1000.0, "fp32_gflops": 100.0,
                     "int8": [{"M": 1, "N": 1, "K": 1, "gops": 1000.0}]},
            "models": {"m": {"model": model, "engines": engines}}}


def test_ratios_are_medians_of_the_same_run(tmp_path):
    rng = np.random.default_rng(0)
    times = {
        "tvm-int8": {"b1_s32": list(rng.uniform(1.0, 2.0, 21)), "b8_s128": list(rng.uniform(10, 12, 20))},
        "torch-fp32": {"b1_s32": list(rng.uniform(4.0, 9.0, 20)), "b8_s128": list(rng.uniform(50, 80, 22))},
        "ort-int8": {"b1_s32": list(rng.uniform(1.5, 2.5, 20)), "b8_s128": list(rng.uniform(12, 20, 20))},
    }
    prof = {"total_ms": 10.0, "categories": {"linear": 6.0, "softmax": 2.0, "layernorm": 1.0, "vm builtins": 1.0},
            "kernels": [{"name": "fused_linear_requantize", "category": "linear", "calls": 4, "ms": 4.0,
                         "shapes": [], "gemm": [1024, 64, 64]},
                        {"name": "int_softmax", "category": "softmax", "calls": 2, "ms": 2.0, "shapes": [], "gemm": None}]}
    r = _synthetic(times, **{"tvm-int8": {"profiles": {"b8_s128": prof}, "size_bytes": 25, "output": [[1.0, 2.0]]},
                             "torch-fp32": {"size_bytes": 100, "output": [[1.0, 2.1]]}})
    rep.summarize(r)
    m = r["models"]["m"]
    for name, cells in times.items():
        for shape, t in cells.items():
            st = m["engines"][name]["shapes"][shape]["stats"]
            assert st["n"] == len(t)
            assert st["median_ms"] == pytest.approx(float(np.median(t)))
            assert st["q1_ms"] <= st["median_ms"] <= st["q3_ms"]
            assert st["min_ms"] == pytest.approx(min(t)) and st["max_ms"] == pytest.approx(max(t))
            for ref in ("torch-fp32", "ort-int8"):
                want = np.median(times[ref][shape]) / np.median(t)
                assert m["speedups"][shape][name][f"vs_{ref}"] == pytest.approx(want)
    # GEMM throughput: 2*M*N*K per call over the profiled time, against the measured peak
    g = m["gemm"]["b8_s128"]
    assert g["gops"] == pytest.approx(2 * 1024 * 64 * 64 * 4 / 4e-3 / 1e9)
    assert g["pct_of_peak"] == pytest.approx(100 * g["gops"] / 1000.0)
    assert m["engines"]["tvm-int8"]["profiles"]["b8_s128"]["nonlinear_pct"] == pytest.approx(30.0)
    cos = m["engines"]["tvm-int8"]["cosine_vs_fp32"]
    assert cos["reference"] == "torch-fp32" and 0.99 < cos["mean"] < 1.0
    assert "output" not in m["engines"]["tvm-int8"]  # raw outputs do not go into the JSON
    size = [t for t in r["targets"] if "artifact" in t["target"]]
    assert size and size[0]["value"] == pytest.approx(0.25) and size[0]["reached"] is True
    md = rep.markdown(r)
    assert "| shape | TVM-INT8 | TORCH-FP32 | ORT-INT8 |" in md
    assert "### Speedup vs TORCH-FP32" in md and "### Speedup vs ORT-INT8" in md
    assert "indicative only" not in md  # the load average was low
    paths = write_outputs(r, tmp_path / "r.json", log=lambda *a: None)
    assert _strict_json(paths["json"])["models"]["m"]["speedups"]["b1_s32"]["tvm-int8"]["vs_torch-fp32"] > 0
    assert paths["md"].read_text() == rep.markdown(r)
    if "png" in paths:
        _check_png(paths["png"])


def test_compare_with_an_earlier_report():
    old = _synthetic({"tvm-int8": {"b1_s32": [4.0, 4.0, 4.0]}, "ort-int8": {"b1_s32": [2.0, 2.0, 2.0]}})
    new = _synthetic({"tvm-int8": {"b1_s32": [1.0, 1.0, 1.0]}, "ort-int8": {"b1_s32": [2.0, 2.0, 2.0]},
                      "torch-fp32": {"b1_s32": [9.0, 9.0, 9.0]}})
    rep.summarize(old)
    rep.summarize(new)
    cmp = rep.compare(new, json.loads(json.dumps(old)), "old.json")
    rows = {r["engine"]: r for r in cmp["rows"]}
    assert set(rows) == {"tvm-int8", "ort-int8"}  # torch-fp32 was not in the earlier run
    assert rows["tvm-int8"]["ratio"] == pytest.approx(0.25)
    assert rows["tvm-int8"]["previous_vs_ort_int8"] == pytest.approx(0.5) and rows["tvm-int8"]["vs_ort_int8"] == 2.0
    new["compare"] = cmp
    assert "| m | tvm-int8 | batch 1, seq 32 | 4 | 1 | 0.25 | 0.50x -> 2.00x |" in rep.markdown(new)


def test_missing_reference_and_skipped_cells_are_reported():
    r = _synthetic({"tvm-int8": {"b1_s32": [1.0, 2.0, 3.0]}, "torch-fp32": {"b1_s32": [4.0, 5.0, 6.0]}})
    r["models"]["m"]["engines"]["tvm-int8"]["shapes"]["b8_s128"] = {"skipped": "one run takes 99 s"}
    r["models"]["m"]["engines"]["ort-int8"] = {"label": "ORT", "precision": "int8", "status": "skipped",
                                              "reason": "onnxruntime is not installed", "shapes": {}}
    r["load_average"]["start"] = [7.0, 6.0, 5.0]
    rep.summarize(r)
    sp = r["models"]["m"]["speedups"]["b1_s32"]["tvm-int8"]
    assert sp["vs_torch-fp32"] == pytest.approx(2.5) and sp["vs_ort-int8"] is None
    md = rep.markdown(r)
    assert "skipped: one run takes 99 s" in md
    assert "skipped: onnxruntime is not installed" in md
    assert "(no ratios against ort-int8: it did not run)" in md
    assert "indicative only" in md  # load average 7 on 2 CPUs


def test_gemm_dims_and_categories():
    x, b = [[2, 16, 384], "int8"], [[384], "int32"]
    assert gemm_dims([x, b, [[1536, 384], "int8"], b, [[2, 16, 1536], "int8"]]) == (32, 1536, 384)
    # VNNI layout: [N/16, K/4, 16, 4]; the real N is the output's last dim
    assert gemm_dims([x, [[24, 96, 16, 4], "int8"], b, [[2, 16, 384], "int32"]]) == (32, 384, 384)
    assert gemm_dims([[[2, 16, 384], "int32"]]) is None
    assert category("fused_linear1_requantize2_int_gelu") == "linear"
    assert category("fused_vnni_a_u8_vnni_matmul_linear_bias") == "linear"
    assert category("fused_pv_matmul_requantize1") == "attention matmul"
    assert category("int_softmax3") == "softmax" and category("int_layernorm") == "layernorm"
    assert category("vm.builtin.alloc_tensor") == "vm builtins"
    assert category("fused_matmul_add2", [[[32, 64], "float32"]]) == "linear"
    assert category("matmul7", [[[1, 4, 16, 8], "float32"]]) == "attention matmul"


# -- CLI: bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, msg", [
    (["--engines", "tvm-int8,bogus"], "unknown engine bogus"),
    (["--shapes", "8y128"], "bad shape"),
    (["--shapes", "0x128"], "must be >= 1"),
    (["-o", "bench.txt"], "must end in .json"),
    (["--models", "/no/such/model", "--no-peak"], "does not exist"),
    (["--compare", "/no/such/report.json"], "not a readable JSON report"),
])
def test_bench_bad_input(argv, msg, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", *argv, "--cache", str(tmp_path / "cache")]) == 2
    assert msg in capsys.readouterr().err
    assert not list(tmp_path.glob("*.json"))


def test_engine_lists():
    from ibert_tvm.benchmarks.engines import DEFAULT_ENGINES as ENGINE_NAMES, EXTRA_ENGINES
    from ibert_tvm.cli.bench import parse_list, parse_shapes

    assert parse_list("all", ENGINE_NAMES, extra=EXTRA_ENGINES) == list(ENGINE_NAMES)
    got = parse_list("all,tvm-int8-untuned,tvm-int8", ENGINE_NAMES, extra=EXTRA_ENGINES)
    assert got == [*ENGINE_NAMES, "tvm-int8-untuned"]
    # the harness runs tvm-int8 first (its trial budget sets TVM FP32's), whatever the order given
    assert BenchConfig(models=["m"], engines=["ort-int8", "tvm-fp32", "tvm-int8"]).engines == [
        "tvm-int8", "tvm-fp32", "ort-int8"]
    assert parse_shapes("8x128, 1x32") == [(8, 128), (1, 32)]


def test_config_validation():
    with pytest.raises(IBertTVMError, match="unknown engine"):
        BenchConfig(models=["m"], engines=["nope"])
    with pytest.raises(IBertTVMError, match="runs must be at least 1"):
        BenchConfig(models=["m"], runs=0)
    cfg = BenchConfig(models=["m"], shapes=[(8, 128), (1, 32), (1, 32)], runs=20, rounds=3)
    assert cfg.shapes == [(1, 32), (8, 128)] and cfg.runs_per_round == 7  # 3 x 7 >= 20


# -- the real harness on a tiny model -------------------------------------------------------------
def test_bench_tiny_model_end_to_end(tiny_factory, compiled_factory, tmp_path):
    """tvm-int8 (prebuilt), tvm-fp32, torch-fp32 and ort-int8 in their own workers, 2 shapes, 4 runs."""
    model = str(tiny_factory("BertModel"))
    cfg = BenchConfig(models=[model], engines=["tvm-int8", "tvm-fp32", "torch-fp32", "ort-int8"],
                      shapes=[(1, 8), (2, 16)], runs=4, rounds=2, warmup=1, cache=str(tmp_path / "cache"),
                      prebuilt={model: str(compiled_factory("BertModel"))}, target="llvm", profile=True,
                      peak_runs=2, pause_s=0.0)
    logs = []
    r = run_bench(cfg, log=logs.append, log_dir=tmp_path / "logs")
    paths = write_outputs(r, tmp_path / "out" / "bench.json", log=logs.append)
    data = _strict_json(paths["json"])
    assert data["format"] == "ibert-tvm-bench/1"
    assert data["git"]["commit"] and data["versions"]["apache-tvm"] and data["load_average"]["start"]
    assert data["config"]["wait_policy"] in ("spin", "passive")
    assert data["peak"]["int8_gops"] > 0 and data["peak"]["fp32_gflops"] > 0
    (name, m), = data["models"].items()
    assert m["model"]["layers"] == 2 and m["model"]["hidden"] == 32
    engines = list(cfg.engines)
    if importlib.util.find_spec("onnxruntime") is None:  # an optional package (pip install onnxruntime onnx)
        assert "onnxruntime is not installed" in m["engines"]["ort-int8"]["reason"]
        engines.remove("ort-int8")
    for e in engines:
        d = m["engines"][e]
        assert d["status"] == "ok", (e, d.get("reason"), logs)
        assert d["size_bytes"] > 0 and d["peak_rss_mb"] > 0
        assert "serial_thresholds" not in d  # llvm (and non-TVM) builds have no table
        if d.get("profiles"):  # the deployment's figure is taken before the profile's second model
            assert d["peak_rss_mb"] <= d["peak_rss_mb_with_profiles"], d
        assert d["cosine_vs_fp32"]["mean"] > 0.9  # every engine computes the same function
        for shape in ("b1_s8", "b2_s16"):
            st = d["shapes"][shape]["stats"]
            assert st["n"] == 4 and len(d["shapes"][shape]["times_ms"]) == 4
            assert 0 < st["min_ms"] <= st["median_ms"] <= st["max_ms"]
            for r in ("torch-fp32", "ort-int8"):
                if r in engines:
                    ref = m["engines"][r]["shapes"][shape]["stats"]["median_ms"]
                    assert m["speedups"][shape][e][f"vs_{r}"] == pytest.approx(ref / st["median_ms"])
    assert m["engines"]["torch-fp32"]["cosine_vs_fp32"]["mean"] == pytest.approx(1.0)
    # the TVM workers never imported PyTorch: far smaller than the torch worker
    assert m["engines"]["tvm-int8"]["libs_rss_mb"] < m["engines"]["torch-fp32"]["libs_rss_mb"]
    # per-kernel profile of the integer model -> GEMM throughput of every linear, M = batch * seq
    g = m["gemm"]["b2_s16"]
    assert g["kernels"] and {k["M"] for k in g["kernels"]} == {32}
    # hidden 32, FFN 64: q/k/v as one linear (N = 96), attention out (32), FFN in (64) and out (32)
    assert {(k["N"], k["K"]) for k in g["kernels"]} == {(96, 32), (32, 32), (64, 32), (32, 64)}
    assert g["gops"] > 0 and g["pct_of_peak"] > 0
    cats = m["engines"]["tvm-int8"]["profiles"]["b2_s16"]["categories"]
    assert {"linear", "attention matmul", "softmax", "layernorm"} <= set(cats)
    assert m["engines"]["tvm-fp32"]["profiles"]  # --profile profiles TVM FP32 too
    md = paths["md"].read_text()
    for e in engines:
        assert m["engines"][e]["label"] in md
    assert "### int8 GEMM throughput" in md and "Top kernels" in md
    if "png" in paths:
        _check_png(paths["png"])


@pytest.mark.parametrize("policy", ["passive", "spin"])
def test_bench_records_the_serial_table(policy, tiny_factory, x86_compiled, tmp_path):
    """An x86 build's worker is fed the table of the bench's wait policy (the passive one when idle
    threads sleep), and bench.json says which; the llvm build of the end-to-end test has none."""
    model = str(tiny_factory("BertModel"))
    cfg = BenchConfig(models=[model], engines=["tvm-int8"], shapes=[(1, 8)], runs=2, rounds=1, warmup=1,
                      cache=str(tmp_path / "cache"), prebuilt={model: str(x86_compiled)}, target="x86",
                      peak_runs=1, pause_s=0.0, wait_policy=policy, peak=False)
    r = run_bench(cfg, log=lambda *a: None, log_dir=tmp_path / "logs")
    (m,) = r["models"].values()
    d = m["engines"]["tvm-int8"]
    assert d["status"] == "ok", d.get("reason")
    assert d["serial_thresholds"] == policy


def test_engine_that_cannot_run_is_skipped(tiny_factory, tmp_path, monkeypatch):
    """onnxruntime "missing" (its import fails in every child) and a corrupt prebuilt artifact."""
    fake = tmp_path / "fakepkgs" / "onnxruntime"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError('simulated', name='onnxruntime')\n")
    monkeypatch.setenv("PYTHONPATH", str(fake.parent))
    broken = tmp_path / "broken-out"
    broken.mkdir()
    (broken / "manifest.json").write_text(json.dumps({"format": "ibert-tvm-compiled/1", "target": "llvm"}))
    model = str(tiny_factory("BertModel"))
    cfg = BenchConfig(models=[model], engines=["tvm-int8", "torch-fp32", "ort-fp32", "ort-int8"],
                      shapes=[(1, 8)], runs=2, rounds=1, warmup=1, cache=str(tmp_path / "cache"),
                      prebuilt={model: str(broken)}, peak=False, pause_s=0.0)
    logs = []
    r = run_bench(cfg, log=logs.append, log_dir=tmp_path / "logs")
    (m,) = r["models"].values()
    for e in ("ort-fp32", "ort-int8"):
        assert m["engines"][e]["status"] == "skipped"
        assert "onnxruntime is not installed (pip install onnxruntime onnx)" in m["engines"][e]["reason"]
        assert any(f"skipping {e}: onnxruntime is not installed" in line for line in logs)
    ours = m["engines"]["tvm-int8"]
    assert ours["status"] == "failed" and "broken-out/manifest.json" in ours["reason"]  # prepared; its worker refuses it
    assert m["engines"]["torch-fp32"]["status"] == "ok"
    assert m["engines"]["torch-fp32"]["shapes"]["b1_s8"]["stats"]["n"] == 2
    paths = write_outputs(r, tmp_path / "r.json", log=logs.append)
    md = paths["md"].read_text()
    assert "skipped: onnxruntime is not installed" in md and "failed:" in md
    assert _strict_json(paths["json"])["models"]


def test_loaded_counts_other_processes_not_the_bench_itself():
    r = _synthetic({"tvm-int8": {"b1_s32": [1.0, 2.0, 3.0]}})
    threads = r["config"]["threads"]
    assert threads == 2
    # quiet: before the run 0.1; during and after it, about the bench's own 2 busy threads
    r["load_average"] = {"start": [0.1, 0.5, 0.5], "end": [1.9, 1.2, 0.8]}
    r["models"]["m"]["load_during"] = [[1.7, 1.0, 0.7], [2.0, 1.1, 0.7]]
    assert not rep.loaded(r)
    r["models"]["m"]["load_during"].append([3.5, 1.5, 0.8])  # another process joined during timing
    assert rep.loaded(r)
    del r["models"]["m"]["load_during"]
    r["load_average"]["start"] = [1.5, 1.0, 0.8]  # busy before the bench began
    assert rep.loaded(r)


def test_wait_policy_auto_follows_the_load(monkeypatch):
    """auto -> passive on a loaded machine (1-min load over half the cores), else spin; a bad name is refused."""
    import os

    from ibert_tvm.benchmarks import machine

    cores = os.cpu_count() or 1
    monkeypatch.setattr(machine, "load_average", lambda: [0.5 * cores + 0.01, 0.0, 0.0])
    assert machine.resolve_wait_policy("auto") == "passive"
    monkeypatch.setattr(machine, "load_average", lambda: [0.5 * cores, 0.0, 0.0])
    assert machine.resolve_wait_policy("auto") == "spin"
    monkeypatch.setattr(machine, "load_average", lambda: None)
    assert machine.resolve_wait_policy("auto") == "spin"
    assert machine.resolve_wait_policy("passive") == "passive"
    with pytest.raises(IBertTVMError, match="wait policy 'sleepy'"):
        machine.resolve_wait_policy("sleepy")
