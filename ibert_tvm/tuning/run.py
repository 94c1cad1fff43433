"""``tune``: MetaSchedule over a quantized model's fused integer workloads, databases kept.

    ibert-tvm tune q/ --target x86 --trials 400         -> tuning_logs/x86/<model identity>/
    ibert-tvm compile q/ --target x86 -o out/           applies it (``database.resolve_database``)

The driver: per group of workloads (:mod:`.workloads`), the trials still missing from its share
of the budget are measured (:mod:`.space`, :mod:`.measure`) into ``search/``, the best static
records are replayed on the dynamic workloads (:mod:`.replay`), the guard decides whether they
beat the default schedule (:mod:`.guard`), and the database ``compile`` applies is rewritten
(``schedules.tuning_db``) after each group, so an interrupted tune keeps what it measured. Each
record is stored with the fingerprint of the default schedule it was chosen against (compile skips
it once the default changes). Last, the in-model check (:mod:`.in_model`) times the whole model
with and without the records; a database that makes the model slower is marked not to be applied.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

from ..errors import IBertTVMError
from ..schedules.tuning_db import (
    BASELINES,
    FORMAT,
    IN_MODEL,
    META,
    SEARCH,
    baseline_fingerprint,
    check_database_meta_only,
    default_root,
    read_meta,
    workload_key,
    write_apply_db,
    write_meta,
)
from .guard import GUARD_SHAPES, arg_infos
from .guard import pick as guard_pick
from .measure import builder_runner
from .replay import best_records, count_trials, replays
from .space import design_space, symbolic_reduction, tune_context
from .workloads import TUNE_SHAPE, allocate_trials, lowered_model, model_groups


def previous_entry(groups: dict, g) -> dict:
    """The metadata entry of group ``g`` from an earlier run: under its key, or (a database
    written before the group keys came from the IR instead of the printed script) the entry
    with the same members, moved to the new key."""
    if g.key in groups:
        return groups[g.key]
    members = sorted(g.members)
    for key, entry in list(groups.items()):
        if isinstance(entry, dict) and entry.get("members") == members:
            return groups.setdefault(g.key, groups.pop(key))
    return {}


def tune(
    qm,
    *,
    target: str = "x86",
    trials: int,
    work_dir=None,
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    only: list[str] | None = None,
    shape: tuple[int, int] = TUNE_SHAPE,
    trials_per_iter: int = 16,
    seed: int = 0,
    guard: bool = True,
    in_model: bool | None = None,
    progress: bool = True,
    log=print,
) -> Path:
    """Tune ``qm`` (a ``QuantizedModel``) for ``target`` with ``trials`` measured candidates in
    total; write/extend the database in ``work_dir`` (default ``<root>/<target>/<identity>``).

    ``only``: tune just the groups with a member whose name contains one of these strings.
    Re-running with the same arguments resumes: trials already in ``search/`` count.
    ``guard``: keep a tuned schedule only if it beats the default one on the dynamic workload,
    measured at ``GUARD_SHAPES`` (see :func:`.guard.pick`); off, the best record that replays is kept.
    ``in_model`` (default: ``guard``): time the whole model with and without the kept records
    (:mod:`.in_model`); if it is slower with them, the database is marked not to be applied.
    """
    if target == "x86-amx":  # before anything is written: nothing is half-done
        raise IBertTVMError("tuning --target x86-amx is not supported: its linears are fixed AMX tile kernels, "
                            "and MetaSchedule's measuring processes do not hold the AMX permission; tune "
                            "--target x86 for the VNNI schedules")
    from tqdm.auto import tqdm
    from tvm.s_tir import meta_schedule as ms

    from ..targets import get_target

    if trials < 0:
        raise IBertTVMError(f"--trials must be >= 0, got {trials}")
    spec = get_target(target)
    tgt = spec.tvm_target()
    out = Path(work_dir) if work_dir is not None else default_root() / spec.name / qm.identity
    if (out / META).exists():
        check_database_meta_only(out, spec.name, qm.identity)
    workers = max(1, int(tgt.attrs.get("num-cores", 1)))
    builder, runner = builder_runner(spec, rpc_tracker=rpc_tracker, rpc_key=rpc_key, workers=workers)
    lowered = lowered_model(qm, spec)  # imported once, for the groups, the guard and the in-model check
    groups, strategy = model_groups(qm, spec, tgt, shape, lowered)
    selected = groups
    if only:
        selected = [g for g in groups if any(s in n for s in only for n in g.members)]
        if not selected:
            raise IBertTVMError(f"no workload matches --only {' '.join(only)}")
    budget = {g.key: 0 for g in groups} | allocate_trials(selected, trials)
    search = out / SEARCH
    (search / "logs").mkdir(parents=True, exist_ok=True)
    search_db = ms.database.JSONDatabase(work_dir=str(search), allow_missing=True)
    meta_path = out / META
    meta = read_meta(out) if meta_path.exists() else {}
    meta.update({
        "format": FORMAT, "target": spec.name, "target_json": str(tgt), "identity": qm.identity,
        "linear_strategy": strategy, "tune_shape": {"batch": shape[0], "seq": shape[1]},
        "tvm": __import__("tvm").__version__,
    })
    meta.setdefault("groups", {})
    meta.setdefault("sha256", {})
    spaces = {v: design_space(spec, vnni=v) for v in (True, False)}
    infos = arg_infos(qm, spec, tgt, GUARD_SHAPES, lowered) if guard else None
    derived: dict = {}
    baselines: dict = {}  # workload key -> fingerprint of its default schedule (what the guard compared)
    by_group: dict = {}  # group key -> names of its members in ``derived``
    in_model = guard if in_model is None else in_model
    previous_check = meta.get(IN_MODEL) or {}
    t0 = time.time()
    log(f"tuning {qm.identity} for {spec.name}: {sum(len(g.members) for g in groups)} workloads in "
        f"{len(groups)} groups, {trials} trials -> {out}")
    with _native_stderr_to(search / "logs" / "native_stderr.log") as tty:
        outer = tqdm(groups, desc="workloads", unit="wl", file=tty, disable=not progress or None)
        for g in outer:
            outer.set_postfix_str(g.name[:40])
            want = budget[g.key]
            done = count_trials(search_db, g.rep_static)
            todo = max(0, want - done)
            previous = previous_entry(meta["groups"], g)
            error = previous.get("error") if previous.get("budget") == want else None
            if todo and error:  # MetaSchedule failed on it with this budget before: don't loop on it
                todo = 0
            if todo:
                bar = tqdm(total=todo, desc=f"  {g.name[:32]}", unit="trial", leave=False, file=tty,
                           disable=not progress or None)
                space = spaces[not symbolic_reduction(g.members[g.name][0])]
                ctx = tune_context(g.rep_static, tgt, space, g.name, _logger_for(search, g.name), seed + 1, workers, todo)
                try:
                    ms.tune.tune_tasks(
                        tasks=[ctx], task_weights=[1.0], work_dir=str(search), max_trials_global=todo,
                        num_trials_per_iter=min(trials_per_iter, todo), builder=builder, runner=runner,
                        database=search_db, cost_model="xgb",
                        measure_callbacks=[*ms.MeasureCallback.create("default"), _progress_callback(bar)],
                        task_scheduler="round-robin",
                    )
                except Exception as e:  # noqa: BLE001 - a TVM failure inside the search of one workload
                    error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
                    outer.write(f"  {g.name}: MetaSchedule failed ({error}); its records so far are kept", file=tty)
                bar.close()
            best = best_records(search_db, g.rep_static)
            trials_now = count_trials(search_db, g.rep_static)
            base = baseline_fingerprint(g.members[g.name][0], spec.name, tgt)  # the default the guard measures
            if (previous.get("derived_at") == trials_now and "pick" in previous and previous.get("guarded") == guard
                    and previous.get("baseline") == base):
                pick, checked = previous["pick"], previous.get("guard")  # same records, same default: same choice
            else:
                pick, checked = guard_pick(g, best, spec, tgt, builder, runner, infos if guard else None)
            applied = []
            if pick is not None:
                for name, (dyn_mod, _s) in g.members.items():
                    trace = replays(best[pick].trace, dyn_mod, tgt)
                    if trace is not None:
                        derived[name] = (dyn_mod, trace, best[pick].run_secs)
                        baselines[workload_key(dyn_mod)] = baseline_fingerprint(dyn_mod, spec.name, tgt)
                        applied.append(name)
            by_group[g.key] = applied
            meta["groups"][g.key] = {
                "members": sorted(g.members), "applied": sorted(applied), "budget": want,
                "trials": trials_now, "flops": g.flops, "calls": g.calls,
                "best_us": round(_run_secs(best[0]) * 1e6, 3) if best else None,
                "pick": pick, "derived_at": trials_now, "guarded": guard, "baseline": base,
                **({"guard": checked} if checked else {}),
                **({"error": error} if error else {}),
            }
            meta["sha256"] = write_apply_db(out, derived, tgt)
            meta[BASELINES] = dict(baselines)
            # the in-model verdict belongs to the records of an earlier run: until it is redone, it
            # is pending (compile applies nothing of a database whose check did not finish)
            meta[IN_MODEL] = {"kept": None} if in_model else {"kept": True, "skipped": "tune(in_model=False)"}
            meta["elapsed_s"] = round(meta.get("elapsed_s", 0) + (time.time() - t0), 1)
            t0 = time.time()
            write_meta(out, meta)
    if in_model:
        _in_model_step(qm, spec, tgt, out, meta, derived, baselines, by_group, previous_check, lowered, log)
    n_applied = sum(len(v["applied"]) for v in meta["groups"].values())
    log(f"wrote {out}: {n_applied} workloads with a tuned schedule, "
        f"{sum(v['trials'] for v in meta['groups'].values())} trials measured in total")
    return out


def _in_model_step(qm, spec, tgt, out, meta, derived, baselines, by_group, previous, lowered, log) -> None:
    """Run the in-model check (:mod:`.in_model`) on the records in ``derived``; record its verdict;
    drop the groups the greedy step dropped (the database is rewritten without them). The verdict
    of an earlier run on the same records and default schedules (``previous``) is reused."""
    from ..schedules.tuning_db import RECORDS
    from . import in_model as im

    t0 = time.time()
    if not derived:
        meta[IN_MODEL] = {"kept": True, "skipped": "no tuned records"}
        write_meta(out, meta)
        return

    def make_db(keys):
        from tvm.s_tir import meta_schedule as ms

        db = ms.database.MemoryDatabase()
        for k in keys:
            for name in by_group.get(k, []):
                dyn_mod, trace, run_secs = derived[name]
                db.commit_tuning_record(ms.database.TuningRecord(trace, db.commit_workload(dyn_mod), run_secs, tgt, None))
        return db

    checked = {"records_sha256": meta["sha256"][RECORDS], "baselines": dict(sorted(baselines.items()))}
    if previous.get("kept") is not None and all(previous.get(k) == v for k, v in checked.items()):
        entry, dropped = previous, set(previous.get("dropped", []))
        log(f"in-model check: the same records as the last check, reused (speedup {entry.get('speedup')}, "
            f"{'kept' if entry['kept'] else 'not kept'})")
    else:
        log(f"in-model check: the whole model with the {len(derived)} tuned workloads against the default "
            f"schedules, at {', '.join('x'.join(map(str, s)) for s in im.GUARD_SHAPES)}")
        entry, dropped = im.check(qm, spec, tgt, make_db, meta["groups"], lowered=lowered, log=log)
        entry.update(checked)
    if dropped:
        for k in dropped:
            for name in by_group.pop(k, []):
                dyn_mod = derived.pop(name)[0]
                baselines.pop(workload_key(dyn_mod), None)
            meta["groups"][k]["applied"] = []
            meta["groups"][k]["in_model_dropped"] = True
        meta["sha256"] = write_apply_db(out, derived, tgt)
        meta[BASELINES] = dict(baselines)
    meta[IN_MODEL] = entry
    meta["elapsed_s"] = round(meta.get("elapsed_s", 0) + (time.time() - t0), 1)
    write_meta(out, meta)
    log("in-model check: " + ("kept: the model is faster with the tuned records" if entry["kept"] else
                              "the model is not faster with the tuned records: the database is marked not to be "
                              "applied (compile builds with the default schedules)")
        + (f"; dropped {len(dropped)} group(s) to get there" if dropped else ""))


@contextlib.contextmanager
def _native_stderr_to(path: Path):
    """Send fd 2 (TVM's C++ warnings, e.g. every failed auto-tensorize attempt) to ``path``;
    yields a file on the original stderr for the progress bars."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as f:
            os.dup2(f.fileno(), 2)
        with os.fdopen(os.dup(saved), "w") as tty:
            yield tty
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _logger_for(search: Path, name: str):
    """MetaSchedule's per-task file logger; its console handler (stdout) keeps warnings only."""
    import logging

    from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir

    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)  # its console handler's level
    logger = get_loggers_from_work_dir(str(search), [name])[0]
    for h in logging.getLogger("tvm.s_tir.meta_schedule").handlers:
        if type(h) is logging.StreamHandler:
            h.setLevel(logging.WARNING)
    return logger


def _progress_callback(bar):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class _Progress(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            bar.update(len(runner_results))

    return _Progress()


def _run_secs(rec) -> float:
    return float(sum(float(s) for s in rec.run_secs) / len(rec.run_secs))
