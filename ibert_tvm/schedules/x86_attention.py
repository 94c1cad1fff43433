"""x86 AVX-512 VNNI: the attention products ``Q K^T`` and ``P V`` on ``vpdpbusd`` (target ``x86``).

The model computes both with ``op.int_matmul.batch_matmul_te`` (a block named ``batch_matmul``,
``C[b, h, i, j] = sum_k A[b, h, i, k] * B[b, h, j, k]``), batch and sequence symbolic. This module
schedules that block in place, with schedule primitives only (the integer result is unchanged),
except the bare ``Q K^T`` PrimFunc, which is replaced by an equal one (below):

* ``P V`` (``A`` = P uint8 ``[B, h, S, S]``, ``B`` = V^T int8 ``[B, h, d, S]``, ``d`` static):
  uint8 x int8 is exactly ``vpdpbusd``'s operand pair. ``pad_einsum`` pads the reduction (the
  symbolic ``S``) to a multiple of 4 with zeros (they add 0); V^T is copied, per ``(b, h)``, into
  the intrinsic's layout ``[d/16, S/4, 16, 4]`` (``d`` padded to 16 with zero rows); the block is tensorized with
  ``intrinsics.VNNI_INTRIN``.
* ``Q K^T`` (int8 x int8, ``d`` static, padded to a multiple of 4 with zeros): ``vpdpbusd`` wants unsigned bytes, so
  the intrinsic :data:`~.intrinsics.S8S8_INTRIN` makes them inside the instruction sequence, exactly:

      sum_k q[k] k[j, k]  =  vpdpbusd(C, q ^ 0x80, Kj)  -  vpdpbusd(0, 0x80, Kj)
                           = sum_k (q[k] + 128) k[j, k]  -  128 sum_k k[j, k]

  (``q ^ 0x80`` is ``q + 128`` as a uint8). The rows ``i`` are padded to a multiple of
  :data:`QK_ROWS` (zero rows), the key rows ``j`` to 16 (zero keys); K is copied per ``(b, h)``
  into ``[S/16, d/4, 16, 4]``. The ``i`` tile is unrolled, so LLVM computes the compensation
  ``vpdpbusd(0, 0x80, Kj)`` once per tile (the same pure call) instead of once per row.

  That costs 3 instructions per ``vpdpbusd`` (load, xor, broadcast of q; the compensation; a
  subtraction in the accumulator chain). So when the PrimFunc is the bare product (the model's
  ``qk_matmul``: Q, K in, the int32 scores out, nothing fused), :class:`VnniAttentionRule`
  replaces it by the same sum in another order (:func:`_qk_biased_func`, identical integers):
  ``q + 128`` is made once, in Q's padding copy (uint8), ``128 * rowsum(K)`` once per key
  (``k_rowsum``, at ``(b, h)``), and the accumulators start from ``-128 * rowsum(K)[j]`` (the
  reduction's init) instead of 0; the product is then the plain uint8 x int8 ``vpdpbusd``
  (1.3x / 1.6x faster ``Q K^T`` at d = 32 / 64). Any other ``Q K^T`` PrimFunc (an epilogue
  fused) keeps :data:`~.intrinsics.S8S8_INTRIN`.

int32 bounds: a ``vpdpbusd`` lane adds 4 products of at most ``255 * 128`` each, and every
partial sum is bounded by the full one: ``Q K^T``: ``d * 255 * 128`` (the biased sum) and
``128 * 128 * d`` (the compensation), fine for ``d <= 65535``; ``P V``: ``S * 255 * 128``, which
``batch_matmul_te`` already proved for ``max_k`` (``check_accumulator``). ``vpdpbusd`` wraps
(never saturates), and int32 wrap-around is exact for the difference anyway.

Both run ``(b, h)`` in parallel. The padding copies are vectorized: Q and K at ``(b, h)``, P per
row tile, V^T's relayout in a ``(b, h)``-parallel loop nest of its own (at the matmul's
``(b, h)`` loop its inferred bounds carry min/max terms into every index: 1.4x slower ``P V``).
The output is computed in register tiles (a ``"local"`` accumulator, hence intrinsic
variants with a local ``C``): ``Q K^T`` :data:`QK_ROWS` query rows x 16 keys (key tiles
outermost, so a K tile stays in L1 for all rows), ``P V`` ``rows x d`` with :data:`PV_ACC`
int32x16 accumulators (independent ``vpdpbusd`` chains instead of one latency-bound chain per
row). Each tile is written back right after it, vectorized, together with any element-wise
epilogue fused into the PrimFunc (``P V``'s requantize); LoopPartition peels the partial edge
tiles off (``pragma_loop_partition_hint``), so full tiles store without per-element predicates.
Anything that does not match (another dtype, e.g. uint16 P; a static
dimension) keeps the generic schedule: the rule returns None.

The rule (:class:`VnniAttentionRule`) serves target ``x86`` only; x86's rule set
(``x86_vnni.x86_rules``) tries it on every fused, unscheduled PrimFunc that the VNNI linear rule
declined. The intrinsics (``VNNI_INTRIN``, ``S8S8_INTRIN``, with ``"local"`` accumulators) are in
:mod:`.intrinsics`.
"""

from __future__ import annotations

from tvm.s_tir.dlight import ScheduleRule

from ..op.int_matmul import BATCH_MATMUL_BLOCK
from . import find_block
from .intrinsics import KGROUP, LANES, register_s8s8_intrin, register_vnni_intrin

BLOCK = BATCH_MATMUL_BLOCK  # the block this rule schedules (op.int_matmul.batch_matmul_te)
QK_UNSIGNED = True  # Q K^T as (Q + 128) K^T - 128 rowsum(K) when the PrimFunc is the bare product
# query rows per Q K^T tile (unrolled; the compensation is shared by the tile): 8 int32x16
# accumulators, a quarter of AVX-512's 32 zmm registers
QK_ROWS = 8
P_VECTOR = 64  # bytes of P per vector copy: one 512-bit register of uint8
# int32x16 accumulators per P V tile (rows x d/16): half of the 32 zmm registers, the rest for
# the V^T tiles and the broadcast P bytes
PV_ACC = 16
PARTITION_HINT = "pragma_loop_partition_hint"  # LoopPartition: peel the partial edge tiles off


def _static(e):
    try:
        return int(e)
    except TypeError:
        return None


def _kind(sch, block):
    """``"qk"``, ``"pv"`` or None: which attention product ``block`` is (see the module doc)."""
    blk = sch.get(block)
    if len(blk.iter_vars) != 5 or [int(iv.iter_type) for iv in blk.iter_vars] != [0, 0, 0, 0, 2]:
        return None  # 0: spatial, 2: reduction
    if len(blk.writes) != 1:
        return None
    c = blk.writes[0].source
    inputs = [r.source for r in blk.reads if not r.source.same_as(c)]
    if len(inputs) != 2:
        return None
    a, b = inputs
    if len(a.shape) != 4 or len(b.shape) != 4 or str(c.dtype) != "int32" or str(b.dtype) != "int8":
        return None
    if str(a.dtype) == "int8" and _static(a.shape[-1]) is not None:
        return "qk"
    if str(a.dtype) == "uint8" and _static(b.shape[-2]) is not None:
        return "pv"
    return None


def _padded(sch, block, index):
    """The ``pad_einsum`` copy block of ``block``'s input ``index`` (0: A, 1: B)."""
    blk = sch.get(block)
    name = [r.source for r in blk.reads if not r.source.same_as(blk.writes[0].source)][index].name
    return sch.get_sblock(name + "_pad") if not name.endswith("_pad") else sch.get_sblock(name)


def _around(sch, block, bh, apart=None) -> None:
    """Padding copies (producers) and the copy back + epilogue (consumers) at the ``(b, h)`` loop;
    ``apart`` (a producer) keeps a loop nest of its own."""
    for p in sch.get_producers(block):
        if apart is None or not sch.get(p).same_as(sch.get(apart)):
            sch.compute_at(p, bh)
    for c in sch.get_consumers(block):
        after = sch.get_consumers(c)
        sch.reverse_compute_at(c, bh)
        for e in after:
            sch.reverse_compute_at(e, bh)


def _schedule_qk(sch, block) -> None:
    intrin = register_s8s8_intrin("local")  # registered by the rule: returns the name
    d_whole = int(sch.get(sch.get_loops(block)[-1]).extent) % KGROUP == 0  # no zero columns in Q, K
    sch.pad_einsum(block, [1, 1, QK_ROWS, LANES, KGROUP])
    b, h, i, j, k = sch.get_loops(block)
    bh = sch.fuse(b, h)
    io, ii = sch.split(i, [None, QK_ROWS])
    jo, ji = sch.split(j, [None, LANES])
    ko, ki = sch.split(k, [None, KGROUP])
    sch.reorder(jo, io, ko, ii, ji, ki)
    keys = _padded(sch, block, 1)  # the padded K
    sch.transform_layout(keys, ("write", 0), lambda b, h, j, k: (b, h, j // LANES, k // KGROUP, j % LANES, k % KGROUP))
    queries = _padded(sch, block, 0)
    _around(sch, block, bh)
    _local_tile(sch, block, io, (jo, io))
    if d_whole:  # (a padded d would make the vector lanes' condition differ: the build fails)
        sch.vectorize(sch.get_loops(queries)[-1])  # d bytes per (padded) query row
        _vector_copy(sch, keys, KGROUP)  # 4 bytes of a key row per K tile entry
    sch.parallel(bh)
    sch.decompose_reduction(block, ko)
    sch.tensorize(ji, intrin)
    sch.unroll(ii)


def _local_tile(sch, block, tile, partition=()) -> None:
    """Accumulate the ``tile`` in registers (a local buffer) and write it back right after the
    tile, vectorized, together with any element-wise epilogue."""
    cw = sch.cache_write(block, 0, "local")
    (copy,) = sch.get_consumers(cw)  # the padded output -> the unpadded one
    sch.compute_inline(cw)
    sch.reverse_compute_at(copy, tile)
    for e in sch.get_consumers(copy):  # e.g. P V's requantize: computed from the registers
        try:
            sch.reverse_compute_inline(e)
        except Exception:  # noqa: BLE001 - not inlinable: right after the copy, at the tile
            sch.reverse_compute_at(e, tile)
            sch.vectorize(sch.get_loops(e)[-1])
    sch.vectorize(sch.get_loops(copy)[-1])
    for loop in partition:
        sch.annotate(loop, PARTITION_HINT, 1)


def _schedule_pv(sch, block) -> None:
    intrin = register_vnni_intrin("local")
    b, h, i, n, s = sch.get_loops(block)
    rows = max(1, PV_ACC // (_ceil_static(sch.get(n).extent, LANES) // LANES))
    sch.pad_einsum(block, [1, 1, rows, LANES, KGROUP])
    b, h, i, n, s = sch.get_loops(block)
    bh = sch.fuse(b, h)
    io, ii = sch.split(i, [None, rows])
    no, ni = sch.split(n, [None, LANES])
    so, si = sch.split(s, [None, KGROUP])
    sch.reorder(io, so, ii, no, ni, si)
    vt = _padded(sch, block, 1)  # the padded V^T
    sch.transform_layout(vt, ("write", 0), lambda b, h, n, s: (b, h, n // LANES, s // KGROUP, n % LANES, s % KGROUP))
    _around(sch, block, bh, vt)
    _local_tile(sch, block, io, (io,))
    rows_pad = _padded(sch, block, 0)  # the padded P: per row tile, vectorized
    sch.compute_at(rows_pad, io)
    _vector_copy(sch, rows_pad, P_VECTOR)
    _relayout(sch, vt, KGROUP)
    sch.parallel(bh)
    sch.decompose_reduction(block, so)
    sch.tensorize(ni, intrin)
    sch.unroll(no)
    sch.unroll(ii)


def _relayout(sch, copy, lanes) -> None:
    """The padded relayout of K / V^T as a loop nest of its own, ``(b, h)`` in parallel: exact
    loop bounds (at the matmul's ``(b, h)`` loop, the inferred ones carry min/max terms into every
    index), ``lanes`` bytes per vector store."""
    b, h, *_ = sch.get_loops(copy)
    sch.parallel(sch.fuse(b, h))
    if lanes:
        _vector_copy(sch, copy, lanes)


def _vector_copy(sch, copy, lanes: int) -> None:
    """Split the innermost loop of ``copy`` by ``lanes`` and vectorize; LoopPartition peels the
    partial vector (and the padding) off."""
    outer, inner = sch.split(sch.get_loops(copy)[-1], [None, lanes])
    sch.annotate(outer, PARTITION_HINT, 1)
    sch.vectorize(inner)


def _ceil_static(e, m: int) -> int:
    return (int(e) + m - 1) // m * m


class VnniAttentionRule(ScheduleRule):
    """Target ``x86``: the attention products ``Q K^T`` / ``P V`` (a ``batch_matmul`` block) on
    ``vpdpbusd`` (see the module doc). None when the PrimFunc has no such block, when it is not a
    product this rule handles (:func:`_kind`), or when a schedule step fails on its shapes (the
    generic schedule stays)."""

    def __init__(self) -> None:
        register_vnni_intrin("local")  # P V and the biased Q K^T
        register_s8s8_intrin("local")  # Q K^T with an epilogue fused

    def apply(self, func, target, tunable):
        from tvm import s_tir

        found = find_block(func, BLOCK)
        if found is None:
            return None
        sch, block = found
        kind = _kind(sch, block)
        if kind is None:
            return None
        # the bare Q K^T: replaced by the equal biased product, on the plain u8 x s8 intrinsic
        if kind == "qk" and QK_UNSIGNED:
            biased = _qk_biased(func, sch, block)
            if biased is not None:
                try:
                    sch = s_tir.Schedule(biased)
                    _schedule_qk_biased(sch, sch.get_sblock(BLOCK))
                    return sch
                except Exception:  # noqa: BLE001 - fall back to the s8 x s8 intrinsic below
                    sch = s_tir.Schedule(func)
                    block = sch.get_sblock(BLOCK)
        # any other Q K^T (s8 x s8 intrinsic), or P V (u8 x s8)
        try:
            (_schedule_qk if kind == "qk" else _schedule_pv)(sch, block)
        except Exception:  # noqa: BLE001 - a shape this schedule cannot handle: keep the generic one
            return None
        return sch


def _qk_biased(func, sch, block):
    """``Q K^T`` as ``(Q + 128) K^T - 128 * rowsum(K)`` (the same integers, see the module doc):
    the row sums initialise the accumulators, so the product runs on the plain ``vpdpbusd``.
    None when ``func`` is not the bare product (``q``, ``k`` -> the output, static heads and d)."""
    root = sch.get_sblock("root")
    if len(func.params) != 3 or len(sch.get_child_blocks(root)) != 1 or len(sch.get(root).alloc_buffers):
        return None  # one block, no intermediate buffer: it reads Q, K and writes the output param
    blk = sch.get(block)
    out_buf = blk.writes[0].source
    q_buf, k_buf = (r.source for r in blk.reads if not r.source.same_as(out_buf))
    if len(q_buf.shape) != 4 or str(k_buf.dtype) != "int8":
        return None
    heads, d = _static(q_buf.shape[1]), _static(q_buf.shape[3])
    if heads is None or d is None:
        return None
    new = _qk_biased_func(heads, d)
    for key, value in (func.attrs or {}).items():
        new = new.with_attr(key, value)
    return new


def _qk_biased_func(heads: int, d: int):
    from tvm import tirx
    from tvm.script import tirx as T

    H, D = tirx.IntImm("int64", heads), tirx.IntImm("int64", d)

    @T.prim_func(private=True, s_tir=True)
    def main(var_q: T.handle, var_k: T.handle, var_out: T.handle):
        T.func_attr({"tirx.noalias": True})
        batch, seq = T.int64(), T.int64()
        q = T.match_buffer(var_q, (batch, H, seq, D), "int8")
        k = T.match_buffer(var_k, (batch, H, seq, D), "int8")
        out = T.match_buffer(var_out, (batch, H, seq, seq), "int32")
        with T.sblock("root"):
            k_rowsum = T.sblock_alloc_buffer((batch, H, seq), "int32")
            q_biased = T.sblock_alloc_buffer((batch, H, seq, D), "uint8")
            for b, h, j, r in T.grid(batch, H, seq, D):
                with T.sblock("k_rowsum"):
                    vb, vh, vj, vr = T.axis.remap("SSSR", [b, h, j, r])
                    with T.init():
                        k_rowsum[vb, vh, vj] = 0
                    k_rowsum[vb, vh, vj] = k_rowsum[vb, vh, vj] + T.Cast("int32", k[vb, vh, vj, vr])
            for b, h, i, r in T.grid(batch, H, seq, D):
                with T.sblock("q_biased"):
                    vb, vh, vi, vr = T.axis.remap("SSSS", [b, h, i, r])
                    q_biased[vb, vh, vi, vr] = T.Cast("uint8", T.Cast("int32", q[vb, vh, vi, vr]) + 128)
            for b, h, i, j, r in T.grid(batch, H, seq, seq, D):
                with T.sblock("batch_matmul"):
                    vb, vh, vi, vj, vr = T.axis.remap("SSSSR", [b, h, i, j, r])
                    with T.init():
                        out[vb, vh, vi, vj] = k_rowsum[vb, vh, vj] * -128
                    out[vb, vh, vi, vj] = out[vb, vh, vi, vj] + T.Cast("int32", q_biased[vb, vh, vi, vr]) * T.Cast("int32", k[vb, vh, vj, vr])

    return main


def _schedule_qk_biased(sch, block) -> None:
    intrin = register_vnni_intrin("local")
    d_whole = int(sch.get(sch.get_loops(block)[-1]).extent) % KGROUP == 0
    sch.pad_einsum(block, [1, 1, QK_ROWS, LANES, KGROUP])
    b, h, i, j, k = sch.get_loops(block)
    bh = sch.fuse(b, h)
    io, ii = sch.split(i, [None, QK_ROWS])
    jo, ji = sch.split(j, [None, LANES])
    ko, ki = sch.split(k, [None, KGROUP])
    sch.reorder(jo, io, ko, ii, ji, ki)
    keys = sch.get_sblock("k_pad")
    sch.transform_layout(keys, ("write", 0), lambda b, h, j, k: (b, h, j // LANES, k // KGROUP, j % LANES, k % KGROUP))
    queries = sch.get_sblock("q_biased_pad")
    sch.compute_inline(sch.get_sblock("q_biased"))
    _around(sch, block, bh)
    sch.compute_at(sch.get_sblock("k_rowsum"), bh)
    _local_tile(sch, block, io, (jo, io))
    if d_whole:
        sch.vectorize(sch.get_loops(queries)[-1])
        _vector_copy(sch, keys, KGROUP)
    sch.parallel(bh)
    init = sch.decompose_reduction(block, ko)
    # the accumulators' init (-128 * rowsum(K), per key) as whole int32x16 stores: LLVM's own
    # 256-bit stores, reloaded as 512-bit accumulators, defeated store-to-load forwarding (a
    # stall per accumulator per tile, the kernel's hottest instruction at BERT-Base 8 x 128)
    sch.vectorize(sch.get_loops(init)[-1])
    # the update reads no row sums (only the init does): the region left over from the
    # un-decomposed block would keep the update from matching the intrinsic
    reads = [r.source.name for r in sch.get(block).reads]
    sch.unsafe_hide_buffer_access(block, "read", [reads.index("k_rowsum_pad")])
    sch.tensorize(ji, intrin)
    sch.unroll(ii)
