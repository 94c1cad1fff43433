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

Low-bit linears (Q-BERT's 2/3/4-bit weights, :mod:`ibert_tvm.op.packed_weights`) have a second
set of hooks: ``packed_param_shapes`` / ``pack_packed`` / ``packed_te``. Their weight is a
parameter ``weight_packed`` (uint8 ``[N, row_bytes(K, bits)]``, the packed row format itself:
the run-time tensor keeps ``bits`` bits per weight) and the TE body unpacks it *inside the
kernel*, in a stage named ``op.packed_weights.UNPACK_BLOCK`` of the same PrimFunc, into whatever
int8 layout the strategy's matmul reads; the bias may be pre-compensated as for 8-bit weights.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..op.int_matmul import linear_te
from ..op.packed_weights import packed_linear_te, row_bytes


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

    # -- packed low-bit weights ---------------------------------------------------------------
    def packed_param_shapes(self, n: int, k: int, bits: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """Parameters of a ``bits``-bit linear: ``weight_packed`` uint8 ``[N, row_bytes(K, bits)]``,
        ``bias`` ``[N]`` int32 (generic: the packed row format as stored, bias unchanged)."""
        return {"weight_packed": ((n, row_bytes(k, bits)), "uint8"), "bias": ((n,), "int32")}

    def pack_packed(self, packed: np.ndarray, bias: np.ndarray, bits: int, k: int) -> dict[str, np.ndarray]:
        return {"weight_packed": packed, "bias": bias}

    def packed_te(self, x, weight_packed, bias, *, bits: int, k: int):
        """x [..., K] int8 -> [..., N] int32 = ``x W^T + b``, ``W`` unpacked in the kernel."""
        return packed_linear_te(x, weight_packed, bias, bits, k)


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
