"""MetaSchedule tuning of the integer kernels, one module per job.

    ibert-tvm tune q/ --target x86 --trials 400         -> tuning_logs/x86/<model identity>/
    ibert-tvm compile q/ --target x86 -o out/           applies it (``resolve_database``)

=============  ===========================================================================
(database)     ``schedules.tuning_db``: the directory format, where databases are looked for,
               their checks and writers: all that ``compile`` needs (no TVM import), so it sits
               with the schedules, below deploy; re-exported here
``workloads``  the fused workloads in their static and dynamic views, grouped by IR
               structure (equal up to constants); the trial budget
``space``      MetaSchedule's design space, search strategy and tune context
``measure``    the builder and runner (local, or ``deploy.rpc`` on a tracker's devices)
``replay``     static records made to replay on the dynamic workloads
``guard``      a derived schedule is kept only if it beats the default one (kernel alone)
``in_model``   the kept records are applied only if the whole model is faster with them
``run``        :func:`tune`, the driver
(the ``ibert-tvm tune`` command itself is ``ibert_tvm.cli.tune``)
=============  ===========================================================================

The names below are this package's public surface (``compile``, the benchmarks and the tests use
them); every submodule imports TVM only inside its functions, so importing the package is cheap.
"""

from __future__ import annotations

from ..schedules.tuning_db import (
    BASELINES,
    ENV_ROOT,
    FORMAT,
    IN_MODEL,
    META,
    READ_FORMATS,
    RECORDS,
    REPO_ROOT,
    SEARCH,
    WORKLOADS,
    check_database,
    check_database_meta_only,
    database_origin,
    default_root,
    find_database,
    read_meta,
    resolve_database,
    select_records,
)
from . import in_model
from .guard import GUARD_CANDIDATES, GUARD_SHAPES, guard_choice
from .in_model import in_model_choice
from .measure import build_without_intrin_import
from .replay import dynamic_trace
from .run import tune
from .space import design_space, no_vectorized_tensorize
from .workloads import (
    SHAPE_VARS,
    TUNE_SHAPE,
    Group,
    allocate_trials,
    group_key,
    model_groups,
)

__all__ = [
    "BASELINES", "ENV_ROOT", "FORMAT", "GUARD_CANDIDATES", "GUARD_SHAPES", "IN_MODEL", "META", "READ_FORMATS",
    "RECORDS", "REPO_ROOT", "SEARCH", "SHAPE_VARS", "TUNE_SHAPE", "WORKLOADS", "Group", "allocate_trials",
    "build_without_intrin_import", "check_database", "check_database_meta_only", "database_origin",
    "default_root", "design_space", "dynamic_trace", "find_database", "group_key", "guard_choice", "in_model",
    "in_model_choice", "model_groups", "no_vectorized_tensorize", "read_meta", "resolve_database",
    "select_records", "tune",
]
