"""The tuning database directory: its format, where it is looked for, and its checks.

All that ``compile`` needs (``deploy.export`` imports :func:`resolve_database` and
:func:`database_origin` from here, nothing else of the tuner), and the writers ``tune`` uses.
No TVM import at module level: compile's CLI start-up stays light.

Directory (one per target and model identity)::

    tuning_logs/<target>/<identity>/
        ibert_tvm_tuning.json        target, identity, shape, per-group trials / best time,
                                     sha256 of the two database files below, per workload
                                     the fingerprint of the default schedule its record was
                                     chosen against, the in-model check's verdict
        database_workload.json       the dynamic workloads   } what compile applies
        database_tuning_record.json  one record per workload } (MetaScheduleApplyDatabase)
        search/database_*.json       every measured static candidate (append-only: resuming
                                     counts what is there and tunes only the remainder)
        search/logs/                 MetaSchedule's logs (not committed)

A directory whose metadata names another target or model, whose files fail their sha256, or
whose JSON does not parse is refused with :class:`~ibert_tvm.errors.IBertTVMError`.

An intact database is not applied whole: :func:`select_records` keeps the records that are still
justified. A record was kept by ``tune``'s guard because it beat the target's default schedule
*of that time*; ``tune`` stores, per workload, the fingerprint (structural hash) of that default
schedule (``baselines``). When the default schedule rules change, the fingerprint changes and the
record is *stale*: compile skips it and the workload gets the current default rules. A database
written before the fingerprints existed (format ``/1``) has only stale records on a target with
schedule rules. A database whose in-model check (``in_model``: the whole model timed with and
without the records) found the model slower, or did not finish, is not applied at all.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..support.hashing import sha256_file
from ..errors import IBertTVMError

FORMAT = "ibert-tvm-tuning/2"  # /2: per-workload default-schedule fingerprints, the in-model verdict
READ_FORMATS = ("ibert-tvm-tuning/1", FORMAT)  # /1 is still read: its records count as stale
BASELINES = "baselines"  # meta field: workload key -> fingerprint of its default schedule at tune time
IN_MODEL = "in_model"  # meta field: the whole-model check (kept: true / false / null = did not finish)
META = "ibert_tvm_tuning.json"
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
SEARCH = "search"
ENV_ROOT = "IBERT_TVM_TUNING_LOGS"
REPO_ROOT = Path(__file__).resolve().parents[2]  # ibert_tvm/schedules/tuning_db.py -> the repo


# -- where databases live -------------------------------------------------------------------
def default_root() -> Path:
    """``$IBERT_TVM_TUNING_LOGS`` or ``./tuning_logs``: where ``tune`` writes by default."""
    env = os.environ.get(ENV_ROOT)
    return Path(env) if env else Path.cwd() / "tuning_logs"


def _roots() -> list[tuple[Path, str]]:
    """(root, where it comes from), in search order, without duplicates."""
    roots = []
    if os.environ.get(ENV_ROOT):
        roots.append((Path(os.environ[ENV_ROOT]), f"${ENV_ROOT}"))
    roots += [(REPO_ROOT / "tuning_logs", "the ibert-tvm repository's tuning_logs/"),
              (Path.cwd() / "tuning_logs", "./tuning_logs in the working directory")]
    out: list[tuple[Path, str]] = []
    for r, why in roots:
        if r.resolve() not in [o.resolve() for o, _ in out]:
            out.append((r, why))
    return out


def database_origin(d: Path) -> str:
    """Why ``compile`` looked at ``d``: the search root it lies under, or an explicit choice."""
    for root, why in _roots():
        if Path(d).resolve().is_relative_to(root.resolve()):
            return f"found under {why}"
    return "given by --database"


def find_database(target_name: str, identity: str) -> Path | None:
    """The first ``<root>/<target>/<identity>/`` holding a tuning database, or None.

    Roots, in order: ``$IBERT_TVM_TUNING_LOGS``, the repository's ``tuning_logs/``, ``./tuning_logs``.
    """
    for root, _ in _roots():
        d = root / target_name / identity
        if (d / META).is_file():
            return d
    return None


# -- checks ---------------------------------------------------------------------------------
def read_meta(d: Path) -> dict:
    """``d``'s metadata (:data:`META`), checked field by field: an object with string ``format``,
    ``target`` and ``identity``, ``sha256`` an object of file name -> hex string, ``groups`` an
    object. Anything else is an ``IBertTVMError`` naming the file and the field."""
    meta_path = d / META
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise IBertTVMError(f"tuning database {d}: corrupt {META} ({e})") from None
    if not isinstance(meta, dict):
        raise IBertTVMError(f"tuning database {d}: corrupt {META} (a JSON object expected)")
    for key in ("format", "target", "identity"):
        if not isinstance(meta.get(key), str):
            raise IBertTVMError(f"tuning database {d}: {META} field {key!r} must be a string, got {meta.get(key)!r}")
    sha = meta.get("sha256", {})
    if not isinstance(sha, dict) or not all(isinstance(v, str) for v in sha.values()):
        raise IBertTVMError(f"tuning database {d}: {META} field 'sha256' must be an object of file name -> "
                            f"sha256 string, got {sha!r}")
    if not isinstance(meta.get("groups", {}), dict):
        raise IBertTVMError(f"tuning database {d}: {META} field 'groups' must be an object")
    base = meta.get(BASELINES, {})
    if not isinstance(base, dict) or not all(isinstance(v, str) for v in base.values()):
        raise IBertTVMError(f"tuning database {d}: {META} field {BASELINES!r} must be an object of workload key -> "
                            f"fingerprint string, got {base!r}"[:400])
    im = meta.get(IN_MODEL)
    if im is not None and (not isinstance(im, dict) or im.get("kept") not in (True, False, None)
                           or not all(isinstance(r, (int, float)) for r in im.get("speedup", []) or [])):
        raise IBertTVMError(f"tuning database {d}: {META} field {IN_MODEL!r} must be an object with 'kept' true, "
                            f"false or null and numeric 'speedup', got {im!r}"[:400])
    return meta


def check_database(path, target_name: str, identity: str) -> dict:
    """Raise ``IBertTVMError`` unless ``path`` is an intact database for this target and model.

    Returns its metadata. Checks: the metadata parses and has our format; its target and model
    identity match; both database files exist, match the sha256 recorded at tune time and are
    JSON lines of the shape MetaSchedule writes (workload index in range).
    """
    d = Path(path)
    meta_path = d / META
    if not meta_path.is_file():
        raise IBertTVMError(f"{d} is not an ibert-tvm tuning database (no {META}); make one with `ibert-tvm tune`")
    meta = read_meta(d)
    fmt, tgt, ident = meta["format"], meta["target"], meta["identity"]
    if fmt not in READ_FORMATS:
        raise IBertTVMError(f"tuning database {d}: format {fmt!r}, expected one of {', '.join(READ_FORMATS)}")
    if tgt != target_name:
        raise IBertTVMError(
            f"tuning database {d} was tuned for target {tgt!r}, not {target_name!r}: it cannot be applied"
        )
    if ident != identity:
        raise IBertTVMError(
            f"tuning database {d} belongs to model {ident!r}, not {identity!r} (another model or "
            f"quantization): re-tune with `ibert-tvm tune`"
        )
    n_workloads = None
    for name in (WORKLOADS, RECORDS):
        f = d / name
        if not f.is_file():
            raise IBertTVMError(f"tuning database {d}: {name} is missing")
        want = meta.get("sha256", {}).get(name)
        if want is None or sha256_file(f) != want:
            raise IBertTVMError(f"tuning database {d}: {name} is corrupt or was modified after tuning (sha256 mismatch)")
        lines = [ln for ln in f.read_text().splitlines() if ln.strip()]
        try:
            rows = [json.loads(ln) for ln in lines]
        except ValueError as e:
            raise IBertTVMError(f"tuning database {d}: {name} is not valid JSON lines ({e})") from None
        if name == WORKLOADS:
            if not all(isinstance(r, list) and len(r) == 2 for r in rows):
                raise IBertTVMError(f"tuning database {d}: {name} has malformed workload entries")
            n_workloads = len(rows)
        elif not all(isinstance(r, list) and len(r) == 2 and isinstance(r[0], int) and 0 <= r[0] < n_workloads for r in rows):
            raise IBertTVMError(f"tuning database {d}: {name} has records for unknown workloads")
    return meta


def check_database_meta_only(d: Path, target_name: str, identity: str) -> None:
    """Before appending to an existing directory: it must be this model's, for this target."""
    meta = read_meta(d)
    if meta.get("target") != target_name or meta.get("identity") != identity:
        raise IBertTVMError(
            f"{d} holds tuning for model {meta.get('identity')!r} / target {meta.get('target')!r}, "
            f"not {identity!r} / {target_name!r}: choose another --work-dir"
        )


def resolve_database(database, target_name: str, identity: str) -> Path | None:
    """What ``compile`` applies: ``database`` (a database dir, or a root holding
    ``<target>/<identity>/``), else :func:`find_database`'s match; checked; None if there is none.
    ``database=False`` (or ``""``) turns the lookup off."""
    if database is False or database == "":
        return None
    if database is None:
        found = find_database(target_name, identity)
        if found is not None:
            check_database(found, target_name, identity)
        return found
    d = Path(database)
    if not d.exists():
        raise IBertTVMError(f"tuning database {d} does not exist")
    if not (d / META).exists() and (d / target_name / identity / META).exists():
        d = d / target_name / identity
    check_database(d, target_name, identity)
    return d


# -- which records still apply --------------------------------------------------------------
def workload_key(workload_mod) -> str:
    """A workload's key in ``baselines``: the structural hash of its (normalized) IRModule, as
    16 hex digits (stable across processes; names do not enter it)."""
    import tvm_ffi

    return f"{tvm_ffi.structural_hash(workload_mod) & 0xFFFFFFFFFFFFFFFF:016x}"


def baseline_fingerprint(workload_mod, target_name: str, tgt) -> str:
    """The fingerprint of ``workload_mod`` as compile schedules it without a database (the
    target's schedule pass; the workload itself on a target without rules): what ``tune``'s guard
    measured a record against. 16 hex digits of its structural hash."""
    from . import schedule_pass

    return _fingerprint(workload_mod, schedule_pass(target_name, tgt))


def _fingerprint(workload_mod, sched) -> str:
    return workload_key(workload_mod if sched is None else sched(workload_mod))


@dataclass
class Selection:
    """What compile applies of an intact database (:func:`select_records`)."""

    path: Path
    workloads: int  # workloads with a record in the database
    applied: int  # of them, applied
    stale: int  # of them, skipped: tuned against another default schedule
    database: object = None  # a MetaSchedule MemoryDatabase of the applied records, or None
    refused: str | None = None  # why nothing is applied (in-model check), None otherwise
    old_format: bool = False

    def summary(self) -> dict:
        return {"database": str(self.path), "workloads": self.workloads, "applied": self.applied,
                "stale": self.stale, **({"not_applied": self.refused} if self.refused else {})}

    def message(self, origin: str) -> str:
        """compile's one line about the database."""
        head = f"tuning database: {self.path} ({origin})"
        if self.refused:
            return f"{head}: not applied: {self.refused}; building with the default schedules"
        if not self.workloads:
            return f"{head}: it holds no records; building with the default schedules"
        why = ("written by an older ibert-tvm, without the default-schedule fingerprints"
               if self.old_format else "tuned against an older default schedule")
        if not self.applied:
            return (f"{head}: not applied: all {self.stale} records are stale ({why}); building with the "
                    "default schedules; re-run `ibert-tvm tune` to refresh it")
        if self.stale:
            return (f"{head}: {self.applied} of {self.workloads} records applied; {self.stale} stale ({why}: "
                    "those workloads get the default schedules); re-run `ibert-tvm tune` to refresh them")
        return f"{head}: {self.applied} of {self.workloads} records applied (--no-tuning builds without them)"


def in_model_refusal(meta: dict) -> str | None:
    """Why the in-model check in ``meta`` forbids applying the database, or None."""
    im = meta.get(IN_MODEL)
    if im is None:
        return None
    if im.get("kept") is None:
        return "its in-model check (tune) did not finish; re-run `ibert-tvm tune` to complete it"
    if im.get("kept") is False:
        shapes = ["x".join(str(v) for v in s) for s in im.get("shapes", [])]
        per = ", ".join(f"{r:.3f}x at {s}" for r, s in zip(im.get("speedup", []), shapes))
        geo = im.get("geomean")
        return ("tune's in-model check measured the whole model slower with its records than with the default "
                f"schedules (speedup {per}" + (f"; geometric mean {geo:.3f}x" if isinstance(geo, (int, float)) else "")
                + ")")
    return None


def select_records(d, target_name: str, tgt) -> Selection:
    """The records of the (checked) database ``d`` that compile applies: those whose workload's
    current default schedule has the fingerprint recorded at tune time (see the module doc).
    Reads ``d``, never writes it; the applied records are copied into an in-memory database."""
    from tvm.s_tir import meta_schedule as ms

    from . import schedule_pass

    d = Path(d)
    meta = read_meta(d)
    refused = in_model_refusal(meta)
    sched = schedule_pass(target_name, tgt)  # also registers the target's tensor intrinsics, which
    has_rules = sched is not None  # loading the records needs (a trace names its intrinsic)
    db = ms.database.JSONDatabase(str(d / WORKLOADS), str(d / RECORDS), allow_missing=False)
    by_key: dict = {}
    for rec in db.get_all_tuning_records():
        by_key.setdefault(workload_key(rec.workload.mod), []).append(rec)
    baselines = meta.get(BASELINES)
    old = baselines is None
    sel = Selection(d, len(by_key), 0, 0, refused=refused, old_format=old and has_rules)
    if refused:
        return sel
    mem = ms.database.MemoryDatabase()
    for key, recs in sorted(by_key.items()):
        wl = recs[0].workload.mod
        if old:
            fresh = not has_rules  # TVM's own default lowering is all a rule-less target compares against
        else:
            fresh = baselines.get(key) is not None and baselines[key] == _fingerprint(wl, sched)
        if not fresh:
            sel.stale += 1
            continue
        sel.applied += 1
        w = mem.commit_workload(wl)
        for r in recs:
            mem.commit_tuning_record(ms.database.TuningRecord(r.trace, w, r.run_secs, r.target, r.args_info))
    sel.database = mem if sel.applied else None
    return sel


# -- writers (tune) -------------------------------------------------------------------------
def write_apply_db(out: Path, derived: dict, tgt) -> dict[str, str]:
    """(Re)write the dynamic database atomically from ``derived`` (workload name ->
    ``(dynamic IRModule, trace, run_secs)``); returns the sha256 of its two files."""
    from tvm.s_tir import meta_schedule as ms

    tmp_w, tmp_r = out / (WORKLOADS + ".tmp"), out / (RECORDS + ".tmp")
    for p in (tmp_w, tmp_r):
        p.unlink(missing_ok=True)
    db = ms.database.JSONDatabase(str(tmp_w), str(tmp_r), allow_missing=True)
    for name in sorted(derived):
        dyn_mod, trace, run_secs = derived[name]
        db.commit_tuning_record(ms.database.TuningRecord(trace, db.commit_workload(dyn_mod), run_secs, tgt, None))
    tmp_w.touch()
    tmp_r.touch()
    os.replace(tmp_w, out / WORKLOADS)
    os.replace(tmp_r, out / RECORDS)
    return {WORKLOADS: sha256_file(out / WORKLOADS), RECORDS: sha256_file(out / RECORDS)}


def write_meta(d: Path, meta: dict) -> None:
    """Write the metadata atomically (a temporary file, then a rename)."""
    path = d / META
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
    os.replace(tmp, path)
