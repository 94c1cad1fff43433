"""x86 AMX (Sapphire Rapids and newer, target ``x86-amx``): the VNNI linear's GEMM tile on ``tdpbusd``.

``tdpbusd tC, tA, tB`` adds to a 16 x 16 int32 tile the products of a 16 x 64 uint8 tile ``A``
(16 rows of 64 ``k``) and a 16 x 64 int8 tile ``B`` holding 16 groups of 4 ``k`` x 16 output
channels: exactly one ``[K/4, 16, 4]`` slab of :func:`.x86_vnni.pack_weight`'s layout
(``Wp[nb, kb:kb+16, 16, 4]``, 1 KiB, contiguous). It is the same u8 x s8 product as
``vpdpbusd`` (the ``+128`` shift and the compensated bias are :mod:`.x86_vnni`'s), 1,024 MACs a
cycle where ``vpdpbusd`` gives 128, so the integers are the same and only the GEMM tile changes:

* :func:`register_amx_intrin` (``K`` a multiple of 64): ``C[32, 64] += A[32, K] . Wp[4, K/4, 16, 4]``
  (or 32 channels, for a linear with ``N % 64 == 32``), the whole 32-row x 64-channel task tile of ``x86_vnni._schedule_tile_epilogue`` over the whole
  reduction. The implementation keeps the accumulators in tiles: per 32-channel half, four C
  tiles (2 x 2 of 16 x 16), and per step of 64 ``k`` two A tiles, two B tiles and four
  ``tdpbusd``; eight tile registers in all (palette 1, every tile 16 rows x 64 bytes).
* Software prefetch: each k step also prefetches into L2 (``prefetcht1``, 32 cache lines) the
  two 1 KiB weight slabs that the step :data:`PREFETCH_STEPS` later loads. At ``1 x 32`` a linear
  streams its whole weight (BERT-Base: 85 MB a forward, L3-resident) for 32 rows, and the
  hardware prefetcher restarts at every 4 KiB page. ``bench/amx_prefetch.py`` (each kernel with
  40 weight copies in rotation, so that they come from L3 as in the model; 2 threads; time
  against no prefetch, bench/results/2026-12-04-evening/): at ``1 x 32`` BERT-Base FFN-in + GELU
  0.937x, its plain form 0.957x, FFN-out + residual 0.942x, MiniLM FFN-in 0.982x, FFN-out 1.015x
  (2, 4 and 8 steps ahead measured alike in a first run); at ``8 x 128``, where a panel is reused
  by 32 row tiles and the prefetches hit, 0.99-1.05x. The whole models (with this session's other
  changes) took 0.89-0.96x the time at every shape. ``next-panel`` (the next task's panel
  instead) measured 0.92-1.03x in the same run, but once 1.33x the time on MiniLM's FFN-out
  (six tasks: the next panel is the other thread's); ``none`` builds without prefetch. Past the
  last slab the addresses run into the next panel or past the weight: a prefetch never faults
  and reads nothing the results depend on.
* The process must hold the kernel's AMX permission (``support.amx.require_amx``, which the
  model loader calls for an ``x86-amx`` build), or the first tile instruction faults.
* Target ``x86-amx`` is target ``x86`` (the same weight packing, the same attention, softmax and
  LayerNorm rules) with :class:`AmxLinearRule` first: a VNNI linear whose epilogue fits the tile
  (``x86_vnni._schedule_tile_epilogue``), ``K % 64 == 0`` and 32- or 64-channel tiles gets the
  AMX tile GEMM; any other keeps the VNNI schedule.

int32 bounds: as ``vpdpbusd``'s (each partial sum is a partial sum of the exact product,
``K * 255 * 128``), proven by ``x86_vnni.check_vnni_accumulator``; ``tdpbusd`` wraps like it.
"""

from __future__ import annotations

AMX_INTRIN = "ibert_tvm.amx_32x"  # + "<cols>_k<K>": one registration per tile width and reduction length
ROWS, COLS, KSTEP = 32, 64, 64  # the task tile (rows x channels) and the k per tdpbusd
PREFETCH_STEPS = 4  # each k step prefetches (into L2) the two weight slabs it will load 4 steps later
PREFETCH_MODES = ("ahead", "none", "next-panel")  # the tile's software prefetch (module doc); "ahead" is built
PREFETCH = "ahead"  # what schedule_amx_tile registers (bench/amx_prefetch.py sets the others)
_REGISTERED: set = set()


def _amx(k: int, cols: int, *, impl: bool, prefetch: str = "ahead"):
    from tvm.script import tirx as T

    kb = k // 4
    steps = k // KSTEP
    halves = cols // 32
    nb = cols // 16

    def call(name, *args):
        return T.call_llvm_intrin("void", name, *args)

    if not impl:
        @T.prim_func(s_tir=True)
        def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (ROWS, k), "uint8", offset_factor=1)
            B = T.match_buffer(b, (nb, kb, 16, 4), "int8", offset_factor=1)
            C = T.match_buffer(c, (ROWS, cols), "int32", offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:ROWS, 0:cols], A[0:ROWS, 0:k], B[0:nb, 0:kb, 0:16, 0:4])
                T.writes(C[0:ROWS, 0:cols])
                for i, j, r in T.grid(ROWS, cols, k):
                    with T.sblock("update"):
                        vi, vj, vr = T.axis.remap("SSR", [i, j, r])
                        C[vi, vj] = C[vi, vj] + T.Cast("int32", A[vi, vr]) * T.Cast(
                            "int32", B[vj // 16, vr // 4, vj % 16, vr % 4])
        return desc

    if prefetch not in PREFETCH_MODES:
        raise ValueError(f"prefetch must be one of {PREFETCH_MODES}, got {prefetch!r}")
    ahead, next_panel = prefetch == "ahead", prefetch == "next-panel"

    def to_l2(address):  # prefetcht1: read, locality 2 (L2), data cache
        return call("llvm.prefetch", address, T.int32(0), T.int32(2), T.int32(1))

    @T.prim_func(s_tir=True)
    def impl_(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa = T.int64()
        sb0 = T.int64()
        sc = T.int64()
        A = T.match_buffer(a, (ROWS, k), "uint8", offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (nb, kb, 16, 4), "int8", offset_factor=1, strides=[sb0, 64, 4, 1])
        C = T.match_buffer(c, (ROWS, cols), "int32", offset_factor=1, strides=[sc, 1])
        with T.sblock("root"):
            T.reads(C[0:ROWS, 0:cols], A[0:ROWS, 0:k], B[0:nb, 0:kb, 0:16, 0:4])
            T.writes(C[0:ROWS, 0:cols])
            cfg = T.decl_buffer((64,), "uint8", scope="local")
            for i in range(64):
                cfg[i] = T.uint8(0)
            cfg[0] = T.uint8(1)  # palette 1
            for t in range(8):  # every tile: 16 rows x 64 bytes
                cfg[16 + 2 * t] = T.uint8(64)
                cfg[48 + t] = T.uint8(16)
            T.evaluate(call("llvm.x86.ldtilecfg", T.address_of(cfg[0])))
            for h in range(halves):  # 32-channel halves: C tiles 0..3 = (rows 0/16) x (channels +0/+16)
                T.evaluate(call("llvm.x86.tileloadd64", T.int8(0), T.address_of(C[0, h * 32]), sc * 4))
                T.evaluate(call("llvm.x86.tileloadd64", T.int8(1), T.address_of(C[0, h * 32 + 16]), sc * 4))
                T.evaluate(call("llvm.x86.tileloadd64", T.int8(2), T.address_of(C[16, h * 32]), sc * 4))
                T.evaluate(call("llvm.x86.tileloadd64", T.int8(3), T.address_of(C[16, h * 32 + 16]), sc * 4))
                for s in range(steps):
                    if ahead:  # the weight rows PREFETCH_STEPS steps ahead, into L2
                        for line in range(16):
                            T.evaluate(to_l2(T.address_of(B[h * 2, (s + PREFETCH_STEPS) * 16 + line, 0, 0])))
                            T.evaluate(to_l2(T.address_of(B[h * 2 + 1, (s + PREFETCH_STEPS) * 16 + line, 0, 0])))
                    if next_panel:  # the same rows of the next channel tile's panel (bench/amx_prefetch.py only)
                        for line in range(16):
                            T.evaluate(to_l2(T.address_of(B[nb + h * 2, s * 16 + line, 0, 0])))
                            T.evaluate(to_l2(T.address_of(B[nb + h * 2 + 1, s * 16 + line, 0, 0])))
                    T.evaluate(call("llvm.x86.tileloadd64", T.int8(4), T.address_of(A[0, s * KSTEP]), sa))
                    T.evaluate(call("llvm.x86.tileloadd64", T.int8(5), T.address_of(A[16, s * KSTEP]), sa))
                    T.evaluate(call("llvm.x86.tileloadd64", T.int8(6), T.address_of(B[h * 2, s * 16, 0, 0]), T.int64(64)))
                    T.evaluate(call("llvm.x86.tileloadd64", T.int8(7), T.address_of(B[h * 2 + 1, s * 16, 0, 0]), T.int64(64)))
                    T.evaluate(call("llvm.x86.tdpbusd", T.int8(0), T.int8(4), T.int8(6)))
                    T.evaluate(call("llvm.x86.tdpbusd", T.int8(1), T.int8(4), T.int8(7)))
                    T.evaluate(call("llvm.x86.tdpbusd", T.int8(2), T.int8(5), T.int8(6)))
                    T.evaluate(call("llvm.x86.tdpbusd", T.int8(3), T.int8(5), T.int8(7)))
                T.evaluate(call("llvm.x86.tilestored64", T.int8(0), T.address_of(C[0, h * 32]), sc * 4))
                T.evaluate(call("llvm.x86.tilestored64", T.int8(1), T.address_of(C[0, h * 32 + 16]), sc * 4))
                T.evaluate(call("llvm.x86.tilestored64", T.int8(2), T.address_of(C[16, h * 32]), sc * 4))
                T.evaluate(call("llvm.x86.tilestored64", T.int8(3), T.address_of(C[16, h * 32 + 16]), sc * 4))
            T.evaluate(call("llvm.x86.tilerelease"))
    return impl_


def register_amx_intrin(k: int, cols: int = COLS, prefetch: str = "ahead") -> str:
    """Register the 32 x ``cols`` x ``k`` AMX tile GEMM (``k`` a multiple of 64, ``cols`` 32 or
    64; ``prefetch`` one of :data:`PREFETCH_MODES`); returns its name."""
    from tvm.s_tir import TensorIntrin

    k, cols = int(k), int(cols)
    if k % KSTEP or cols not in (32, 64):
        raise ValueError(f"AMX tile GEMM needs K % {KSTEP} == 0 and 32 or 64 channels, got K={k}, {cols}")
    name = f"{AMX_INTRIN}{cols}_k{k}" + ("" if prefetch == "ahead" else f"_{prefetch}")
    if name not in _REGISTERED:
        TensorIntrin.register(name, _amx(k, cols, impl=False), _amx(k, cols, impl=True, prefetch=prefetch),
                              override=True)
        _REGISTERED.add(name)
    return name


def schedule_amx_tile(sch, block) -> None:
    """Step 4 of ``x86_vnni._schedule_tile_epilogue`` on AMX: the whole 32 x 64 x K tile at once."""
    t_mi, t_n, t_k = sch.get_loops(block)[1:]
    name = register_amx_intrin(int(sch.get(t_k).extent), int(sch.get(t_n).extent), PREFETCH)
    init = sch.decompose_reduction(block, t_mi)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(t_mi, name)


class AmxLinearRule:
    """Target ``x86-amx``: a VNNI linear (``vnni_matmul``) with its GEMM tile on AMX where the tile
    epilogue schedule applies and ``K % 64 == 0``; None otherwise (the VNNI rule runs next)."""

    def apply(self, func, target, tunable):
        from . import find_block
        from .x86_vnni import A_BLOCK, MM_BLOCK, _schedule_tile_epilogue

        found = find_block(func, MM_BLOCK)
        if found is None:
            return None
        sch, _ = found
        names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
        if names[:2] != [A_BLOCK, MM_BLOCK]:
            return None
        try:
            return _schedule_tile_epilogue(func, names, tile_gemm=schedule_amx_tile)
        except Exception:  # noqa: BLE001 - not this shape (K % 64, channel tiles): the VNNI rule
            return None


def amx_rules(target) -> list:
    """Target ``x86-amx``'s rule set: the AMX linear, then x86's (:func:`.x86_vnni.x86_rules`)."""
    from .x86_vnni import x86_rules

    return [AmxLinearRule(), *x86_rules(target)]


def _register() -> None:
    from . import register_linear, register_rules
    from .x86_vnni import VnniLinear

    register_linear("x86-amx", VnniLinear())
    register_rules("x86-amx", amx_rules)


_register()
