"""The tuning database directory: its format, where it is looked for, and its checks.

All that ``compile`` needs (``deploy.export`` imports :func:`resolve_database` and
:func:`database_origin` from here, nothing else of the tuner), and the writers ``tune`` uses.
No TVM import at module level: compile's CLI start-up stays light.

Directory (one per target and model identity)::

    tuning_logs/<target>/<identity>/
        ibert_tvm_tuning.json        target, identity, shape, per-group trials / best time,
                                     sha256 of the two database files below
        database_workload.json       the dynamic workloads   } what compile applies
        database_tuning_record.json  one record per workload } (MetaScheduleApplyDatabase)
        search/database_*.json       every measured static candidate (append-only: resuming
                                     counts what is there and tunes only the remainder)
        search/logs/                 MetaSchedule's logs (not committed)

A directory whose metadata names another target or model, whose files fail their sha256, or
whose JSON does not parse is refused with :class:`~ibert_tvm.errors.IBertTVMError`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..support.hashing import sha256_file
from ..errors import IBertTVMError

FORMAT = "ibert-tvm-tuning/1"
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
    if fmt != FORMAT:
        raise IBertTVMError(f"tuning database {d}: format {fmt!r}, expected {FORMAT!r}")
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
