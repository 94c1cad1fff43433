"""NVIDIA T4 (sm_75): int8 matmuls on tensor cores (WMMA) and dp4a, everything else via dlight.

Target ``cuda-t4``. The kernels are the project's TE ops, unchanged (the generic
:class:`~ibert_tvm.schedules.LinearStrategy`: ``W [N, K]`` int8, bias int32; no
``register_linear`` here); this module only *schedules* them. Its rule, :class:`T4Int8MatmulRule`, serves target ``cuda-t4``
and is the first of the target's rule set (:func:`t4_rules`), which ``schedules.schedule_pass``
runs after ``FuseTIR`` and any tuning database on every PrimFunc not already scheduled:

* a fused PrimFunc whose one reduction block is an int8/uint8 x int8 -> int32 matmul (the
  linears, ``Q K^T``, ``P V``) is normalised to ``C[S, I, J] += A[S, I, K] * B[S, J, K]`` with
  dlight's matmul analysis (a linear's batch and sequence dims fuse into ``I``), zero-padded to
  the tile (``pad_einsum``: batch and sequence length are symbolic), and then

  - int8 x int8 (linears, ``Q K^T``) -> :func:`schedule_wmma`: ``wmma.mma.sync ... m16n16k16
    .s32.s8.s8.s32`` on tensor cores; each warp owns up to 2x2 accumulator fragments, up to 2x2
    warps per thread block, K staged through shared memory 32 at a time in a fragment-contiguous layout
    (every ``wmma.load`` 256-bit aligned);
  - uint8 x int8 (``P V``: the softmax output is uint8, and CUDA's WMMA fragments only pair
    operands of equal signedness) -> :func:`schedule_dp4a`: a register-tiled SIMT kernel whose
    4-wide inner K step is ``__dp4a`` (PTX ``dp4a.u32.s32``; ``dp4a.s32.s32`` for int8 x int8
    when asked, ``prefer="dp4a"``, or when the WMMA schedule does not apply);

  the epilogue (bias, requantization, GELU, residual add) is inlined into the write-back of the
  same kernel. A uint16 ``P`` (the scheme's ``softmax_bits`` > 8) reaches this rule as two
  uint8 ``pv_matmul`` byte products (``op.wide_pv``, split by the lowering), so it runs on dp4a
  like the 8-bit ``P V``.
* every other PrimFunc (embeddings, LayerNorm, softmax, pooling, transposes) gets dlight's GPU
  rules (Reduction, GeneralReduction, Fallback). dlight's Matmul rule is not used for int8
  matmuls: its tensor-core path crashes TVM 0.27's software pipelining on sm_75.

The tensor intrinsics (``wmma_intrins``, ``dp4a_intrin``) are our own registrations, in
:mod:`.intrinsics` (TVM's WMMA fill intrinsic passes a float32 zero: a float literal in an int32
kernel).

Why a CUDA build computes bit for bit what the CPU build and the golden executor compute
----------------------------------------------------------------------------------------
Nothing here is measured: there is no GPU on the build machines, so no CUDA kernel has been run
(``ibert_tvm.deploy.cuda_check`` checks the CUDA source and the PTX ``nvcc`` makes of it). The
argument: the TE compute is the one the CPU build uses, and every step above is a TVM schedule
primitive, which changes where and in which order the same integer operations happen, not what
they are:

* ``reindex``/``transform_layout``/``cache_read``/``cache_write``/``compute_at`` only move data
  between buffers (global, shared, registers, fragments) unchanged;
* ``pad_einsum`` extends M/N/K with zeros (``if_then_else`` guards): a padded ``k`` adds
  ``x * 0`` or ``0 * w`` = 0 to an accumulator; padded rows/columns of ``C`` are never written;
* the reduction is regrouped (per-thread / per-fragment partial sums over K chunks). int32
  addition is associative as long as nothing wraps, and nothing does: every partial sum of
  int8 x int8 (uint8 x int8) products is bounded by the full-length bound
  ``K * 128 * 128`` (``K * 255 * 128``) that ``op.int_matmul.check_accumulator`` proves < 2^31;
* a packed low-bit linear (``op.packed_weights``, generic strategy: the packed uint8 rows are
  the parameter) has one more block, ``unpack_weight``, an injective int32 expression of the
  packed bytes; ``auto_inline_producers`` inlines it into the shared-memory load of the weight
  (``compute_inline`` substitutes the same expression, evaluated when the tile is loaded), so
  the tensor cores read exactly the int8 weights ``unpack_np`` gives;
* tensorization replaces a block by an intrinsic whose description is that same block
  (TVM checks the structural match): ``dp4a`` computes ``c + sum of 4 byte products`` exactly
  in int32 (signed x signed, or unsigned x signed for ``dp4a.u32.s32``); ``wmma.mma.sync
  .s32.s8.s8.s32`` (no ``.satfinite``) accumulates 16x16x16 byte products exactly in int32;
  fill/load/store fragments are zero-fill and copies;
* the non-matmul kernels keep their int64 arithmetic (CUDA ``int64_t``; ``>>`` on signed
  values is arithmetic, floor division/modulo are lowered by TVM to explicit integer code), and
  dlight's cross-thread reductions regroup int64 sums/maxima whose partial results are bounded
  by the ops' proven worst-case bounds.

So the argument rests on TVM's schedule primitives being semantics-preserving and on NVCC/PTX
integer instructions meaning what the PTX ISA says. A GPU run against the golden executor
(``CompiledModel(out, device="cuda")`` on a T4) is the missing measurement.
"""

from __future__ import annotations

from tvm import tirx
from tvm.s_tir.dlight import ScheduleRule

from . import register_rules
from .intrinsics import WMMA, dp4a_intrin, wmma_intrins

DP4A_RM = DP4A_RN = 4  # outputs per thread: 4 rows x 4 columns of int32 accumulators
DP4A_KC = 32  # K elements staged in shared memory per step (8 dp4a per output)
MATMUL_KIND_ATTR = "ibert.cuda_matmul"  # which schedule a matmul PrimFunc got ("dp4a"/"wmma")


def _ceil(a: int, b: int) -> int:
    return -(-a // b) * b


def _static(e) -> int | None:
    from tvm import tirx

    return int(e.value) if isinstance(e, tirx.IntImm) else None


# -- analysis ---------------------------------------------------------------------------------
def find_int8_matmul(sch):
    """The one int8 matmul reduction block of a PrimFunc (or None) with its dtypes."""
    from tvm.s_tir.dlight.analysis.common_analysis import get_root_block
    from tvm.s_tir.dlight.gpu.matmul import get_index_map, get_reduction_blocks

    blocks = sch.get_child_blocks(get_root_block(sch))
    red = get_reduction_blocks(sch, blocks)
    if not red:
        return None
    block = red[0]
    stmt = sch.get(block)
    if len(stmt.reads) != 2 or len(stmt.writes) != 1:
        return None
    a_dt, b_dt = (str(r.source.dtype) for r in stmt.reads)
    c_dt = str(stmt.writes[0].source.dtype)
    if a_dt not in ("int8", "uint8") or b_dt not in ("int8", "uint8") or c_dt != "int32":
        return None
    if get_index_map(stmt) is None:
        return None
    return block, a_dt, b_dt


def _normalize(sch, block):
    """Reindex to ``C[S, I, J] += A[S, I, K] * B[S, J, K]``; returns nothing (block is kept)."""
    from tvm.s_tir.dlight.gpu.matmul import get_index_map

    ra = sch.reindex(block, ("read", 0))
    rb = sch.reindex(block, ("read", 1))
    rc = sch.reindex(block, ("write", 0))
    mm_map, a_map, b_map, c_map = get_index_map(sch.get(block))
    sch.transform_layout(ra, ("write", 0), a_map)
    sch.transform_layout(rb, ("write", 0), b_map)
    sch.transform_layout(rc, ("read", 0), c_map)
    sch.transform_block_layout(block, mm_map)


def _pad(sch, block, tiles):
    """``pad_einsum`` to ``tiles`` (S, I, J, K), skipping it when every extent already divides."""
    stmt = sch.get(block)
    need = False
    for iv, t in zip(stmt.iter_vars, tiles):
        e = _static(iv.dom.extent)
        if t > 1 and (e is None or e % t):
            need = True
    if need:
        sch.pad_einsum(block, list(tiles))


# -- dp4a -------------------------------------------------------------------------------------
def _threads(extent, rmax: int = 16, per_thread: int = 4) -> int:
    """Threads along an output axis: enough for a static ``extent`` (at most ``rmax``)."""
    e = _static(extent)
    t = rmax
    while e is not None and t > 1 and (t // 2) * per_thread >= e:
        t //= 2
    return t


def dp4a_tile(sch, block) -> dict:
    """Tile sizes for a normalised ``[S, I, J, K]`` matmul block."""
    _, i, j, k = (iv.dom.extent for iv in sch.get(block).iter_vars)
    ke = _static(k)
    kc = DP4A_KC if ke is None else min(DP4A_KC, _ceil(ke, 4))
    return dict(ty=_threads(i), tx=_threads(j), rm=DP4A_RM, rn=DP4A_RN, kc=kc)


def schedule_dp4a(sch, block, a_dt: str, b_dt: str):
    """SIMT matmul: a ``(ty*4) x (tx*4)`` output tile per thread block, 4x4 per thread, K staged
    through shared memory ``kc`` at a time, the 4-wide inner K step tensorized to dp4a."""
    from tvm.s_tir.dlight.gpu.matmul import auto_inline_consumer_chain, auto_inline_producers

    _normalize(sch, block)
    tile = dp4a_tile(sch, block)
    ty, tx, rm, rn, kc = (tile[k] for k in ("ty", "tx", "rm", "rn", "kc"))
    # 4-byte vector loads from global memory only when every row starts 4-byte aligned (the
    # row stride of both operands is K); a dynamic K (P V) is loaded byte by byte
    ke = _static(sch.get(block).iter_vars[3].dom.extent)
    vector_ok = ke is not None and ke % 4 == 0
    _pad(sch, block, (1, ty * rm, tx * rn, kc))
    batch, i, j, k = sch.get_loops(block)
    bi, ti, ri = sch.split(i, [None, ty, rm])
    bj, tj, rj = sch.split(j, [None, tx, rn])
    ko, ki, k4 = sch.split(k, [None, kc // 4, 4])
    sch.reorder(batch, bi, bj, ti, tj, ko, ki, ri, rj, k4)
    sch.bind(batch, "blockIdx.z")
    sch.bind(bi, "blockIdx.y")
    sch.bind(bj, "blockIdx.x")
    sch.bind(ti, "threadIdx.y")
    sch.bind(tj, "threadIdx.x")

    acc = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(acc, tj, preserve_unit_loops=True)

    def fetch(idx):
        shared = sch.cache_read(block, idx, "shared")
        sch.compute_at(shared, ko, preserve_unit_loops=True)
        loops = sch.get_loops(shared)[-2:]  # rows x kc
        _, lty, ltx, vec = sch.split(sch.fuse(*loops), [None, ty, tx, 4])
        sch.bind(lty, "threadIdx.y")
        sch.bind(ltx, "threadIdx.x")
        if vector_ok:
            sch.vectorize(vec)
        return shared

    a_s, b_s = fetch(0), fetch(1)
    auto_inline_producers(sch, a_s)
    auto_inline_producers(sch, b_s)
    auto_inline_consumer_chain(sch, acc)
    init = sch.decompose_reduction(block, ko)
    sch.tensorize(k4, dp4a_intrin(a_dt, b_dt))
    # fully unrolled register tile: the rm x rn accumulators stay in registers, not local memory
    for loop in (ri, rj, *sch.get_loops(init)[-2:], *sch.get_loops(acc)[-2:]):
        sch.unroll(loop)
    return sch


# -- wmma (tensor cores) ---------------------------------------------------------------------
WMMA_WARPS = (2, 2)  # warps per thread block along I, J
WMMA_FRAGS = (2, 2)  # 16x16 fragments per warp along I, J
WMMA_KFRAGS = 2  # 16-wide K steps staged in shared memory at a time
WARP = 32


def wmma_tile(sch, block) -> dict:
    """Warps and fragments per warp for a normalised ``[S, I, J, K]`` block: the static
    extents shrink the tile (a 32-wide N needs one warp column of two fragments)."""
    _, i, j, k = (iv.dom.extent for iv in sch.get(block).iter_vars)

    def fit(extent, warps, frags):
        e = _static(extent)
        while e is not None and warps * frags * WMMA > _ceil(e, WMMA) and (warps > 1 or frags > 1):
            if warps > 1:
                warps //= 2
            else:
                frags //= 2
        return warps, frags

    wy, fm = fit(i, *(WMMA_WARPS[0], WMMA_FRAGS[0]))
    wx, fn = fit(j, *(WMMA_WARPS[1], WMMA_FRAGS[1]))
    ke = _static(k)
    kf = WMMA_KFRAGS if ke is None else max(1, min(WMMA_KFRAGS, _ceil(ke, WMMA) // WMMA))
    return dict(wy=wy, wx=wx, fm=fm, fn=fn, kf=kf)


def schedule_wmma(sch, block):
    """Tensor-core matmul (int8 x int8 -> int32): each warp owns ``fm x fn`` accumulator
    fragments, K is staged through shared memory ``16 * kf`` at a time, the accumulators go
    through shared memory to the epilogue, which writes the kernel's output."""
    from tvm.s_tir.dlight.gpu.matmul import auto_inline_consumer_chain, auto_inline_producers

    names = wmma_intrins()
    _normalize(sch, block)
    t = wmma_tile(sch, block)
    wy, wx, fm, fn, kf = (t[k] for k in ("wy", "wx", "fm", "fn", "kf"))
    ke = _static(sch.get(block).iter_vars[3].dom.extent)
    vector_ok = ke is not None and ke % 4 == 0
    _pad(sch, block, (1, WMMA * wy * fm, WMMA * wx * fn, WMMA * kf))

    batch, i, j, k = sch.get_loops(block)
    i, ii = sch.split(i, [None, WMMA])
    j, jj = sch.split(j, [None, WMMA])
    k, kk = sch.split(k, [None, WMMA])
    sch.reorder(i, j, k, ii, jj, kk)
    inner = block
    outer = sch.blockize(ii)
    bi, wi, fi = sch.split(i, [None, wy, fm])
    bj, wj, fj = sch.split(j, [None, wx, fn])
    ko, ki = sch.split(k, [None, kf])
    sch.reorder(bi, bj, wi, wj, ko, ki, fi, fj)
    sch.bind(batch, "blockIdx.z")
    sch.bind(bi, "blockIdx.y")
    sch.bind(bj, "blockIdx.x")
    warp = sch.fuse(wi, wj)
    sch.bind(warp, "threadIdx.y")
    n_warps = wy * wx

    def fetch(idx):
        shared = sch.cache_read(outer, idx, "shared")
        # [.., rows, k] -> [.., k / 16, rows, k % 16]: every 16x16 fragment is 256 contiguous bytes,
        # so each wmma.load starts 256-bit aligned with a 16-byte row stride, for any kf
        sch.transform_layout(shared, ("write", 0), lambda s, r, k: (s, k // WMMA, r, k % WMMA))
        sch.compute_at(shared, ko, preserve_unit_loops=True)
        loops = sch.get_loops(shared)[-2:]
        _, ly, lx, vec = sch.split(sch.fuse(*loops), [None, n_warps, WARP, 4])
        sch.bind(ly, "threadIdx.y")
        sch.bind(lx, "threadIdx.x")
        if vector_ok:
            sch.vectorize(vec)
        return shared

    a_s, b_s = fetch(0), fetch(1)
    auto_inline_producers(sch, a_s)
    auto_inline_producers(sch, b_s)

    a_f = sch.cache_read(outer, 0, "wmma.matrix_a")
    b_f = sch.cache_read(outer, 1, "wmma.matrix_b")
    sch.compute_at(a_f, ki)
    sch.compute_at(b_f, ki)
    c_s = sch.cache_write(outer, 0, "shared")
    c_f = sch.cache_write(outer, 0, "wmma.accumulator")
    sch.reverse_compute_at(c_f, warp)
    sch.reverse_compute_at(c_s, warp)

    def tile16(blk):
        r, c = sch.get_loops(blk)[-2:]
        r0, r1 = sch.split(r, [None, WMMA])
        c0, c1 = sch.split(c, [None, WMMA])
        sch.reorder(r0, c0, r1, c1)
        return r1

    init = sch.decompose_reduction(outer, ko)
    sch.tensorize(tile16(a_f), names["load_a"])
    sch.tensorize(tile16(b_f), names["load_b"])
    sch.tensorize(sch.get_loops(sch.get_child_blocks(init)[0])[-2], names["fill"])
    sch.tensorize(tile16(c_f), names["store"])
    sch.tensorize(sch.get_loops(inner)[-3], names["mma"])

    auto_inline_consumer_chain(sch, c_s)
    r, c = sch.get_loops(c_s)[-2:]
    _, lx = sch.split(sch.fuse(r, c), [None, WARP])
    sch.bind(lx, "threadIdx.x")
    return sch


# -- the rule ---------------------------------------------------------------------------------
def _schedule_matmul(func, prefer: str, name: str):
    """``(schedule, kind)`` for ``func``'s int8 matmul (the schedule's function carries
    :data:`MATMUL_KIND_ATTR`), or None when it has none; ``IBertTVMError`` when no kind applies.

    int8 x int8 (the linears, ``Q K^T``) goes to tensor cores; uint8 x int8 (``P V``: CUDA's WMMA
    fragments pair only equal signedness) and anything the WMMA schedule cannot take go to dp4a.
    """
    from tvm import s_tir

    from ..errors import IBertTVMError

    found = find_int8_matmul(s_tir.Schedule(func))
    if found is None:
        return None
    _, a_dt, b_dt = found
    kinds = ["wmma", "dp4a"] if prefer == "wmma" and (a_dt, b_dt) == ("int8", "int8") else ["dp4a"]
    errors = []
    for kind in kinds:
        sch = s_tir.Schedule(func.with_attr(MATMUL_KIND_ATTR, kind))
        block, _, _ = find_int8_matmul(sch)
        try:
            if kind == "wmma":
                schedule_wmma(sch, block)
            else:
                schedule_dp4a(sch, block, a_dt, b_dt)
        except Exception as e:  # noqa: BLE001 - a ScheduleError / TVMError: try the next schedule
            errors.append(f"{kind}: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}")
            continue
        return sch, kind
    raise IBertTVMError(f"cannot schedule the int8 matmul of {name} for CUDA ({a_dt} x {b_dt}): " + "; ".join(errors))


def schedule_matmul_func(func, *, prefer: str = "wmma", name: str = "a PrimFunc"):
    """Schedule ``func``'s int8 matmul outside a module: ``(new_func, kind)`` with kind
    ``"wmma"`` or ``"dp4a"`` (``new_func`` marked ``tirx.is_scheduled``), or ``(func, None)`` if
    it has none (see :func:`_schedule_matmul`)."""
    done = _schedule_matmul(func, prefer, name)
    if done is None:
        return func, None
    sch, kind = done
    return sch.mod["main"].with_attr("tirx.is_scheduled", True), kind


class T4Int8MatmulRule(ScheduleRule):
    """Target ``cuda-t4``: the one int8/uint8 x int8 -> int32 matmul reduction block of a fused
    PrimFunc on tensor cores (WMMA) or dp4a (see the module doc). None when the PrimFunc has no
    such block; ``IBertTVMError`` when it has one that neither schedule takes."""

    def __init__(self, prefer: str = "wmma") -> None:
        self.prefer = prefer
        wmma_intrins()
        for a_dt in ("int8", "uint8"):
            dp4a_intrin(a_dt, "int8")

    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc):
            return None
        name = str(func.attrs["global_symbol"]) if func.attrs is not None and "global_symbol" in func.attrs else "a PrimFunc"
        done = _schedule_matmul(func, self.prefer, name)
        return None if done is None else done[0]


def t4_rules(_target) -> list:
    """Target ``cuda-t4``'s rule set: the int8 matmuls, then dlight's GPU rules for every other
    PrimFunc (embeddings, LayerNorm, softmax, pooling, transposes). dlight's own Matmul rule is
    left out: its tensor-core path crashes TVM 0.27's software pipelining on sm_75."""
    from tvm.s_tir import dlight as dl

    return [T4Int8MatmulRule(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]


register_rules("cuda-t4", t4_rules)
