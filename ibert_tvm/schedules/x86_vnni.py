"""x86 AVX-512 VNNI: int8 linears on ``vpdpbusd`` (target ``x86``).

``vpdpbusd zmm_c, zmm_a, zmm_b`` adds, to each of 16 int32 lanes, the dot product of 4 *unsigned*
bytes of ``a`` with 4 *signed* bytes of ``b``. The activations of a linear are int8, so the kernel
shifts them into uint8 and the bias pays the shift back, exactly:

    sum_k x[k] w[n,k] + b[n]  =  sum_k (x[k] + 128) w[n,k]  +  (b[n] - 128 * sum_k w[n,k])
                                       \\___ uint8 ___/          \\______ bias' (int32) ______/

Layout (:class:`VnniLinear`, applied by ``pack`` once, at compile time, in integers):

* weight ``W [N, K] int8 -> Wp [Np/16, Kp/4, 16, 4]``, ``Wp[no, ko, ni, ki] = W[16 no + ni, 4 ko + ki]``
  with ``Np = ceil(N/16)*16``, ``Kp = ceil(K/4)*4``; padded rows/columns are 0 (they add 0);
* bias ``b [N] int32 -> b' = b - 128 * colsum(W)`` (``colsum`` over the real ``K`` only).

Kernel (:func:`vnni_linear_te`), for ``x [..., K]`` with symbolic leading dims flattened to ``M`` rows:

1. ``vnni_a_u8 [Mo, 32, Kp] uint8 = x + 128`` (rows regrouped in static tiles of ``TILE_M = 32``
   so that the row tile is a static loop a schedule/MetaSchedule can block in registers; rows
   ``>= M`` and columns ``>= K`` are 0);
2. ``vnni_matmul [Mo, 32, Np] int32 = sum_k a[.., k] * Wp[n/16, k/4, n%16, k%4]`` (the block
   tensorized with :data:`VNNI_INTRIN`);
3. ``linear_bias [..., N] int32 = acc[m / 32, m % 32, n] + b'[n]``.

int32 bounds (:func:`check_vnni_accumulator`, with ``|b| <= 2^30`` as for every linear): any
partial sum of step 2 is at most ``K * 255 * 128`` in magnitude; ``|b'| <= 2^30 + 128*128*K``;
the final sum equals the exact ``x W^T + b``, at most ``K * 128 * 128 + 2^30``. All three fit
int32 for ``K <= 65535`` (``linear_np``'s own limit), so no step wraps (``vpdpbusd`` wraps, it
does not saturate; ``vpdpbusds`` would). The build is bit-identical to ``linear_np``.

Intrinsic: :data:`~.intrinsics.VNNI_INTRIN` (:mod:`.intrinsics`: TVM's ``dot_16x4_vnni``
description with LLVM 22's operand types). Tuning gives MetaSchedule a
``MultiLevelTilingWithIntrin`` rule for this name (``tuning.space``).

Schedule rule (:class:`VnniLinearRule`; target ``x86``; a dlight ``ScheduleRule``, run by
``schedules.schedule_pass`` on every fused PrimFunc not already scheduled, e.g. by a tuning
database). It returns None for a PrimFunc without a ``vnni_matmul`` block. Otherwise the block is
tiled ``rows 4 x channels 64`` (:data:`ROW_TILE` x :data:`CHANNEL_BLOCKS` x 16 lanes), the
reduction split by 4, tensorized; the ``+128`` relayout runs first, parallel over rows.

The epilogue (``+ bias`` and whatever FuseOps fused behind it: the requantization, i-GELU, the
residual add) runs *inside the GEMM tile* (:func:`_schedule_tile_epilogue`): the element-wise
blocks are inlined into the last one, whose rows are regrouped like the GEMM's (``m = b*S + s``,
then 32-row tiles); each parallel task (channel tiles outermost for weights over 1 MiB) computes one 32-row x 64-channel tile into its own small
int32 buffer (the same 4 x 64 register tiles on ``vpdpbusd``) and applies the whole epilogue to
it, vectorized over channels, while it is in L1. Before, the int32 result of every linear went
to an ``[M, N]`` buffer and each epilogue block made its own pass over ``[M, N]`` intermediates:
for FFN-in (N = 3072, i-GELU) that was three extra passes over 12 MB at BERT-Base 8 x 128. The
integers are the same (the same expressions, only the loops move). A PrimFunc this does not fit
(packed low-bit weights, ``N % 16 != 0``, an epilogue that is not element-wise) keeps the
separate epilogue (:func:`_schedule_separate_epilogue`). x86's rule set
(:func:`x86_rules`) tries it first, then the attention products (:mod:`.x86_attention`), then the
row softmax (:mod:`.x86_softmax`), then the i-LayerNorm rows (:mod:`.x86_layernorm`).

Packed 2/3/4-bit weights (Q-BERT; ``VnniLinear.packed_*``): the run-time weight is a uint8
``[Np/16, Kp/4, 64 * bits / 8]`` array of *VNNI bit tiles* (:func:`pack_weight_bits`: each
16 x 4 weight tile in ``64 * bits / 8`` bytes, arranged so that unpacking is lane-wise), the bias
is ``b - 128 colsum(W)`` of the unpacked ``W``. The kernel's first stage (``unpack_weight``,
:func:`vnni_unpack_te`) rebuilds ``[Np/16, Kp/4, 16, 4]`` int8, which the same ``vnni_matmul``
reads. Its schedule (:func:`_schedule_unpack`) puts the channel tiles outermost (in parallel),
unpacks each tile's weights (at most 64 channels x Kp) right there, vectorized, and runs every row
tile against them: each weight is unpacked once per call and read from cache by the matmul.
"""

from __future__ import annotations

import numpy as np
from tvm.s_tir.dlight import ScheduleRule

from ..op.annotations import OP_PATTERN_ANNOTATION, OUT_EWISE_FUSABLE
from ..op.int_matmul import BIAS_BOUND, LINEAR_BIAS_BLOCK
from ..op.packed_weights import UNPACK_BLOCK
from . import LinearStrategy, find_block, register_linear, register_rules
from .intrinsics import KGROUP, LANES, VNNI_INTRIN, register_vnni_intrin

TILE_M = 32  # rows per static row tile (the dynamic part is the number of tiles)
A_BLOCK, MM_BLOCK = "vnni_a_u8", "vnni_matmul"  # this kernel's own stages
OUT_BLOCK = LINEAR_BIAS_BLOCK  # the + bias stage, named as in op.int_matmul.linear_te
SHIFT = 128  # int8 -> uint8: x + 128 = x ^ 0x80 (2^7, the int8 offset)
_INT32_MAX = (1 << 31) - 1


def _ceil(a: int, b: int) -> int:
    return -(-a // b) * b


def check_vnni_accumulator(k: int) -> None:
    """Prove the three int32 bounds of the module docstring for reduction length ``k``."""
    k = int(k)
    bounds = {
        "a partial u8*s8 sum": k * 255 * 128,
        "the compensated bias": BIAS_BOUND + SHIFT * 128 * k,
        "the result": k * 128 * 128 + BIAS_BOUND,
    }
    for what, b in bounds.items():
        if b > _INT32_MAX:
            raise ValueError(f"VNNI linear with K={k}: {what} can reach {b} > 2^31-1")


# -- packing (numpy, integers only) ---------------------------------------------------------
def pack_weight(weight: np.ndarray) -> np.ndarray:
    """``W [N, K] int8 -> [Np/16, Kp/4, 16, 4] int8`` (zero padded, a permutation otherwise)."""
    w = np.asarray(weight)
    if w.dtype != np.int8 or w.ndim != 2:
        raise ValueError(f"weight must be [N, K] int8, got {w.shape} {w.dtype}")
    n, k = w.shape
    np_, kp = _ceil(n, LANES), _ceil(k, KGROUP)
    padded = np.zeros((np_, kp), np.int8)
    padded[:n, :k] = w
    packed = padded.reshape(np_ // LANES, LANES, kp // KGROUP, KGROUP).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(packed)


def compensate_bias(weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``b' = b - 128 * sum_k W[n, k]`` as int32 (computed in int64, range-checked)."""
    w = np.asarray(weight)
    b = np.asarray(bias)
    if b.dtype != np.int32 or b.shape != (w.shape[0],):
        raise ValueError(f"bias must be [{w.shape[0]}] int32, got {b.shape} {b.dtype}")
    if np.abs(b.astype(np.int64)).max(initial=0) > BIAS_BOUND:
        raise ValueError("|bias| must be <= 2^30")
    check_vnni_accumulator(w.shape[1])
    out = b.astype(np.int64) - SHIFT * w.astype(np.int64).sum(axis=1)
    assert np.abs(out).max(initial=0) <= _INT32_MAX  # proven by check_vnni_accumulator
    return out.astype(np.int32)


def vnni_linear_np(x: np.ndarray, packed_weight: np.ndarray, packed_bias: np.ndarray) -> np.ndarray:
    """What the kernel computes, in numpy: ``(x + 128) . Wp + b'`` (x [..., K] int8 -> [..., N] int32)."""
    x = np.asarray(x)
    if x.dtype != np.int8:
        raise ValueError(f"x must be int8, got {x.dtype}")
    k, n = x.shape[-1], packed_bias.shape[0]
    nb, kb, _, _ = packed_weight.shape
    w = packed_weight.transpose(0, 2, 1, 3).reshape(nb * LANES, kb * KGROUP).astype(np.int64)
    a = np.zeros((*x.shape[:-1], kb * KGROUP), np.int64)
    a[..., :k] = x.astype(np.int64) + SHIFT  # uint8 range [0, 255]
    acc = a @ w.T
    assert np.abs(acc).max(initial=0) <= k * 255 * 128
    return (acc[..., :n] + packed_bias.astype(np.int64)).astype(np.int32)


# -- TE body --------------------------------------------------------------------------------
def _i64(v: int):
    from tvm import tirx

    return tirx.IntImm("int64", int(v))


def _unflatten(m, dims):
    """Row index ``m`` -> indices into the (possibly symbolic) leading ``dims``."""
    from tvm import tirx

    idx = []
    stride = None
    for d in reversed(dims):
        q = m if stride is None else tirx.floordiv(m, stride)
        idx.append(q if len(idx) == len(dims) - 1 else tirx.floormod(q, d))
        stride = d if stride is None else stride * d
    return idx[::-1]


def _flatten(idx, dims):
    m = idx[0]
    for i, d in zip(idx[1:], dims[1:]):
        m = m * d + i
    return m


def vnni_linear_te(x, weight, bias):
    """x [..., K] int8, weight [Np/16, Kp/4, 16, 4] int8, bias' [N] int32 -> [..., N] int32."""
    from tvm import te, tirx

    from ..op._common import check_te_dtype

    check_te_dtype("x", x, ("int8",))
    check_te_dtype("weight", weight, ("int8",))
    check_te_dtype("bias", bias, ("int32",))
    nb, kb, ni, ki = (int(d) for d in weight.shape)
    k_dim, n_dim = int(x.shape[-1]), int(bias.shape[0])
    if (ni, ki) != (LANES, KGROUP) or kb * KGROUP != _ceil(k_dim, KGROUP) or nb * LANES != _ceil(n_dim, LANES):
        raise ValueError(f"packed weight {[nb, kb, ni, ki]} does not fit K={k_dim}, N={n_dim}")
    check_vnni_accumulator(k_dim)
    lead = list(x.shape[:-1])
    if not lead:
        raise ValueError("x must have at least one leading (row) dimension")
    m_total = lead[0]  # M = prod(lead), the number of rows
    for d in lead[1:]:
        m_total = m_total * d
    tm = _i64(TILE_M)
    mo_extent = tirx.floordiv(m_total - 1, tm) + 1  # = ceil(M / 32), in the form region analysis derives
    kp, np_ = kb * KGROUP, nb * LANES

    def a_u8(mo, mi, k):
        # rows >= M and columns >= K read a clamped (valid) element: padded columns meet zero
        # weights, padded rows are never read back, so their values do not matter
        m = tirx.min(mo * tm + mi, m_total - 1)
        kk = k if kp == k_dim else tirx.min(k, k_dim - 1)
        return (x(*_unflatten(m, lead), kk).astype("int32") + SHIFT).astype("uint8")

    a = te.compute((mo_extent, tm, _i64(kp)), a_u8, name=A_BLOCK)
    k = te.reduce_axis((_i64(0), _i64(kp)), name="k")
    acc = te.compute(
        (mo_extent, tm, _i64(np_)),
        lambda mo, mi, n: te.sum(
            a[mo, mi, k].astype("int32")
            * weight[n // LANES, k // KGROUP, n % LANES, k % KGROUP].astype("int32"),
            axis=k,
        ),
        name=MM_BLOCK,
        # the row regrouping indexes x with the symbolic shape: AnnotateTIROpPattern would call
        # the function opaque; it is a matmul with an element-wise epilogue (see passes.pipeline)
        attrs={OP_PATTERN_ANNOTATION: OUT_EWISE_FUSABLE},
    )

    def out(*idx):
        *row, n = idx
        m = _flatten(row, lead)
        return acc[tirx.floordiv(m, tm), tirx.floormod(m, tm), n] + bias[n]

    return te.compute((*lead, _i64(n_dim)), out, name=OUT_BLOCK)


# -- packed low-bit weights (op.packed_weights): VNNI tiles of bits ---------------------------
# A VNNI weight tile Wp[no, ko] (16 channels x 4 k = 64 int8, t = 4 ni + ki) is stored in
# 64 * bits / 8 bytes, laid out so that unpacking is lane-wise (no byte gathers):
#   4 bits: byte j < 32 holds u[j] (low nibble) and u[j + 32] (high nibble);
#   2 bits: byte j < 16 holds u[j + 16 q] in bits 2q..2q+1, q < 4;
#   3 bits: bytes j < 16 hold the low 2 bits of u[j + 16 q] as at 2 bits; bytes 16 + j (j < 8)
#           hold bit 2 of u[j + 8 g] in bit g, g < 8;
# with u = q + 2^(bits-1) (offset binary, as in the row format); padding channels/columns hold
# u = 2^(bits-1), i.e. the weight 0. It is a permutation of the row format's bits (plus padding):
# the same bits per weight.
TILE_BYTES = {b: LANES * KGROUP * b // 8 for b in (2, 3, 4)}  # 16, 24, 32
UNPACK_VECTOR = {4: 32, 2: 16, 3: 8}  # lanes of one contiguous byte load in the unpack


def pack_weight_bits(packed: np.ndarray, bits: int, k: int) -> np.ndarray:
    """Row format uint8 ``[N, row_bytes(K, bits)]`` -> VNNI bit tiles ``[Np/16, Kp/4, TILE_BYTES]``."""
    from ..op.packed_weights import unpack_np

    bits = int(bits)
    q = unpack_np(packed, bits, k)
    n = q.shape[0]
    np_, kp = _ceil(n, LANES), _ceil(k, KGROUP)
    u = np.full((np_, kp), 1 << (bits - 1), np.uint8)
    u[:n, :k] = (q.astype(np.int16) + (1 << (bits - 1))).astype(np.uint8)
    t = u.reshape(np_ // LANES, LANES, kp // KGROUP, KGROUP).transpose(0, 2, 1, 3)
    t = t.reshape(np_ // LANES, kp // KGROUP, LANES * KGROUP)  # [no, ko, t = 4 ni + ki]
    if bits == 4:
        out = t[..., :32] | (t[..., 32:] << 4)
    elif bits == 2:
        out = t[..., 0:16] | (t[..., 16:32] << 2) | (t[..., 32:48] << 4) | (t[..., 48:64] << 6)
    elif bits == 3:
        lo, hi = t & 3, t >> 2
        low = lo[..., 0:16] | (lo[..., 16:32] << 2) | (lo[..., 32:48] << 4) | (lo[..., 48:64] << 6)
        high = np.zeros((*t.shape[:2], 8), np.uint8)
        for g in range(8):
            high |= hi[..., 8 * g : 8 * g + 8] << g
        out = np.concatenate([low, high], axis=-1)
    else:
        raise ValueError(f"only 2/3/4-bit weights are packed, got {bits}")
    return np.ascontiguousarray(out.astype(np.uint8))


def unpack_weight_bits_np(tiles: np.ndarray, bits: int, n: int, k: int) -> np.ndarray:
    """VNNI bit tiles -> int8 ``[N, K]`` (the inverse of :func:`pack_weight_bits`, for tests)."""
    tiles = np.asarray(tiles).astype(np.int64)
    t = np.arange(64)
    if bits == 4:
        u = (tiles[..., t % 32] >> (4 * (t // 32))) & 15
    elif bits == 2:
        u = (tiles[..., t % 16] >> (2 * (t // 16))) & 3
    else:
        u = ((tiles[..., t % 16] >> (2 * (t // 16))) & 3) | (((tiles[..., 16 + t % 8] >> (t // 8)) & 1) << 2)
    nb, kb = tiles.shape[:2]
    w = (u - (1 << (bits - 1))).reshape(nb, kb, LANES, KGROUP).transpose(0, 2, 1, 3).reshape(nb * LANES, kb * KGROUP)
    return w[:n, :k].astype(np.int8)


def vnni_unpack_te(tiles, bits: int):
    """uint8 ``[Np/16, Kp/4, TILE_BYTES]`` -> int8 ``[Np/16, Kp/4, 16, 4]`` (:func:`pack_weight`'s
    layout), the first stage of a packed kernel (``op.packed_weights.UNPACK_BLOCK``); int32
    arithmetic, each output lane reads byte ``t % L`` of its tile for ``L`` consecutive lanes."""
    from tvm import te, tirx

    from ..op._common import check_te_dtype

    check_te_dtype("weight_packed", tiles, ("uint8",))
    bits = int(bits)
    nb, kb, tb = (int(d) for d in tiles.shape)
    if tb != TILE_BYTES.get(bits):
        raise ValueError(f"{bits}-bit VNNI weight tiles must have {TILE_BYTES.get(bits)} bytes, got {tb}")

    def i32(v):
        return tirx.IntImm("int32", v)

    def value(no, ko, ni, ki):
        t = ni * KGROUP + ki

        def byte(j):
            return tiles[no, ko, j].astype("int32")

        if bits == 4:
            u = (byte(t % 32) >> (t // 32 * 4).astype("int32")) & i32(15)
        elif bits == 2:
            u = (byte(t % 16) >> (t // 16 * 2).astype("int32")) & i32(3)
        else:
            lo = (byte(t % 16) >> (t // 16 * 2).astype("int32")) & i32(3)
            hi = (byte(t % 8 + 16) >> (t // 8).astype("int32")) & i32(1)
            u = lo | (hi << i32(2))
        return (u - i32(1 << (bits - 1))).astype("int8")

    return te.compute((tiles.shape[0], tiles.shape[1], _i64(LANES), _i64(KGROUP)), value, name=UNPACK_BLOCK)


class VnniLinear(LinearStrategy):
    """Weights ``[Np/16, Kp/4, 16, 4]`` int8, bias ``b - 128 colsum(W)`` ``[N]`` int32."""

    name = "x86-vnni"

    def param_shapes(self, n: int, k: int) -> dict[str, tuple[tuple[int, ...], str]]:
        check_vnni_accumulator(k)
        return {
            "weight": ((_ceil(n, LANES) // LANES, _ceil(k, KGROUP) // KGROUP, LANES, KGROUP), "int8"),
            "bias": ((n,), "int32"),
        }

    def pack(self, weight: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
        return {"weight": pack_weight(weight), "bias": compensate_bias(weight, bias)}

    def te(self, x, weight, bias):
        register_vnni_intrin()  # MetaSchedule may tensorize this workload later in the process
        return vnni_linear_te(x, weight, bias)

    # packed low-bit weights: VNNI bit tiles [Np/16, Kp/4, 64 bits / 8] (pack_weight_bits),
    # ``b - 128 colsum(W)`` for the unpacked W; the kernel unpacks the tiles into
    # [Np/16, Kp/4, 16, 4] int8 (vnni_unpack_te) and runs the same VNNI matmul
    def packed_param_shapes(self, n: int, k: int, bits: int) -> dict[str, tuple[tuple[int, ...], str]]:
        check_vnni_accumulator(k)
        tb = TILE_BYTES[int(bits)]
        return {"weight_packed": ((_ceil(n, LANES) // LANES, _ceil(k, KGROUP) // KGROUP, tb), "uint8"),
                "bias": ((n,), "int32")}

    def pack_packed(self, packed: np.ndarray, bias: np.ndarray, bits: int, k: int) -> dict[str, np.ndarray]:
        from ..op.packed_weights import unpack_np

        return {"weight_packed": pack_weight_bits(packed, bits, k),
                "bias": compensate_bias(unpack_np(packed, bits, k), bias)}

    def packed_te(self, x, weight_packed, bias, *, bits: int, k: int):
        register_vnni_intrin()
        nb, kb = (int(d) for d in weight_packed.shape[:2])
        if kb * KGROUP != _ceil(int(k), KGROUP) or nb * LANES != _ceil(int(bias.shape[0]), LANES):
            raise ValueError(f"VNNI weight tiles {list(weight_packed.shape)} do not fit K={k}, N={bias.shape[0]}")
        return vnni_linear_te(x, vnni_unpack_te(weight_packed, bits), bias)


# -- the default (untuned) schedule ---------------------------------------------------------
# 4 rows x (4 x 16) channels of int32 accumulators per step: 4 x 4 = 16 zmm registers of the 32
# AVX-512 has, leaving room for the weight tiles and the broadcast activations
ROW_TILE, CHANNEL_BLOCKS = 4, 4
# int8 weights larger than this (bytes, N x K) put the tile epilogue's channel tiles outermost:
# about half of these CPUs' 2 MiB L2 (see _schedule_tile_epilogue, step 3)
CHANNELS_FIRST_BYTES = 1 << 20


def _parallel_rows(sch, block) -> None:
    """Fuse every loop but the innermost of an all-spatial block and run it in parallel."""
    loops = sch.get_loops(block)
    if len(loops) < 2 or any(int(iv.iter_type) != 0 for iv in sch.get(block).iter_vars):  # 0: spatial
        return
    outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
    sch.parallel(outer)


def _schedule_unpack(sch, unpack, loops) -> None:
    """Packed low-bit weights: channel tiles outermost and in parallel; each unpacks its weight
    tile (``cb x 16`` channels x ``Kp``, at most 4 x 16 x 4 KiB) right before the matmul reads it
    for every row, so the int8 weights stay in cache and are unpacked once per call; the unpack
    is vectorized over the contiguous bytes of a VNNI bit tile (``UNPACK_VECTOR`` lanes)."""
    mo, mi0, mi1, n0, n1, n2, k0, k1 = loops
    sch.reorder(n0, mo, mi0, k0, mi1, n1, n2, k1)
    sch.parallel(n0)
    sch.compute_at(unpack, n0)
    *_, ni, ki = sch.get_loops(unpack)
    bits = {b for b, tb in TILE_BYTES.items() if tb == int(sch.get(unpack).reads[0].source.shape[-1])}
    lanes = UNPACK_VECTOR[bits.pop()] if len(bits) == 1 else KGROUP
    _, nl = sch.split(ni, [None, lanes // KGROUP])
    sch.vectorize(sch.fuse(nl, ki))


def _schedule_separate_epilogue(sch, block, epilogue) -> None:
    """The GEMM on its own (``vnni_matmul`` into an ``[Mo, 32, Np]`` buffer), then each epilogue
    block in its own pass over the rows (packed low-bit weights, and what the tile epilogue
    does not fit)."""
    # 1. tile: rows (32 per static row tile) by ROW_TILE, channels by cb x 16 lanes, k by 4
    mo, mi, n, k = sch.get_loops(block)
    n_blocks = int(sch.get(n).extent) // LANES
    cb = max(c for c in (CHANNEL_BLOCKS, 2, 1) if n_blocks % c == 0)
    mi0, mi1 = sch.split(mi, [None, ROW_TILE])  # TILE_M % ROW_TILE == 0
    n0, n1, n2 = sch.split(n, [None, cb, LANES])
    k0, k1 = sch.split(k, [None, KGROUP])
    # 2. order and parallelism: packed weights unpack per channel tile (_schedule_unpack);
    #    otherwise row tiles x channel tiles across cores
    if UNPACK_BLOCK in epilogue:
        _schedule_unpack(sch, sch.get_sblock(UNPACK_BLOCK), (mo, mi0, mi1, n0, n1, n2, k0, k1))
    else:
        sch.reorder(mo, n0, mi0, k0, mi1, n1, n2, k1)
        sch.parallel(sch.fuse(mo, n0))
    # 3. the zero-init out of the reduction (tensorize needs a pure update), then the 16 x 4
    #    tile on vpdpbusd
    sch.decompose_reduction(block, k0)
    sch.tensorize(n2, VNNI_INTRIN)
    # 4. the +128 relayout and the element-wise epilogue: rows in parallel
    for name in epilogue:
        if name not in (MM_BLOCK, UNPACK_BLOCK):
            _parallel_rows(sch, sch.get_sblock(name))


def _schedule_tile_epilogue(func, names, tile_gemm=None):
    """The epilogue inside the GEMM tile (the module docstring); a new schedule of ``func``.

    Raises (any ``Exception``) when the PrimFunc does not have the expected shape; the caller
    then falls back to :func:`_schedule_separate_epilogue`.
    """
    from tvm import s_tir
    from tvm.tirx import IndexMap
    from tvm.tirx.transform import StmtSimplify

    sch = s_tir.Schedule(func)
    epilogue = [n for n in names if n not in (A_BLOCK, MM_BLOCK)]
    if names[:2] != [A_BLOCK, MM_BLOCK] or not epilogue or epilogue[0] != OUT_BLOCK:
        raise ValueError(f"not a plain VNNI linear with an epilogue: {names}")
    # 1. the element-wise chain into its last block (fails on a non-element-wise block or on an
    #    intermediate that is also an output of the function)
    for name in epilogue[:-1]:
        sch.compute_inline(sch.get_sblock(name))
    last = epilogue[-1]
    out = sch.get(sch.get_sblock(last))
    bias_out = sch.get(sch.get_sblock(MM_BLOCK)).writes[0].source  # [Mo, 32, Np]
    shape = list(out.writes[0].source.shape)
    lead, n_dim = shape[:-1], shape[-1]
    if (len(out.writes) != 1 or any(int(iv.iter_type) != 0 for iv in out.iter_vars)
            or len(out.iter_vars) != len(shape) or int(n_dim) % LANES or int(n_dim) != int(bias_out.shape[-1])):
        raise ValueError(f"{last}: not an all-spatial [..., N] block with N % {LANES} == 0")
    for iv, r, d in zip(out.iter_vars, out.writes[0].region, shape):
        if not (r.min.same_as(iv.var) and int(r.extent) == 1):
            raise ValueError(f"{last} does not write its own iteration point")
    # 2. its rows as one index m = ((b * S) + s) ..., as the GEMM numbers them; simplified, so
    #    that its read of the GEMM is vnni_matmul[m // 32, m % 32, n] (what compute_at follows)
    if len(lead) > 1:
        def rows(*idx):
            m = idx[0]
            for i, d in zip(idx[1:-1], lead[1:]):
                m = m * d + i
            return (m, idx[-1])

        sch.transform_block_layout(sch.get_sblock(last), IndexMap.from_func(rows, ndim=len(shape)))
        sch = s_tir.Schedule(StmtSimplify()(sch.mod)["main"])
    # 3. the epilogue's loops drive: 32-row x (cb x 16)-channel tiles, in parallel; the GEMM is
    #    computed per tile, right before the epilogue reads it. Which tiles are outermost
    #    depends on the weight's size (CHANNELS_FIRST_BYTES): a weight larger than about half
    #    of L2 gets its channel tiles outermost, so that the row tiles of one channel tile
    #    follow each other and its weight panel (cb x 16 x K bytes) is fetched once per call
    #    (row tiles outermost fetch the whole weight once per row tile: at BERT-Base 8 x 128,
    #    32 times 2.4 MB per FFN linear; channel tiles first made those kernels 7-10% cheaper).
    #    A smaller weight stays in L2 anyway, and row tiles outermost keep each row tile's
    #    activations in L1 across the channel tiles (channel tiles first cost MiniLM 8 x 128,
    #    whose FFN-out activations are 1.5 MB, 3% at 2 threads).
    e_block, block = sch.get_sblock(last), sch.get_sblock(MM_BLOCK)
    m, n = sch.get_loops(e_block)
    n_blocks = int(n_dim) // LANES
    cb = max(c for c in (CHANNEL_BLOCKS, 2, 1) if n_blocks % c == 0)
    mo, mi = sch.split(m, [None, TILE_M])
    n0, n1 = sch.split(n, [None, cb * LANES])
    k_dim = int(sch.get(block).iter_vars[-1].dom.extent)
    if int(n_dim) * k_dim > CHANNELS_FIRST_BYTES:
        sch.reorder(n0, mo, mi, n1)
        sch.compute_at(block, mo)
        sch.parallel(sch.fuse(n0, mo))
    else:
        sch.reorder(mo, n0, mi, n1)
        sch.compute_at(block, n0)
        sch.parallel(sch.fuse(mo, n0))
    # 4. the GEMM tile: as the separate schedule's inner loops (4 rows x cb x 16 channels of
    #    accumulators over the whole reduction, on vpdpbusd)
    t_mi, t_n, t_k = sch.get_loops(block)[1:]
    if int(sch.get(t_mi).extent) != TILE_M or int(sch.get(t_n).extent) != cb * LANES:
        raise ValueError("the GEMM tile under the epilogue is not 32 x cb*16")
    (tile_gemm or _vnni_tile)(sch, block)
    # 5. the epilogue over the finished tile, vectorized over its channels; the +128 relayout
    #    first, rows in parallel
    sch.vectorize(n1)
    _parallel_rows(sch, sch.get_sblock(A_BLOCK))
    return sch


def _vnni_tile(sch, block) -> None:
    """Step 4 of :func:`_schedule_tile_epilogue` on ``vpdpbusd``: 4-row x 16-channel register
    tiles over the whole reduction (``x86_amx.schedule_amx_tile`` is the AMX one)."""
    t_mi, t_n, t_k = sch.get_loops(block)[1:]
    mi0, mi1 = sch.split(t_mi, [None, ROW_TILE])
    n1_, n2_ = sch.split(t_n, [None, LANES])
    k0, k1 = sch.split(t_k, [None, KGROUP])
    sch.reorder(mi0, k0, mi1, n1_, n2_, k1)
    sch.decompose_reduction(block, k0)
    sch.tensorize(n2_, VNNI_INTRIN)


class VnniLinearRule(ScheduleRule):
    """Target ``x86``: the ``vnni_matmul`` block of a VNNI linear (:func:`vnni_linear_te`),
    tensorized on ``vpdpbusd``. None for a PrimFunc without that block (not a VNNI linear)."""

    def __init__(self) -> None:
        register_vnni_intrin()  # also what a tuning database's VNNI records tensorize with

    def apply(self, func, target, tunable):
        found = find_block(func, MM_BLOCK)
        if found is None:  # not a VNNI linear
            return None
        sch, block = found
        # the top-level blocks: the +128 relayout, the GEMM, the bias/epilogue, maybe the unpack
        names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
        if UNPACK_BLOCK not in names:
            try:
                return _schedule_tile_epilogue(func, names)
            except Exception:  # noqa: BLE001 - ScheduleError/ValueError: not this shape of kernel
                pass
        _schedule_separate_epilogue(sch, block, names)
        return sch


def x86_rules(_target) -> list:
    """Target ``x86``'s rule set, tried in this order on every unscheduled PrimFunc."""
    from .x86_attention import VnniAttentionRule
    from .x86_layernorm import RowLayerNormRule
    from .x86_layout import InjectiveRule
    from .x86_softmax import RowSoftmaxRule

    return [VnniLinearRule(), VnniAttentionRule(), RowSoftmaxRule(), RowLayerNormRule(), InjectiveRule()]


register_linear("x86", VnniLinear())
register_rules("x86", x86_rules)
