"""Tuning: MetaSchedule databases kept per target and model, resumable, applied by compile,
refused when foreign or corrupt.

One small real tune (2 then 4 trials of the tiny model's q/k/v linear for x86) is shared by the
tests: the second run resumes the first (records accumulate, nothing is lost), compile applies
the result (that workload comes from the database, the others from the x86 schedule pass), but
not once its record is stale (tuned against another default schedule) or the in-model check
rejected it; the in-model check builds the model with and without the record (same integers)
and times both.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ibert_tvm.errors import IBertTVMError
from ibert_tvm import tuning as T

WORKLOAD = "fused_linear_requantize"  # the q/k/v linear (+ requantize) of the tiny model


def _x86():
    from ibert_tvm.targets import get_target

    return get_target("x86").tvm_target()


def _lines(p: Path) -> list[str]:
    return [ln for ln in p.read_text().splitlines() if ln.strip()] if p.exists() else []


def _state(d: Path) -> dict:
    meta = json.loads((d / T.META).read_text())
    return {
        "search_records": _lines(d / T.SEARCH / T.RECORDS),
        "search_workloads": _lines(d / T.SEARCH / T.WORKLOADS),
        "records": _lines(d / T.RECORDS),
        "workloads": _lines(d / T.WORKLOADS),
        "meta": meta,
        "tuned_group": next(g for g in meta["groups"].values() if WORKLOAD in g["members"]),
    }


@pytest.fixture(scope="module")
def tuned(quantized_factory, tmp_path_factory):
    qm, qdir = quantized_factory("BertModel")
    d = tmp_path_factory.mktemp("tune") / "db"
    # guard off: keep the best record that replays, whatever its speed (the test needs a record)
    quiet = dict(target="x86", work_dir=d, only=[WORKLOAD], progress=False, guard=False, log=lambda *a: None)
    T.tune(qm, trials=2, **quiet)
    first = _state(d)
    T.tune(qm, trials=4, **quiet)  # resumes: only the 2 missing trials are run
    return qm, qdir, d, first, _state(d)


def test_resume_accumulates_records_and_loses_nothing(tuned):
    _, _, _, first, second = tuned
    assert len(first["search_records"]) == 2 and len(second["search_records"]) == 4
    assert second["search_records"][:2] == first["search_records"]  # append-only
    assert len(second["search_workloads"]) == len(first["search_workloads"]) == 1
    assert first["tuned_group"]["trials"] == 2 and second["tuned_group"]["trials"] == 4
    for s in (first, second):  # the dynamic workload has its record after each run
        assert s["tuned_group"]["applied"] == [WORKLOAD]
        assert len(s["workloads"]) == 1 and len(s["records"]) == 1
    assert second["tuned_group"]["best_us"] <= first["tuned_group"]["best_us"]
    untouched = [g for g in second["meta"]["groups"].values() if WORKLOAD not in g["members"]]
    assert untouched and all(g["trials"] == 0 and not g["applied"] for g in untouched)


def test_metadata_names_target_model_and_hashes(tuned):
    qm, _, d, _, second = tuned
    meta = second["meta"]
    assert meta["format"] == T.FORMAT and meta["target"] == "x86" and meta["identity"] == qm.identity
    assert meta["tune_shape"] == {"batch": 1, "seq": 32} and meta["linear_strategy"] == "x86-vnni"
    assert meta[T.IN_MODEL]["kept"] is True  # guard off, so no in-model check: the records apply
    assert T.check_database(d, "x86", qm.identity)["identity"] == qm.identity


def test_compile_applies_the_fresh_records(tuned, replay_build, monkeypatch, tmp_path):
    """A record tuned against today's default schedule is applied: it schedules its workload (the
    others are left to the x86 rules), and compile says so. (The tuned model is built for real,
    and compared with the default build's integers, in the in-model check's test.)"""
    import tvm
    from tvm import relax

    from ibert_tvm.deploy.export import compile_quantized
    from ibert_tvm.frontend.lower import integer_module
    from ibert_tvm.passes import pipeline
    from ibert_tvm.schedules import linear_strategy

    qm, _, d, _, _ = tuned
    tgt = _x86()
    mod, _, _ = integer_module(qm, linear_strategy("x86"))
    sel = T.select_records(d, "x86", tgt)  # registers the VNNI intrinsic the records tensorize with
    assert (sel.workloads, sel.applied, sel.stale, sel.refused) == (1, 1, 0, None)
    with tgt, sel.database:
        applied = relax.transform.MetaScheduleApplyDatabase()(pipeline.fuse(mod))
    scheduled = {gv.name_hint for gv, f in applied.functions.items()
                 if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and f.attrs.get("tirx.is_scheduled", False)}
    assert scheduled == {WORKLOAD}

    replayed, given, said = pipeline.build, [], []
    monkeypatch.setattr(pipeline, "build", lambda m, t, **kw: given.append(kw["database_dir"]) or replayed(m, t))
    manifest = compile_quantized(qm, tmp_path / "out", target="x86", database_dir=str(d), log=said.append)
    assert manifest["tuning_database"] == str(d)
    assert manifest["tuning"] == {"database": str(d), "workloads": 1, "applied": 1, "stale": 0}
    assert [ln for ln in said if ln.startswith("tuning database:")] == [
        f"tuning database: {d} (given by --database): 1 of 1 records applied (--no-tuning builds without them)"]
    assert len(given) == 1 and len(given[0].get_all_tuning_records()) == 1  # the in-memory selection


def test_guard_and_in_model_check_measure_and_decide(tuned, tmp_path, monkeypatch):
    """The guard times the dynamic workload against the default at 1x32 and 8x128 (its decision
    is forced to "tuned" here, so that the rest runs); the in-model check then builds the tiny model
    with and without the record through compile's pipeline, compares their integers, times them
    interleaved at the same shapes, and records the verdict, which compile's selection obeys."""
    from ibert_tvm.tuning import guard as guard_module

    qm, _, d, _, before = tuned
    c = tmp_path / "guarded"
    shutil.copytree(d, c)
    decided, real = [], guard_module.guard_choice

    def forced(default, candidates):
        decided.append((default, candidates, real(default, candidates)))
        return 0

    monkeypatch.setattr(guard_module, "guard_choice", forced)
    said = []
    kw = dict(target="x86", trials=4, work_dir=c, only=[WORKLOAD], progress=False)
    T.tune(qm, log=said.append, **kw)
    after = _state(c)
    assert after["search_records"] == before["search_records"]  # nothing new to measure: only the decisions
    guard = after["tuned_group"]["guard"]
    assert guard["shapes"] == [[1, 32], [8, 128]] and guard["kept"] == "tuned" and guard["candidate"] == 0
    assert all(t is not None and t > 0 for t in guard["default_us"]) and guard["candidates_us"]
    assert len(decided) == 1 and [round(t * 1e6, 1) for t in decided[0][0]] == guard["default_us"]
    assert after["tuned_group"]["applied"] == [WORKLOAD] and len(after["records"]) == 1

    im = after["meta"][T.IN_MODEL]
    assert im["shapes"] == [[1, 32], [8, 128]] and len(im["steps"]) == 1  # one group: nothing to drop
    assert all(t > 0 for t in im["default_ms"] + im["tuned_ms"])
    assert {k: im[k] for k in ("speedup", "geomean", "kept")} == T.in_model_choice(im["default_ms"], im["tuned_ms"])
    assert any(ln.startswith("in-model check: 1x32 default ") for ln in said)
    sel = T.select_records(c, "x86", _x86())
    assert (sel.applied, sel.refused is None) == ((1, True) if im["kept"] else (0, False))
    said.clear()
    T.tune(qm, log=said.append, guard=False, in_model=True, **kw)  # same records: the verdict is reused, no build
    assert any("reused" in ln for ln in said) and _state(c)["meta"][T.IN_MODEL] == im


# -- stale records, the in-model check ----------------------------------------------------------
def test_a_record_tuned_against_another_default_is_stale(tuned, tmp_path, monkeypatch):
    """Each record carries the fingerprint of the default schedule the guard compared it with;
    when the default changes (here: the fingerprint edited, or the x86 rules gone), it is skipped."""
    qm, _, d, _, second = tuned
    base = second["meta"][T.BASELINES]
    assert len(base) == 1 and all(len(v) == 16 for v in base.values())
    c = _copy(d, tmp_path)
    _edit_meta(c, **{T.BASELINES: {k: "0" * 16 for k in base}})
    T.check_database(c, "x86", qm.identity)  # intact: only stale
    sel = T.select_records(c, "x86", _x86())
    assert (sel.workloads, sel.applied, sel.stale, sel.database) == (1, 0, 1, None)
    assert sel.message("given by --database") == (
        f"tuning database: {c} (given by --database): not applied: all 1 records are stale (tuned against an "
        "older default schedule); building with the default schedules; re-run `ibert-tvm tune` to refresh it")
    assert T.select_records(d, "x86", _x86()).applied == 1  # the original still applies
    from ibert_tvm import schedules

    monkeypatch.setattr(schedules, "schedule_pass", lambda *a: None)  # "the default schedule changed"
    assert (T.select_records(d, "x86", _x86()).applied, T.select_records(d, "x86", _x86()).stale) == (0, 1)


def test_an_old_format_database_is_read_and_stale(tuned, tmp_path):
    """Format /1 (no fingerprints: the committed databases): read, not refused; on a target with
    schedule rules every record counts as stale."""
    qm, _, d, _, _ = tuned
    c = _copy(d, tmp_path)
    meta = json.loads((c / T.META).read_text())
    meta["format"] = "ibert-tvm-tuning/1"
    for k in (T.BASELINES, T.IN_MODEL):
        meta.pop(k)
    (c / T.META).write_text(json.dumps(meta))
    assert T.resolve_database(str(c), "x86", qm.identity) == c
    sel = T.select_records(c, "x86", _x86())
    assert (sel.applied, sel.stale, sel.old_format) == (0, 1, True)
    assert "all 1 records are stale (written by an older ibert-tvm" in sel.message("x")


def test_a_database_the_in_model_check_rejected_is_not_applied(tuned, tmp_path):
    _, _, d, _, _ = tuned
    c = _copy(d, tmp_path)
    _edit_meta(c, **{T.IN_MODEL: {"kept": False, "shapes": [[1, 32], [8, 128]], "speedup": [0.95, 1.01],
                                  "geomean": 0.98}})
    sel = T.select_records(c, "x86", _x86())
    assert sel.database is None and sel.applied == 0
    assert sel.message("x") == (
        f"tuning database: {c} (x): not applied: tune's in-model check measured the whole model slower with its "
        "records than with the default schedules (speedup 0.950x at 1x32, 1.010x at 8x128; geometric mean "
        "0.980x); building with the default schedules")
    _edit_meta(c, **{T.IN_MODEL: {"kept": None}})  # interrupted during the check
    assert "did not finish" in T.select_records(c, "x86", _x86()).message("x")


def test_compile_prints_which_records_apply(tuned, replay_build, monkeypatch, tmp_path, capsys):
    """The CLI's line for a stale database, and the build gets no database at all."""
    from ibert_tvm.cli import main
    from ibert_tvm.passes import pipeline

    _, qdir, d, _, _ = tuned
    c = _copy(d, tmp_path)
    meta = json.loads((c / T.META).read_text())
    meta["format"] = "ibert-tvm-tuning/1"
    del meta[T.BASELINES]
    (c / T.META).write_text(json.dumps(meta))
    replayed, given = pipeline.build, []
    monkeypatch.setattr(pipeline, "build", lambda mod, tgt, **kw: given.append(kw["database_dir"]) or replayed(mod, tgt))
    out = tmp_path / "out"
    assert main(["compile", str(qdir), "--target", "x86", "-o", str(out), "--database", str(c)]) == 0
    said = capsys.readouterr().out
    assert (f"tuning database: {c} (given by --database): not applied: all 1 records are stale (written by an older "
            "ibert-tvm, without the default-schedule fingerprints); building with the default schedules") in said
    assert given == [None]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tuning_database"] is None and manifest["tuning"]["stale"] == 1


def test_in_model_choice():
    ch = T.in_model_choice
    assert ch([10.0, 100.0], [9.0, 95.0]) == {"speedup": [1.1111, 1.0526], "geomean": 1.0815, "kept": True}
    assert ch([10.0, 100.0], [9.0, 104.0])["kept"] is False  # 8x128 4% slower
    assert ch([10.0, 100.0], [9.0, 102.0])["kept"] is True  # 2% slower at one shape, faster overall
    assert ch([10.0, 100.0], [10.1, 100.5])["kept"] is False  # slower overall
    assert ch([10.0, 100.0], [10.0, 100.0])["kept"] is False  # equal: the default wins
    assert ch([10.0, 100.0], [None, 90.0])["kept"] is False  # not measured everywhere
    assert ch([10.0, 100.0], [9.0, 104.0], max_slower=0.05)["kept"] is True


def test_in_model_drop_order_smallest_margin_first():
    groups = {"a": {"applied": ["x"], "guard": {"default_us": [10, 100], "candidates_us": [[5, 50], [8, 80]],
                                                "candidate": 1}},  # margin 1.25
              "b": {"applied": ["y"], "guard": {"default_us": [10, 100], "candidates_us": [[9, 90]]}},  # 1.11
              "c": {"applied": ["z"]},  # guard off: no margin known
              "d": {"applied": [], "guard": {"default_us": [1, 1], "candidates_us": [[2, 2]]}}}  # nothing applied
    assert T.in_model.drop_order(groups) == ["c", "b", "a"]


def test_guard_choice():
    assert T.guard_choice([10.0, 100.0], [[5.0, 90.0], [4.0, 120.0]]) == 0  # #1 is >10% slower at 8x128
    assert T.guard_choice([10.0, 100.0], [[11.5, 100.0]]) is None  # slower
    assert T.guard_choice([10.0, 100.0], [[None, 50.0]]) is None  # not measured everywhere
    assert T.guard_choice([10.0, 100.0], [[9.0, 95.0], [8.0, 80.0]]) == 1  # the fastest wins


# -- foreign / corrupt databases ------------------------------------------------------------
def _copy(d: Path, tmp_path: Path) -> Path:
    c = tmp_path / "copy"
    shutil.copytree(d, c, ignore=shutil.ignore_patterns(T.SEARCH))
    return c


def _edit_meta(c: Path, **kw) -> None:
    meta = json.loads((c / T.META).read_text())
    meta.update(kw)
    (c / T.META).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda c: _edit_meta(c, target="aarch64"), "tuned for target 'aarch64'"),
        (lambda c: _edit_meta(c, identity="0123456789ab-ibert-w8a8"), "belongs to model '0123456789ab"),
        (lambda c: (c / T.META).write_text("{not json"), "corrupt"),
        (lambda c: (c / T.META).unlink(), "not an ibert-tvm tuning database"),
        (lambda c: (c / T.RECORDS).write_text((c / T.RECORDS).read_text()[:-40]), "corrupt or was modified"),
        (lambda c: (c / T.WORKLOADS).unlink(), "missing"),
        (lambda c: _edit_meta(c, format="something/9"), "format"),
    ],
    ids=["other-target", "other-model", "bad-metadata", "no-metadata", "truncated-records", "no-workloads",
         "format"],
)
def test_foreign_or_corrupt_database_is_refused(tuned, tmp_path, damage, message):
    qm, _, d, _, _ = tuned
    c = _copy(d, tmp_path)
    T.check_database(c, "x86", qm.identity)  # intact copy: accepted
    damage(c)
    with pytest.raises(IBertTVMError, match=message):
        T.resolve_database(str(c), "x86", qm.identity)


def test_lookup_by_root_and_environment(tuned, tmp_path, monkeypatch):
    qm, _, d, _, _ = tuned
    root = tmp_path / "logs"
    shutil.copytree(d, root / "x86" / qm.identity)
    assert T.resolve_database(str(root), "x86", qm.identity) == root / "x86" / qm.identity
    monkeypatch.chdir(tmp_path)  # no ./tuning_logs here
    monkeypatch.setenv(T.ENV_ROOT, str(root))
    assert T.find_database("x86", qm.identity) == root / "x86" / qm.identity
    assert T.find_database("llvm", qm.identity) is None
    assert T.resolve_database(None, "llvm", qm.identity) is None
    assert T.resolve_database(False, "x86", qm.identity) is None
    with pytest.raises(IBertTVMError, match="does not exist"):
        T.resolve_database(str(tmp_path / "nope"), "x86", qm.identity)
    # compile says why it used a database: which search root it was found under
    assert T.database_origin(root / "x86" / qm.identity) == f"found under ${T.ENV_ROOT}"
    assert T.database_origin(T.REPO_ROOT / "tuning_logs" / "x86" / "m") == "found under the ibert-tvm repository's tuning_logs/"
    monkeypatch.delenv(T.ENV_ROOT)
    assert T.database_origin(root / "x86" / qm.identity) == "given by --database"
    (tmp_path / "tuning_logs").mkdir()
    assert T.database_origin(tmp_path / "tuning_logs" / "x86") == "found under ./tuning_logs in the working directory"


def test_compile_checks_its_output_before_building(quantized_factory, tmp_path, monkeypatch):
    """The Python API refuses a foreign output directory before any compile time is spent."""
    from ibert_tvm.deploy import export
    from ibert_tvm.passes import pipeline

    qm, _ = quantized_factory("BertModel")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    monkeypatch.setattr(pipeline, "build", lambda *a, **k: pytest.fail("built before checking the output"))
    with pytest.raises(IBertTVMError, match="notes.txt"):
        export.compile_quantized(qm, out, log=lambda *a: None)
    assert (out / "notes.txt").read_text() == "mine"


def _export_resolves_databases() -> bool:
    import inspect

    from ibert_tvm.deploy import export

    return "resolve_database" in inspect.getsource(export)


@pytest.mark.skipif(not _export_resolves_databases(), reason="compile does not look databases up yet")
def test_compile_refuses_a_foreign_database(tuned, tmp_path):
    from ibert_tvm.deploy.export import compile_quantized

    qm, _, d, _, _ = tuned
    c = _copy(d, tmp_path)
    _edit_meta(c, identity="0123456789ab-ibert-w8a8")
    with pytest.raises(IBertTVMError, match="belongs to model"):
        compile_quantized(qm, tmp_path / "out", target="x86", database_dir=str(c), log=lambda *a: None)
    assert not (tmp_path / "out").exists()


def test_tune_refuses_a_directory_of_another_model(tuned, tmp_path):
    qm, _, d, _, _ = tuned
    c = _copy(d, tmp_path)
    _edit_meta(c, identity="0123456789ab-ibert-w8a8")
    with pytest.raises(IBertTVMError, match="another --work-dir"):
        T.tune(qm, target="x86", trials=1, work_dir=c, progress=False, log=lambda *a: None)


# -- CLI ------------------------------------------------------------------------------------
def test_cli_tune_bad_input_fails_fast(tuned, tmp_path, capsys):
    from ibert_tvm.cli import main

    _, qdir, _, _, _ = tuned
    work = ["--work-dir", str(tmp_path / "w")]
    assert main(["tune", str(qdir), "--target", "cuda-t4", "--trials", "1", *work]) == 2
    assert "RPC tracker" in capsys.readouterr().err
    assert main(["tune", str(qdir), "--trials", "1", "--rpc-tracker", "127.0.0.1:9", "--rpc-key", "k", *work]) == 2
    assert "unreachable" in capsys.readouterr().err
    assert main(["tune", str(qdir), "--trials", "1", "--rpc-tracker", "nohostport", "--rpc-key", "k", *work]) == 2
    assert "HOST:PORT" in capsys.readouterr().err
    assert main(["tune", str(qdir), "--trials", "-1", *work]) == 2
    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    assert "resumes" in capsys.readouterr().out


def test_trial_budget_is_deterministic_and_skips_copies():
    g = [T.Group(key=k, flops=f, calls=c) for k, f, c in [("a", 1e6, 6), ("b", 1e4, 1), ("c", 0.0, 12)]]
    a = T.allocate_trials(g, 100)
    assert a == T.allocate_trials(g, 100) and a["c"] == 0 and a["a"] > a["b"] > 0
    assert sum(a.values()) <= 100
    assert T.allocate_trials(g, 1) == {"a": 0, "b": 0, "c": 0}


def test_search_rejects_tensorized_tiles_inside_vectorized_loops():
    """The x86 space's postprocessor drops samples TVM cannot build (a tensorized tile under a
    vectorized loop) before they cost a measurement, and keeps the others."""
    from tvm import s_tir
    from tvm.script import ir as I
    from tvm.script import tirx as T_

    @I.ir_module
    class Mod:
        @T_.prim_func(s_tir=True)
        def main(a: T_.Buffer((8, 16), "int32"), b: T_.Buffer((8, 16), "int32")):
            for i, j in T_.grid(8, 16):
                with T_.sblock("c"):
                    vi, vj = T_.axis.remap("SS", [i, j])
                    b[vi, vj] = a[vi, vj] + 1

    def sample(vectorize_outer: bool, annotate: bool = True):
        sch = s_tir.Schedule(Mod)
        i, j = sch.get_loops(sch.get_sblock("c"))
        tile = sch.blockize(j)
        if annotate:
            sch.annotate(tile, "meta_schedule.auto_tensorize", "ibert_tvm.dot_16x4_vnni")
        if vectorize_outer:
            sch.vectorize(i)
        return sch

    post = T.no_vectorized_tensorize()
    assert post.apply(sample(False)) is True
    assert post.apply(sample(True)) is False
    assert post.apply(sample(True, annotate=False)) is True  # plain vectorized loops are fine
    assert post.clone().apply(sample(True)) is False
    from ibert_tvm.targets import get_target

    names = [type(p).__name__ for p in T.design_space(get_target("x86"), vnni=True).postprocs]
    # after the vectorize rewrite, before the tensorize rewrite (a Python postproc shows as _PyPostproc)
    assert names.index("RewriteParallelVectorizeUnroll") < names.index("_PyPostproc") < names.index("RewriteTensorize")


def test_a_group_entry_under_an_older_key_is_found_by_its_members():
    """Resuming a database whose metadata keys its groups differently (written before the keys
    came from the IR): the entry with the same members is found and moved to the new key."""
    from ibert_tvm.tuning.run import previous_entry

    groups = {"old": {"members": ["a", "b"], "pick": 0}, "other": {"members": ["c"]}}
    assert previous_entry(groups, T.Group(key="new", members={"b": None, "a": None})) == {"members": ["a", "b"], "pick": 0}
    assert "new" in groups and "old" not in groups
    assert previous_entry(groups, T.Group(key="new", members={"a": None, "b": None}))["pick"] == 0
    assert previous_entry(groups, T.Group(key="x", members={"z": None})) == {}


def test_group_key_ignores_names_and_constants_not_shapes():
    """Workloads are grouped from the IR (structural hash with integer literals masked, exact
    parameter types): per-layer constants and names do not split a group; a shape does."""
    from tvm import te

    def func(mult, shift, n=64, name="x"):
        x = te.placeholder((32, n), "int32", name=name)
        y = te.compute(x.shape, lambda i, j: (x[i, j] * mult) >> shift, name="requantize")
        return T.workloads.normalize(te.create_prim_func([x, y]))

    key = T.group_key(func(71933249, 20))
    assert T.group_key(func(12345, 7, name="other")) == key
    assert T.group_key(func(71933249, 20, n=128)) != key
