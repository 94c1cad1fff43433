"""aarch64 NEON dot-product: int8 linears tensorized to ``sdot`` (target ``aarch64``).

``sdot v_c.4s, v_a.16b, v_b.16b`` adds, to each of 4 int32 lanes, the dot product of 4 int8
pairs. The tensor intrinsic :data:`INTRIN` computes ``C[i] += sum_k A[k] * B[i, k]`` for
``i, k < 4``: one row of 4 activations (broadcast to the 4 lanes) against a 4x4 tile of weights
stored row-major, i.e. 4 output channels x 4 consecutive ``k``: a single ``sdot``. It is the
contract of TVM's ``ARM_DOT_4x4_i8_SDOT_INTRIN``, registered under our own name in
:mod:`.intrinsics` (importing ``tvm.s_tir.tensor_intrin`` parses every target's intrinsics).

Layout (:class:`SdotLinear`): ``W [N, K] int8 -> Wp [N/4, K/4, 4, 4]`` with
``Wp[no, ko, ni, ki] = W[4 no + ni, 4 ko + ki]`` (a pure permutation: no padding, no rounding);
the bias stays ``[N] int32``. A linear whose ``N`` or ``K`` is not a multiple of 4 keeps the
generic ``[N, K]`` layout (``te`` dispatches on the weight's rank).

Schedule rule (:class:`SdotLinearRule`; target ``aarch64``, applied by ``schedules.schedule_pass``
after ``FuseTIR`` to every fused PrimFunc not already scheduled, e.g. by a tuning database). It
returns None when the target lacks ``+dotprod`` (LLVM's own vectorizer then decides) or the
PrimFunc has no ``sdot_acc`` block. Otherwise each ``sdot_acc`` block
``acc[m.., n] += x[m.., k] * Wp[n/4, k/4, n%4, k%4]`` is

1. split ``n -> (no, ni=4)``, ``k -> (ko, ki=4)`` and reordered ``.., no, ko, ni, ki``;
2. the activation rows (batch x sequence, fused) parallelised when the target has more than
   one core;
3. its zero-initialisation decomposed out above ``ko`` (tensorize needs a pure update);
4. the ``ni, ki`` 4x4 tile tensorized with :data:`INTRIN`.

Integer semantics are unchanged (int32 sums of the same products; int32 addition is
associative), so the build is bit-identical to ``op.int_matmul.linear_np`` and to the golden
executor; the attention products (``Q K^T``, ``P V``: symbolic sequence extents, ``P`` is
uint8) keep the default schedule, where LLVM's loop vectorizer may still use ``sdot``.
"""

from __future__ import annotations

import numpy as np
from tvm import tirx
from tvm.s_tir.dlight import ScheduleRule

from . import LinearStrategy, register_linear, register_rules
from .intrinsics import SDOT_INTRIN as INTRIN
from .intrinsics import SDOT_TILE as TILE
from .intrinsics import register_sdot_intrin

ACC_BLOCK = "sdot_acc"  # this kernel's accumulation stage (FuseTIR suffixes copies: sdot_acc_1, ..)


def _tiles(n: int, k: int) -> bool:
    return n % TILE == 0 and k % TILE == 0


class SdotLinear(LinearStrategy):
    """Weights ``[N/4, K/4, 4, 4]`` int8 (see the module docstring), bias ``[N]`` int32."""

    name = "arm-sdot"

    def param_shapes(self, n: int, k: int) -> dict[str, tuple[tuple[int, ...], str]]:
        if not _tiles(n, k):
            return super().param_shapes(n, k)
        return {"weight": ((n // TILE, k // TILE, TILE, TILE), "int8"), "bias": ((n,), "int32")}

    def pack(self, weight: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
        """``W [N, K] -> Wp[no, ko, ni, ki] = W[4 no + ni, 4 ko + ki]`` (bias unchanged)."""
        n, k = weight.shape
        if not _tiles(n, k):
            return super().pack(weight, bias)
        wp = weight.reshape(n // TILE, TILE, k // TILE, TILE).transpose(0, 2, 1, 3)
        return {"weight": np.ascontiguousarray(wp, dtype=np.int8), "bias": bias}

    def te(self, x, weight, bias):
        """x [..., K] int8 -> [..., N] int32 = ``x W^T + b`` with ``weight`` packed."""
        if len(weight.shape) == 2:
            return super().te(x, weight, bias)
        return sdot_linear_te(x, weight, bias)

    # packed low-bit weights: the packed rows as stored; the kernel unpacks them into
    # [N/4, K/4, 4, 4] (UNPACK_BLOCK) and runs the same sdot matmul (generic when N, K % 4 != 0)
    def packed_te(self, x, weight_packed, bias, *, bits: int, k: int):
        if not _tiles(int(weight_packed.shape[0]), k):
            return super().packed_te(x, weight_packed, bias, bits=bits, k=k)
        return sdot_linear_te(x, sdot_unpack_te(weight_packed, bits, k), bias)


def sdot_unpack_te(packed, bits: int, k: int):
    """uint8 ``[N, row_bytes(K, bits)]`` -> int8 ``[N/4, K/4, 4, 4]`` (``Wp[no, ko, ni, ki] =
    W[4 no + ni, 4 ko + ki]``), the first stage of a packed low-bit kernel."""
    from tvm import te

    from ..op.packed_weights import (
        UNPACK_BLOCK,
        check_packed_te,
        _imm_like,
        unpack_value_te,
    )

    n, k = check_packed_te(packed, bits, k)
    shape = tuple(_imm_like(packed.shape[0], d) for d in (n // TILE, k // TILE, TILE, TILE))
    return te.compute(
        shape,
        lambda no, ko, ni, ki: unpack_value_te(packed, no * TILE + ni, ko * TILE + ki, bits).astype("int8"),
        name=UNPACK_BLOCK,
    )


def sdot_linear_te(x, weight, bias):
    """x [..., K] int8, weight [N/4, K/4, 4, 4] int8 (a placeholder or an unpack stage), bias
    [N] int32 -> [..., N] int32: the ``sdot_acc`` block the schedule tensorizes, + bias."""
    from tvm import te

    from ..op._common import check_te_dtype
    from ..op.int_matmul import BIAS_BOUND, check_accumulator

    check_te_dtype("x", x, ("int8",))  # sdot is signed x signed
    check_te_dtype("weight", weight, ("int8",))
    check_te_dtype("bias", bias, ("int32",))
    no, ko, ni, ki = (int(d) for d in weight.shape)
    if (ni, ki) != (TILE, TILE) or int(x.shape[-1]) != ko * TILE or int(bias.shape[0]) != no * TILE:
        raise ValueError(
            f"packed weight {list(weight.shape)} does not match x K={x.shape[-1]} / bias N={bias.shape[0]}"
        )
    check_accumulator(ko * TILE, "int8", "int8", BIAS_BOUND)
    k = te.reduce_axis((0, ko * TILE), name="k")

    def mac(*idx):
        *lead, n = idx
        w = weight[n // TILE, k // TILE, n % TILE, k % TILE]
        return te.sum(x(*lead, k).astype("int32") * w.astype("int32"), axis=k)

    acc = te.compute((*x.shape[:-1], no * TILE), mac, name=ACC_BLOCK)
    return te.compute(acc.shape, lambda *idx: acc(*idx) + bias[idx[-1]], name="sdot_bias")


def _has_dotprod(target) -> bool:
    attrs = target.attrs.get("mattr", None) or []
    return "+dotprod" in [str(a) for a in attrs]


class SdotLinearRule(ScheduleRule):
    """Target ``aarch64`` with ``+dotprod``: every ``sdot_acc`` block of a PrimFunc tensorized
    to ``sdot`` (see the module doc). None on a target without ``+dotprod`` and for a PrimFunc
    without an ``sdot_acc`` block."""

    def __init__(self) -> None:
        register_sdot_intrin()

    def apply(self, func, target, tunable):
        from tvm import s_tir

        if not isinstance(func, tirx.PrimFunc) or not _has_dotprod(target):
            return None
        sch = s_tir.Schedule(func)
        try:
            root = sch.get_sblock("root")
        except Exception:  # noqa: BLE001 - ScheduleError: a function without a root block
            return None
        # FuseTIR keeps TE names, suffixing duplicates (sdot_acc, sdot_acc_1, ...)
        blocks = [b for b in sch.get_child_blocks(root) if sch.get(b).name_hint.startswith(ACC_BLOCK)]
        if not blocks:
            return None
        parallel = int(target.attrs.get("num-cores", 1)) > 1
        for block in blocks:
            # 1. n -> (no, ni=4), k -> (ko, ki=4), reordered .., no, ko, ni, ki
            *lead, n, k = sch.get_loops(block)
            no, ni = sch.split(n, [None, TILE])
            ko, ki = sch.split(k, [None, TILE])
            sch.reorder(no, ko, ni, ki)
            # 2. rows (batch x sequence) across cores; before blockizing
            if parallel and lead:
                sch.parallel(sch.fuse(*lead) if len(lead) > 1 else lead[0])
            # 3. the zero-init out of the reduction (tensorize needs a pure update); 4. the 4x4 tile
            sch.decompose_reduction(block, ko)
            sch.tensorize(ni, INTRIN)
        return sch


register_linear("aarch64", SdotLinear())
def sdot_rules(target) -> list:
    """Target ``aarch64``'s rule set: none without ``+dotprod`` (then no schedule pass at all)."""
    return [SdotLinearRule()] if _has_dotprod(target) else []


register_rules("aarch64", sdot_rules)
