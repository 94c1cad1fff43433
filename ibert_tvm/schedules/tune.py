"""``tune``: MetaSchedule over a quantized model's fused integer workloads, databases kept.

    ibert-tvm tune q/ --target x86 --trials 400         -> tuning_logs/x86/<model identity>/
    ibert-tvm compile q/ --target x86 -o out/           applies it (``resolve_database``)

Batch and sequence length are symbolic in the model, and MetaSchedule can only measure static
shapes, so a tune works on two views of the same fused module (``passes.pipeline.fuse``):

* the *static* view (``batch, seq = TUNE_SHAPE``): what MetaSchedule searches and measures;
* the *dynamic* view: what ``compile`` sees. After a workload is tuned, the best static traces
  are replayed on its dynamic twin (a tile decision on a symbolic loop degrades to "untiled",
  ``sample_perfect_tile``'s rule) and the first one that replays and builds becomes the
  dynamic workload's record (:func:`dynamic_trace`). With ``TUNE_SHAPE = (1, 32)`` the x86
  VNNI linears' row-tile loop has extent 1, so the tuned schedule is what runs per 32-row tile.

A schedule that is fast on the static twin can be slow on the dynamic workload (a cache or a
compute-at placed under a loop that became symbolic). So the *guard* measures the dynamic
workload, with the same builder and runner, at ``GUARD_SHAPES`` (batch x seq 1x32 and 8x128):
the default schedule (what compile does without a database) against the best few derived ones;
a tuned schedule is kept only if it wins (:func:`guard_choice`); the numbers go to the metadata.

Workloads that differ only in constants (the per-layer requantization/GELU/LayerNorm constants
are baked into the kernels) form one *group*: one member is tuned, every member gets the trace.

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

import contextlib
import hashlib
import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..support.hashing import sha256_file
from ..errors import IBertTVMError

FORMAT = "ibert-tvm-tuning/1"
META = "ibert_tvm_tuning.json"
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
SEARCH = "search"
ENV_ROOT = "IBERT_TVM_TUNING_LOGS"
TUNE_SHAPE = (1, 32)  # (batch, seq) of the static view; 32 == x86_vnni.TILE_M
SHAPE_VARS = ("batch", "seq")  # the symbolic dims of model.ibert_model's export spec
REPO_ROOT = Path(__file__).resolve().parents[2]


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


# -- workloads ------------------------------------------------------------------------------
@dataclass
class Group:
    """Fused workloads equal up to constants; ``members`` maps name -> (dynamic, static) PrimFunc."""

    key: str
    members: dict = field(default_factory=dict)
    flops: float = 0.0  # of one member at the tuning shape
    calls: int = 0  # call sites of all members in the model's forward function

    @property
    def name(self) -> str:
        return next(iter(self.members))

    @property
    def rep_static(self):
        return self.members[self.name][1]


def _normalize(func):
    import tvm

    return tvm.get_global_func("tvm.s_tir.meta_schedule.normalize_mod")(func)


def _group_key(mod) -> str:
    """Workload identity up to names and constants: the script with parameter names made
    positional and every integer literal of the body masked, plus the exact signature (shapes,
    dtypes). Kernels of different layers differ only in constants and names: one group."""
    script = mod.script()
    names = re.findall(r"(\w+): T\.Buffer", _signature(script))
    for i, n in enumerate(names):
        script = re.sub(rf"\b{re.escape(n)}\b", f"p{i}", script)
    sig = _signature(script)
    body = re.sub(r"\b\d+\b", "#", script[script.index(sig) + len(sig) :])
    return hashlib.sha256((sig + body).encode()).hexdigest()[:16]


def _signature(script: str) -> str:
    """The ``def main(...)`` line(s) of a PrimFunc's script."""
    i = script.index("def main(")
    return script[i : script.index("):", i)]


def _fused_views(qm, spec, tgt, shape):
    """(dynamic fused IRModule, static fused IRModule) of the model for ``spec``'s strategy."""
    from tvm import relax

    from ..model.ibert_model import IntBertModel
    from ..model.plan import ModelPlan
    from ..passes.pipeline import fuse
    from . import linear_strategy, schedule_pass

    model = IntBertModel(ModelPlan(qm), linear_strategy(spec.name))
    mod, _ = model.export()
    schedule_pass(spec.name, tgt)  # registers the target's tensor intrinsics, if any
    with tgt:
        dyn = fuse(mod)
        bind = relax.transform.BindSymbolicVars(dict(zip(SHAPE_VARS, shape)))
        static = relax.transform.SpecializePrimFuncBasedOnCallSite()(bind(dyn))
    return dyn, static, model.strategy.name


def model_groups(qm, spec, tgt, shape=TUNE_SHAPE) -> tuple[list[Group], str]:
    """The model's distinct fused workloads, grouped (see the module docstring)."""
    import tvm_ffi
    from tvm import tirx
    dyn, static, strategy = _fused_views(qm, spec, tgt, shape)
    static_funcs = {gv.name_hint: f for gv, f in static.functions.items() if isinstance(f, tirx.PrimFunc)}
    relax_text = "\n".join(f.script() for f in dyn.functions.values() if not isinstance(f, tirx.PrimFunc))
    calls = Counter(re.findall(r"R\.call_tir\((?:cls\.)?(\w+),", relax_text))
    groups: dict[str, Group] = {}
    seen: dict[int, Group] = {}  # structural hash of a dynamic workload -> its group
    for gv, func in sorted(dyn.functions.items(), key=lambda kv: kv[0].name_hint):
        if not isinstance(func, tirx.PrimFunc) or gv.name_hint not in static_funcs:
            continue
        d, s = _normalize(func), _normalize(static_funcs[gv.name_hint])
        if re.search(r"\b(%s)\b" % "|".join(SHAPE_VARS), _signature(s["main"].script())):
            continue  # not specialised (called with several shapes): compile schedules it
        h = tvm_ffi.structural_hash(d)
        if h in seen:
            seen[h].calls += calls[gv.name_hint]
            continue
        key = _group_key(s)
        g = seen[h] = groups.setdefault(key, Group(key))
        g.members[gv.name_hint] = (d, s)
        g.calls += calls[gv.name_hint]
        if not g.flops:
            g.flops = _op_count(s)
    return list(groups.values()), strategy


def _op_count(mod) -> float:
    """TVM's op estimate, or (it has no rule for ``Let``) 4 ops per block iteration."""
    from tvm import s_tir
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(mod))
    except Exception:  # noqa: BLE001 - tvm.error.InternalError on unsupported expressions
        sch = s_tir.Schedule(mod)
        total = 0
        for b in sch.get_child_blocks(sch.get_sblock("root")):
            n = 1
            for iv in sch.get(b).iter_vars:
                n *= int(iv.dom.extent)
            total += n
        return 4.0 * total


def allocate_trials(groups: list[Group], total: int) -> dict[str, int]:
    """Share ``total`` trials: a quarter evenly over the groups that compute (op count > 0; pure
    copies get none), the rest in proportion to ``ops x calls``; shares under 2 become 0.

    Deterministic in (groups, total), so a resumed tune computes the same budget per group.
    """
    computing = [g for g in groups if g.flops > 0]
    out = {g.key: 0 for g in groups}
    if not computing or total <= 0:
        return out
    weights = {g.key: g.flops * max(g.calls, 1) for g in computing}
    s = sum(weights.values())
    even = total // 4 / len(computing)
    raw = {k: even + (total - total // 4) * w / s for k, w in weights.items()}
    out.update({k: int(v) for k, v in raw.items()})
    for k in sorted(raw, key=lambda k: (raw[k] - out[k], k), reverse=True)[: total - sum(out.values())]:
        out[k] += 1
    return {k: (v if v >= 2 else 0) for k, v in out.items()}


# -- MetaSchedule plumbing ------------------------------------------------------------------
def build_without_intrin_import(mod, target, _params):
    """LocalBuilder's build minus its ``import tvm.s_tir.tensor_intrin`` (~40 s of CPU in every
    fresh builder process; the candidates are already tensorized, nothing needs it)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def _space(spec, *, vnni: bool):
    """The design space: TVM's stock one for the target; on x86 TVM's CPU default plus, when
    ``vnni``, a ``MultiLevelTilingWithIntrin`` rule for our VNNI intrinsic (TVM's x86 default
    names the stock intrinsic, which does not build with LLVM 22)."""
    if spec.name != "x86":
        return "post-order-apply"
    from tvm.s_tir import meta_schedule as ms

    from .x86_vnni import register_vnni_intrin

    rules = list(ms.ScheduleRule.create("llvm"))
    postprocs = list(ms.Postproc.create("llvm"))
    if vnni:
        at = next(i for i, r in enumerate(rules) if type(r).__name__ == "MultiLevelTiling")
        rules.insert(
            at,
            ms.schedule_rule.MultiLevelTilingWithIntrin(
                register_vnni_intrin(),
                structure="SSRSRS",
                tile_binds=None,
                max_innermost_factor=64,
                vector_load_lens=None,
                reuse_read=None,
                reuse_write=ms.schedule_rule.ReuseType(req="may", levels=[1, 2], scope="global"),
            ),
        )
        at = next(i for i, p in enumerate(postprocs) if type(p).__name__ == "RewriteReductionBlock")
        postprocs.insert(at, no_vectorized_tensorize())
        postprocs.insert(at + 2, ms.postproc.RewriteTensorize(vectorize_init_loop=True))
    return ms.space_generator.PostOrderApply(
        sch_rules=rules, postprocs=postprocs, mutator_probs=ms.Mutator.create("llvm")
    )


def no_vectorized_tensorize():
    """A postprocessor that rejects a sample whose tensorized tile sits inside a vectorized loop.

    ``RewriteParallelVectorizeUnroll`` may vectorize the innermost tile loops *around* the block
    ``RewriteTensorize`` turns into the VNNI intrinsic; TVM then fails to build it ("VectorizeLoop
    before LiftStorageAlloc"). About half of the random samples did, each a wasted trial (a
    2-trial tune could end with no valid record at all). Rejected here, the search draws another
    sample instead of spending a measurement on it."""
    from tvm import tirx
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.postproc import PyPostproc

    @derived_object
    class NoVectorizedTensorize(PyPostproc):
        def _initialize_with_tune_context(self, context) -> None:
            pass

        def apply(self, sch) -> bool:
            for gv, func in sch.mod.functions_items():
                if not hasattr(func, "body"):
                    continue
                stack = [sch.get_sblock("root", func_name=gv.name_hint)]
                while stack:
                    for b in sch.get_child_blocks(stack.pop()):
                        if "meta_schedule.auto_tensorize" in sch.get(b).annotations and any(
                            sch.get(lp).kind == tirx.ForKind.VECTORIZED for lp in sch.get_loops(b)
                        ):
                            return False
                        stack.append(b)
            return True

        def clone(self):
            return NoVectorizedTensorize()

    return NoVectorizedTensorize()


def _symbolic_reduction(dyn_mod) -> bool:
    """Does a block reduce over a symbolic extent (``P V`` sums over the sequence)? Then a
    tensorized tile of it cannot be replayed on the dynamic workload (the split would need a
    predicate inside the intrinsic), so it is tuned without the tensor-intrinsic rule."""
    from tvm import s_tir, tirx

    sch = s_tir.Schedule(dyn_mod)
    for b in sch.get_child_blocks(sch.get_sblock("root")):
        for iv in sch.get(b).iter_vars:
            if int(iv.iter_type) == 2 and not isinstance(iv.dom.extent, tirx.IntImm):  # 2: reduction
                return True
    return False


def _strategy(trials: int):
    """Evolutionary search with a population scaled to the budget (TVM's 512 costs ~20 s of CPU
    per round; a 4-trial tune does not need it)."""
    from tvm.s_tir import meta_schedule as ms

    population = max(32, min(512, 8 * trials))
    return ms.search_strategy.EvolutionarySearch(
        population_size=population, init_min_unmeasured=min(50, population // 2)
    )


def _tune_context(mod, tgt, space, name, logger, rand_state, threads, trials):
    """A ``TuneContext``. With our own design space (x86), built without the constructor's
    ``import tvm.s_tir.tensor_intrin`` (every stock intrinsic parsed: ~40 s of CPU), which only
    the stock spaces need; the construction is otherwise ``TuneContext.__init__``'s (TVM 0.27)."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule import _ffi_api
    from tvm.s_tir.meta_schedule.logging import get_logging_func

    if isinstance(space, str):
        return ms.TuneContext(mod=mod, target=tgt, space_generator=space, search_strategy=_strategy(trials),
                              task_name=name, logger=logger, rand_state=rand_state, num_threads=threads)
    ctx = ms.TuneContext.__new__(ms.TuneContext)
    ctx.__init_handle_by_constructor__(
        _ffi_api.TuneContext, mod, tgt, space, _strategy(trials), name, threads,
        rand_state, get_logging_func(logger),
    )
    _ffi_api.TuneContextInitialize(ctx)
    return ctx


def _parse_tracker(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise IBertTVMError(f"--rpc-tracker must be HOST:PORT, got {s!r}")
    return host, int(port)


def check_tracker(tracker: str, key: str, timeout: float = 5.0) -> tuple[str, int]:
    """Fail fast (no hang) unless the tracker answers and has a free server for ``key``."""
    import socket

    host, port = _parse_tracker(tracker)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise IBertTVMError(f"RPC tracker {host}:{port} is unreachable ({e})") from None
    from tvm import rpc

    try:
        summary = rpc.connect_tracker(host, port).summary()
    except Exception as e:  # noqa: BLE001 - any failure talking to it
        raise IBertTVMError(f"RPC tracker {host}:{port} did not answer a summary request ({e})") from None
    queue = summary.get("queue_info", {})
    if key not in queue:
        raise IBertTVMError(
            f"RPC tracker {host}:{port} has no server registered with key {key!r} (keys: {', '.join(queue) or 'none'})"
        )
    return host, port


def _builder_runner(spec, *, rpc_tracker, rpc_key, workers):
    """LocalBuilder (cross-linking for cross targets) + LocalRunner, or RPCRunner on a tracker."""
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50, enable_cpu_cache_flush=False)
    if rpc_tracker:
        if not rpc_key:
            raise IBertTVMError("--rpc-tracker needs --rpc-key (the key the device's RPC server registered)")
        host, port = check_tracker(rpc_tracker, rpc_key)
        config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=rpc_key,
                                     session_priority=1, session_timeout_sec=120)
        runner = ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=1)
    elif spec.cross_compiler is not None or "gpu" in spec.tvm_target().keys:
        raise IBertTVMError(
            f"target {spec.name} cannot run on this machine: tune it on the device through an RPC "
            f"tracker (--rpc-tracker HOST:PORT --rpc-key KEY)"
        )
    else:
        runner = ms.runner.LocalRunner(timeout_sec=60, evaluator_config=evaluator)
    f_export = _cross_exporter(spec.cross_compiler) if spec.cross_compiler is not None else None
    builder = ms.builder.LocalBuilder(
        f_build=build_without_intrin_import, f_export=f_export, max_workers=workers, timeout_sec=120
    )
    return builder, runner


def _cross_exporter(compiler: str):
    def export(mod):
        import tempfile

        from tvm.support import cc

        path = os.path.join(tempfile.mkdtemp(), "tvm_tmp_mod.so")
        mod.export_library(path, fcompile=cc.cross_compiler(compiler))
        return path

    return export


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
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
    from tvm.ir.utils import derived_object

    @derived_object
    class _Progress(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            bar.update(len(runner_results))

    return _Progress()


# -- the records: count, derive -------------------------------------------------------------
def _count_trials(db, static_mod) -> int:
    import tvm_ffi

    if not db.has_workload(static_mod):
        return 0
    h = tvm_ffi.structural_hash(static_mod)
    return sum(1 for r in db.get_all_tuning_records() if tvm_ffi.structural_hash(r.workload.mod) == h)


def _best(db, static_mod, k=32):
    if not db.has_workload(static_mod):
        return []
    return list(db.get_top_k(db.commit_workload(static_mod), k))


def dynamic_trace(trace, dyn_mod, *, max_rounds: int = 16):
    """``trace`` (tuned on the static twin) made replayable on the dynamic workload, or None.

    Two instructions do not carry over to a loop whose extent is symbolic:

    * ``sample_perfect_tile``: its replay yields constants, not random variables, and the replay
      aborts. The sample is dropped and the split that used its factors gets ``[None, 1, .., 1]``:
      the loop stays whole at the outer tile level (the sampler's own rule for symbolic extents),
      the other loops keep their tuned tiles;
    * ``vectorize``: LLVM cannot vectorize a symbolic extent on x86; it is dropped (serial loop).
    """
    from tvm import s_tir, tirx
    from tvm.s_tir.schedule import Instruction, Trace

    insts = list(trace.insts)
    decisions = list(trace.decisions.items())

    def symbolic(sch, rv) -> bool:
        return not isinstance(sch.get(rv).extent, tirx.IntImm)

    for _ in range(max_rounds):
        t = Trace(insts, {k: v for k, v in decisions if any(k.same_as(i) for i in insts)})
        sch = s_tir.Schedule(dyn_mod)
        samples, vectorizes = [], []

        def provider(inst, inputs, _attrs, decision, sch=sch, samples=samples, vectorizes=vectorizes):
            if inst.kind.name == "SamplePerfectTile" and symbolic(sch, inputs[0]):
                samples.append(inst)
            elif inst.kind.name == "Vectorize" and symbolic(sch, inputs[0]):
                vectorizes.append(inst)
            return decision

        try:
            t.apply_to_schedule(sch, remove_postproc=False, decision_provider=provider)
            replayed = True
        except Exception:  # noqa: BLE001 - fixed below if a symbolic sample caused it
            replayed = False
        if replayed and not vectorizes:
            return t
        if vectorizes:
            insts = [x for x in insts if not any(x.same_as(v) for v in vectorizes)]
            continue
        if not samples:
            return None
        bad = samples[0]
        at = next(i for i, x in enumerate(insts) if x.same_as(bad))
        consts = [None] + [tirx.IntImm("int64", 1)] * (len(bad.outputs) - 1)

        def subst(v, outs=list(bad.outputs), consts=consts):
            for o, c in zip(outs, consts):
                if v is not None and not isinstance(v, (int, float, str)) and v.same_as(o):
                    return c
            return v

        rebuilt = []
        for i, x in enumerate(insts):
            if i == at:
                continue
            if i > at:
                y = Instruction(x.kind, [subst(v) for v in x.inputs], list(x.attrs), list(x.outputs))
                decisions = [(y if k.same_as(x) else k, v) for k, v in decisions]
                x = y
            rebuilt.append(x)
        insts = rebuilt
    return None


def _replays(trace, dyn_mod, tgt):
    """The dynamic version of ``trace`` if it replays on ``dyn_mod`` and builds, else None."""
    import tvm
    from tvm import s_tir

    t = dynamic_trace(trace, dyn_mod)
    if t is None:
        return None
    try:
        sch = s_tir.Schedule(dyn_mod)
        t.apply_to_schedule(sch, remove_postproc=False)
        tvm.compile(sch.mod, target=tgt)
    except Exception:  # noqa: BLE001 - try the next record
        return None
    return t


GUARD_SHAPES = ((1, 32), (8, 128))  # (batch, seq) at which a derived dynamic schedule must win
GUARD_CANDIDATES = 4  # best static records tried on the dynamic workload


def _arg_infos(qm, spec, tgt, shapes) -> list[dict]:
    """Per shape: workload name -> MetaSchedule ``ArgInfo`` list of its static twin at that shape."""
    from tvm import tirx
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    out = []
    for shape in shapes:
        _, static, _ = _fused_views(qm, spec, tgt, shape)
        out.append({gv.name_hint: ArgInfo.from_prim_func(f) for gv, f in static.functions.items()
                    if isinstance(f, tirx.PrimFunc)})
    return out


def _default_schedule(spec, tgt, dyn_mod):
    """The workload as compile schedules it without a database (the target's schedule pass)."""
    from . import schedule_pass

    sched = schedule_pass(spec.name, tgt)
    return dyn_mod if sched is None else sched(dyn_mod)


def _measure(builder, runner, tgt, mods, infos) -> list[list[float | None]]:
    """Median seconds of each module at each argument shape (None: did not build or run),
    through the tuning builder and runner (own processes, timeouts; RPC when tuning remotely)."""
    import shutil

    from tvm.s_tir import meta_schedule as ms

    built = builder.build([ms.builder.BuilderInput(m, tgt) for m in mods])
    inputs, where = [], []
    for i, b in enumerate(built):
        if b.error_msg is None:
            for j, info in enumerate(infos):
                inputs.append(ms.runner.RunnerInput(b.artifact_path, "cuda" if tgt.kind.name == "cuda" else "cpu", info))
                where.append((i, j))
    times: list[list[float | None]] = [[None] * len(infos) for _ in mods]
    for (i, j), fut in zip(where, runner.run(inputs)):
        r = fut.result()
        if r.error_msg is None and r.run_secs:
            secs = sorted(float(x) for x in r.run_secs)
            times[i][j] = secs[len(secs) // 2]
    for b in built:
        if b.artifact_path:
            shutil.rmtree(os.path.dirname(b.artifact_path), ignore_errors=True)
    return times


def guard_choice(default: list, candidates: list[list]) -> int | None:
    """The candidate to keep: measured at every shape, no shape more than 10% slower than the
    default and the geometric-mean speedup over it > 1; the fastest such. None: keep the default."""
    import math

    best, best_gain = None, 1.0
    for i, c in enumerate(candidates):
        if any(t is None for t in c):
            continue
        if any(d is not None and t > 1.1 * d for t, d in zip(c, default)):
            continue
        ratios = [d / t for t, d in zip(c, default) if d is not None]
        gain = math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else 2.0
        if gain > best_gain:
            best, best_gain = i, gain
    return best


def _pick(g, best, spec, tgt, builder, runner, infos):
    """Index into ``best`` of the record the group's workloads get, and the guard's measurements."""
    from tvm import s_tir

    name = g.name
    dyn = g.members[name][0]
    cands = []
    for i, rec in enumerate(best):
        t = dynamic_trace(rec.trace, dyn)
        if t is not None:
            cands.append((i, t))
        if len(cands) == GUARD_CANDIDATES:
            break
    if not cands:
        return None, None
    if infos is None or any(name not in per_shape for per_shape in infos):
        return cands[0][0], None
    mods = [_default_schedule(spec, tgt, dyn)]
    for _, t in cands:
        sch = s_tir.Schedule(dyn)
        t.apply_to_schedule(sch, remove_postproc=False)
        mods.append(sch.mod)
    times = _measure(builder, runner, tgt, mods, [per_shape[name] for per_shape in infos])
    choice = guard_choice(times[0], times[1:])
    us = lambda ts: [None if t is None else round(t * 1e6, 1) for t in ts]  # noqa: E731
    checked = {
        "shapes": [list(s) for s in GUARD_SHAPES], "default_us": us(times[0]),
        "candidates_us": [us(t) for t in times[1:]], "kept": "default" if choice is None else "tuned",
    }
    return (None if choice is None else cands[choice][0]), checked


def _write_apply_db(out: Path, derived: dict, tgt) -> dict[str, str]:
    """(Re)write the dynamic database atomically; returns the sha256 of its two files."""
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


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _run_secs(rec) -> float:
    return float(sum(float(s) for s in rec.run_secs) / len(rec.run_secs))


# -- tune -----------------------------------------------------------------------------------
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
    progress: bool = True,
    log=print,
) -> Path:
    """Tune ``qm`` (a ``QuantizedModel``) for ``target`` with ``trials`` measured candidates in
    total; write/extend the database in ``work_dir`` (default ``<root>/<target>/<identity>``).

    ``only``: tune just the groups with a member whose name contains one of these strings.
    Re-running with the same arguments resumes: trials already in ``search/`` count.
    ``guard``: keep a tuned schedule only if it beats the default one on the dynamic workload,
    measured at ``GUARD_SHAPES`` (see :func:`_pick`); off, the best record that replays is kept.
    """
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
    builder, runner = _builder_runner(spec, rpc_tracker=rpc_tracker, rpc_key=rpc_key, workers=workers)
    groups, strategy = model_groups(qm, spec, tgt, shape)
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
    spaces = {v: _space(spec, vnni=v) for v in (True, False)}
    infos = _arg_infos(qm, spec, tgt, GUARD_SHAPES) if guard else None
    derived: dict = {}
    t0 = time.time()
    log(f"tuning {qm.identity} for {spec.name}: {sum(len(g.members) for g in groups)} workloads in "
        f"{len(groups)} groups, {trials} trials -> {out}")
    with _native_stderr_to(search / "logs" / "native_stderr.log") as tty:
        outer = tqdm(groups, desc="workloads", unit="wl", file=tty, disable=not progress or None)
        for g in outer:
            outer.set_postfix_str(g.name[:40])
            want = budget[g.key]
            done = _count_trials(search_db, g.rep_static)
            todo = max(0, want - done)
            previous = meta["groups"].get(g.key, {})
            error = previous.get("error") if previous.get("budget") == want else None
            if todo and error:  # MetaSchedule failed on it with this budget before: don't loop on it
                todo = 0
            if todo:
                bar = tqdm(total=todo, desc=f"  {g.name[:32]}", unit="trial", leave=False, file=tty,
                           disable=not progress or None)
                space = spaces[not _symbolic_reduction(g.members[g.name][0])]
                ctx = _tune_context(g.rep_static, tgt, space, g.name, _logger_for(search, g.name), seed + 1, workers, todo)
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
            best = _best(search_db, g.rep_static)
            trials_now = _count_trials(search_db, g.rep_static)
            if previous.get("derived_at") == trials_now and "pick" in previous and previous.get("guarded") == guard:
                pick, checked = previous["pick"], previous.get("guard")  # same records: same choice
            else:
                pick, checked = _pick(g, best, spec, tgt, builder, runner, infos if guard else None)
            applied = []
            if pick is not None:
                for name, (dyn_mod, _s) in g.members.items():
                    trace = _replays(best[pick].trace, dyn_mod, tgt)
                    if trace is not None:
                        derived[name] = (dyn_mod, trace, best[pick].run_secs)
                        applied.append(name)
            meta["groups"][g.key] = {
                "members": sorted(g.members), "applied": sorted(applied), "budget": want,
                "trials": trials_now, "flops": g.flops, "calls": g.calls,
                "best_us": round(_run_secs(best[0]) * 1e6, 3) if best else None,
                "pick": pick, "derived_at": trials_now, "guarded": guard,
                **({"guard": checked} if checked else {}),
                **({"error": error} if error else {}),
            }
            meta["sha256"] = _write_apply_db(out, derived, tgt)
            meta["elapsed_s"] = round(meta.get("elapsed_s", 0) + (time.time() - t0), 1)
            t0 = time.time()
            _write_json(meta_path, meta)
    n_applied = sum(len(v["applied"]) for v in meta["groups"].values())
    log(f"wrote {out}: {n_applied} workloads with a tuned schedule, "
        f"{sum(v['trials'] for v in meta['groups'].values())} trials measured in total")
    return out


def check_database_meta_only(d: Path, target_name: str, identity: str) -> None:
    """Before appending to an existing directory: it must be this model's, for this target."""
    meta = read_meta(d)
    if meta.get("target") != target_name or meta.get("identity") != identity:
        raise IBertTVMError(
            f"{d} holds tuning for model {meta.get('identity')!r} / target {meta.get('target')!r}, "
            f"not {identity!r} / {target_name!r}: choose another --work-dir"
        )
