"""Per-target lowering choices: how int8 linears are laid out, and how kernels are scheduled.

A target contributes two things, looked up by target name (``ibert_tvm.targets.TARGETS``):

* a :class:`LinearStrategy`: the run-time layout of each int8 linear's weight/bias
  (``pack``), the declared parameter shapes (``param_shapes``) and the TE body (``te``) that
  computes ``x W^T + b`` as int32 from them. The integer result must equal
  ``op.int_matmul.linear_np`` exactly: packing may reorder, pad or pre-compensate (e.g. VNNI's
  ``+128`` trick folds ``-128 * colsum(W)`` into the bias), never round.
* its schedule rules (``register_rules``): TVM dlight ``ScheduleRule`` objects, one per op class
  (e.g. x86: the VNNI linear, the VNNI attention products, the row softmax). ``schedule_pass``
  turns them into the target's schedule, dlight's ``ApplyDefaultSchedule(*rules)``: applied
  after ``FuseTIR`` and after any MetaSchedule database, it gives each PrimFunc not already
  scheduled (``tirx.is_scheduled``: by the database, or by an earlier rule) to the first rule
  whose ``apply`` does not return None, and leaves the rest to TVM's default lowering. A target
  without rules has no schedule pass (``None``; the CPU default needs none).

Module map (no cycles: the target modules import :mod:`.intrinsics` and ``op/``, and x86's linear
module assembles x86's rule set from the two other x86 rule modules)::

    __init__        LinearStrategy (generic layout), the registries, schedule_pass
    intrinsics      every tensor intrinsic (VNNI u8xs8 / s8xs8, sdot, dp4a, WMMA)
    x86_vnni        x86: VNNI linear layout + TE, VnniLinearRule, x86's rule set
    x86_attention   x86: VnniAttentionRule (Q K^T, P V)
    x86_softmax     x86: RowSoftmaxRule
    x86_amx         x86-amx: the VNNI linear's GEMM tile on AMX tdpbusd, AmxLinearRule, the rule set
    x86_layernorm   x86: RowLayerNormRule (i-LayerNorm rows in parallel, 16-lane partial sums)
    row_rule        MatchScheduleRule: a block match + a schedule (the x86 row rules)
    arm_sdot        aarch64: sdot linear layout + TE, SdotLinearRule
    cuda_t4         cuda-t4: T4Int8MatmulRule (+ dlight's GPU rules for the rest)
    tuning_db       the tuning databases: format, lookup, checks (what compile applies; the
                    tuner that writes them is ibert_tvm.tuning)

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
_RULES: dict[str, Callable] = {}
_TARGET_MODULES = ("x86_vnni", "x86_amx", "arm_sdot", "cuda_t4")  # each registers its target on import
SCHEDULED = "tirx.is_scheduled"  # the PrimFunc attr dlight and MetaSchedule set (and skip on)


def register_linear(target: str, strategy: LinearStrategy) -> None:
    _LINEAR[target] = strategy


def register_rules(target: str, make_rules: Callable) -> None:
    """``make_rules(tvm_target) -> list[ScheduleRule]``, in the order they are tried; called once
    per :func:`schedule_pass`, so it may register the tensor intrinsics its rules use (a tuning
    database applied before the schedule names them)."""
    _RULES[target] = make_rules


def linear_strategy(target: str) -> LinearStrategy:
    _load_target_modules()
    return _LINEAR.get(target, GENERIC)


def schedule_rules(target: str, tvm_target) -> list:
    """The target's schedule rules (``[]`` when it has none)."""
    _load_target_modules()
    make = _RULES.get(target)
    return [] if make is None else list(make(tvm_target))


def schedule_pass(target: str, tvm_target):
    """The target's schedule, ``IRModule -> IRModule``, or None when it has no rules.

    It is TVM's ``dlight.ApplyDefaultSchedule(*rules)`` (functions marked ``tirx.is_scheduled``
    are skipped; a scheduled one is marked), run inside ``tvm_target`` (dlight reads the target
    from the context) on a copy of the module: ``ApplyDefaultSchedule`` replaces functions in the
    module it is given, and callers (the tuner's guard) keep using their unscheduled module."""
    rules = schedule_rules(target, tvm_target)
    if not rules:
        return None
    import tvm  # lazy: this package is imported by the model before anything needs TVM
    from tvm.s_tir import dlight as dl

    apply = dl.ApplyDefaultSchedule(*rules)

    @tvm.transform.module_pass(opt_level=0, name=f"IBertSchedule[{target}]")
    def _pass(mod, _ctx):
        with tvm_target:
            return apply(mod.clone())

    return _pass


def is_scheduled(func) -> bool:
    """A PrimFunc already scheduled (by a tuning database or a schedule rule): dlight's test."""
    attrs = func.attrs
    return bool(attrs is not None and SCHEDULED in attrs and attrs[SCHEDULED])


def find_block(func, name: str):
    """``(schedule, block)`` for the block ``name`` of the PrimFunc ``func``, or None when
    ``func`` is not a PrimFunc or has no such block: how a rule tells whether it applies."""
    from tvm import s_tir, tirx

    if not isinstance(func, tirx.PrimFunc):
        return None
    sch = s_tir.Schedule(func)
    try:
        return sch, sch.get_sblock(name)
    except Exception:  # noqa: BLE001 - no such block (ScheduleError)
        return None


def _load_target_modules() -> None:
    """Import the per-target modules so they register themselves."""
    import importlib

    for name in _TARGET_MODULES:
        importlib.import_module(f"{__name__}.{name}")
