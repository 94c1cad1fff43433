"""Per-target lowering choices: how int8 linears are laid out, and how kernels are scheduled.

A target contributes two things, looked up by target name (``ibert_tvm.targets.TARGETS``):

* a :class:`LinearStrategy`: the run-time layout of each int8 linear's weight/bias
  (``pack``), the declared parameter shapes (``param_shapes``) and the TE body (``te``) that
  computes ``x W^T + b`` as int32 from them. The integer result must equal
  ``op.int_matmul.linear_np`` exactly: packing may reorder, pad or pre-compensate (e.g. VNNI's
  ``+128`` trick folds ``-128 * colsum(W)`` into the bias), never round.
* a schedule pass (``schedule_pass``): an ``IRModule -> IRModule`` pass applied after
  ``FuseTIR`` and before any MetaSchedule database, or ``None`` (CPU default: none needed).

The generic strategy is the plain NT layout of ``nn.Linear`` (``W [N, K]``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..op.int_matmul import linear_te


class LinearStrategy:
    """Generic layout: weight [N, K] int8, bias [N] int32, ``linear_te``."""

    name = "generic"

    def param_shapes(self, n: int, k: int) -> dict[str, tuple[tuple[int, ...], str]]:
        return {"weight": ((n, k), "int8"), "bias": ((n,), "int32")}

    def pack(self, weight: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
        return {"weight": weight, "bias": bias}

    def te(self, x, weight, bias):
        """x [..., K] int8 -> [..., N] int32 (``x W^T + b``)."""
        return linear_te(x, weight, bias)


GENERIC = LinearStrategy()
_LINEAR: dict[str, LinearStrategy] = {}
_SCHEDULE: dict[str, Callable] = {}


def register_linear(target: str, strategy: LinearStrategy) -> None:
    _LINEAR[target] = strategy


def register_schedule(target: str, make_pass: Callable) -> None:
    """``make_pass(target: tvm.target.Target) -> tvm.transform.Pass``."""
    _SCHEDULE[target] = make_pass


def linear_strategy(target: str) -> LinearStrategy:
    _load_target_modules()
    return _LINEAR.get(target, GENERIC)


def schedule_pass(target: str, tvm_target):
    _load_target_modules()
    make = _SCHEDULE.get(target)
    return None if make is None else make(tvm_target)


def _load_target_modules() -> None:
    """Import the per-target modules so they register themselves (none may exist yet)."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
