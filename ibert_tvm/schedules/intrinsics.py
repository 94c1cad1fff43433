"""The tensor intrinsics the schedules tensorize with, each registered once under our own name.

Targets: ``x86`` (VNNI), ``aarch64`` (sdot), ``cuda-t4`` (dp4a, WMMA). Every schedule rule and the
tuner's design space (:mod:`.tune.space`) name them through this module only.

Why our own registrations rather than ``tvm.s_tir.tensor_intrin``'s: importing that package
parses every target's ~250 TVMScript intrinsics (30-60 s of CPU on these machines, on every
compile and in every MetaSchedule builder process), and two stock ones are wrong here:

* ``dot_16x4_vnni`` passes ``<16 x i32>`` operands to ``llvm.x86.avx512.vpdpbusd.512``, which
  LLVM 22 declares with ``<64 x i8>`` ones (verification fails): :func:`register_vnni_intrin`
  reinterprets them as ``uint8x64`` / ``int8x64``. Overriding the stock *name* would make any
  later ``import tvm.s_tir.tensor_intrin`` fail (it registers without ``override``), hence our
  own names;
* the WMMA fill intrinsic passes a float32 zero even to int32 fragments (a float literal in an
  integer kernel): :func:`wmma_intrins` fills with an int32 zero.

Each ``register_*`` is idempotent and returns the registered name(s). Contents:

* x86 ``vpdpbusd`` (16 int32 lanes x 4 u8*s8 products): :data:`VNNI_INTRIN` (u8 x s8, with the
  accumulator in any scope: ``"local"`` for register tiles) and :data:`S8S8_INTRIN` (s8 x s8
  through ``a ^ 0x80`` and a compensation; ``x86_attention``'s ``Q K^T``), both described by
  :func:`dot_16x4`;
* aarch64 ``sdot`` (4 int32 lanes x 4 s8*s8 products): :data:`SDOT_INTRIN`;
* CUDA: :func:`dp4a_intrin` (``__dp4a``, s8/u8 x s8) and :func:`wmma_intrins` (the five
  m16n16k16 s8 x s8 -> s32 tensor-core intrinsics).
"""

from __future__ import annotations

# -- x86 AVX-512 VNNI ---------------------------------------------------------------------------
VNNI_INTRIN = "ibert_tvm.dot_16x4_vnni"  # u8 x s8 -> s32, 16 lanes x 4, LLVM 22 operand types
S8S8_INTRIN = "ibert_tvm.dot_16x4_s8s8_vnni"  # s8 x s8 -> s32 via (a + 128) and a compensation
LANES, KGROUP = 16, 4  # vpdpbusd: 16 int32 lanes x 4 u8*s8 products each (512-bit zmm / 32 bits)
_BIAS_128 = -2139062144  # 0x80808080 as int32: four bytes of 128 (0x80808080 - 2^32)

_REGISTERED: set = set()  # names registered by this process


def _vpdpbusd(acc, a_u8x64, b_i8x64):
    """``llvm.x86.avx512.vpdpbusd.512(acc, a, b)``: int32x16 accumulators, 64 bytes each side."""
    from tvm.script import tirx as T

    return T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), acc, a_u8x64, b_i8x64, dtype="int32x16"
    )


def dot_16x4(a_dtype: str, scope: str = "global", *, impl: bool = False):
    """The 16 x 4 dot product ``C[16] += A[4] . B[16, 4]`` (``A`` of ``a_dtype``: uint8 for VNNI,
    int8 for ``x86_attention``'s s8 x s8 variant; the int32 accumulator ``C`` in ``scope``): its
    description, or (``impl``) its ``vpdpbusd`` implementation: with uint8 ``A`` one
    instruction; with int8 ``A`` (``a ^ 0x80`` = ``a + 128`` as uint8) minus the compensation
    ``vpdpbusd(0, 0x80, B)``. (``impl`` and ``signed`` are Python bools: TVMScript keeps one
    branch of an ``if`` on them.)"""
    from tvm.script import tirx as T

    signed = a_dtype == "int8"

    @T.prim_func(s_tir=True)
    def func(
        A: T.Buffer((4,), a_dtype, offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1, scope=scope),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            if not impl:
                for i in T.serial(0, 16):
                    for k in T.serial(0, 4):
                        with T.sblock("update"):
                            vi, vk = T.axis.remap("SR", [i, k])
                            C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")
            elif signed:
                # the 4 bytes of A broadcast to 16 lanes, each byte ^ 0x80 (= a + 128 as uint8)
                a_u8x64 = T.reinterpret(
                    T.bitwise_xor(
                        T.broadcast(T.reinterpret(A.vload([0], "int8x4"), dtype="int32"), 16),
                        T.broadcast(T.int32(_BIAS_128), 16),
                    ),
                    dtype="uint8x64",
                )
                c128_u8x64 = T.reinterpret(T.broadcast(T.int32(_BIAS_128), 16), dtype="uint8x64")
                C[T.ramp(T.int32(0), 1, 16)] = _vpdpbusd(
                    C.vload([0], dtype="int32x16"), a_u8x64, B.vload([0, 0], dtype="int8x64")
                ) - _vpdpbusd(T.broadcast(T.int32(0), 16), c128_u8x64, B.vload([0, 0], dtype="int8x64"))
            else:
                # the 4 activation bytes, broadcast to all 16 lanes, seen as <64 x i8>
                a_u8x64 = T.reinterpret(
                    T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 16), dtype="uint8x64"
                )
                C[T.ramp(T.int32(0), 1, 16)] = _vpdpbusd(
                    C.vload([0], dtype="int32x16"), a_u8x64, B.vload([0, 0], dtype="int8x64")
                )

    return func


def _register_dot_16x4(name: str, a_dtype: str, scope: str) -> str:
    if name not in _REGISTERED:
        from tvm.s_tir import TensorIntrin

        TensorIntrin.register(name, dot_16x4(a_dtype, scope), dot_16x4(a_dtype, scope, impl=True), override=True)
        _REGISTERED.add(name)
    return name


def register_vnni_intrin(scope: str = "global") -> str:
    """Register :data:`VNNI_INTRIN` (u8 x s8, LLVM 22's ``vpdpbusd.512`` operand types); with the
    accumulator in another ``scope`` (``"local"``: register tiles), ``VNNI_INTRIN + "_" + scope``.
    Idempotent; returns the name."""
    return _register_dot_16x4(VNNI_INTRIN if scope == "global" else f"{VNNI_INTRIN}_{scope}", "uint8", scope)


def register_s8s8_intrin(scope: str = "global") -> str:
    """Register :data:`S8S8_INTRIN` (description: int8 ``A[4]`` x int8 ``B[16, 4]``, the
    accumulator ``C`` in ``scope``; ``"local"``: ``S8S8_INTRIN + "_local"``). Idempotent."""
    return _register_dot_16x4(S8S8_INTRIN + ("" if scope == "global" else "_" + scope), "int8", scope)


# -- aarch64 NEON dot product ---------------------------------------------------------------------
SDOT_INTRIN = "ibert_sdot_4x4_i8i8i32"  # C[4] += A[4] . B[4, 4] (s8 x s8 -> s32): one ``sdot``
SDOT_TILE = 4  # sdot: 4 int32 lanes (128-bit register / 32 bits) x 4 int8 products each


def sdot_4x4(*, impl: bool = False):
    """``acc[n] += sum_k x[k] * w[n, k]`` for ``n, k < 4``: one row of 4 activations against 4
    output channels x 4 consecutive ``k``; its description or (``impl``) the single ``sdot``."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def func(a: T.handle, b: T.handle, c: T.handle) -> None:
        # x [4] int8 (one row, 4 consecutive k); w [4 n, 4 k] int8; acc [4 n] int32
        x = T.match_buffer(a, (4,), "int8", offset_factor=1)
        w = T.match_buffer(b, (4, 4), "int8", offset_factor=1)
        acc = T.match_buffer(c, (4,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(acc[0:4], x[0:4], w[0:4, 0:4])
            T.writes(acc[0:4])
            if impl:  # (a Python bool: TVMScript keeps one branch)
                # the 4 activations as one int32, repeated in all 4 lanes: lane n meets w[n, 0:4]
                x_word = T.reinterpret(x.vload([0], "int8x4"), dtype="int32")
                x_lanes = T.reinterpret(T.broadcast(x_word, 4), dtype="int8x16")
                acc[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
                    acc.vload([0], "int32x4"),
                    x_lanes,
                    w.vload([0, 0], "int8x16"),
                    dtype="int32x4",
                )
            else:
                for n, k in T.grid(4, 4):
                    with T.sblock("update"):
                        vn, vk = T.axis.remap("SR", [n, k])
                        acc[vn] = acc[vn] + T.cast(x[vk], "int32") * T.cast(w[vn, vk], "int32")

    return func


def register_sdot_intrin() -> str:
    """Register :data:`SDOT_INTRIN` (idempotent); returns its name."""
    if SDOT_INTRIN not in _REGISTERED:
        from tvm.s_tir import TensorIntrin

        TensorIntrin.register(SDOT_INTRIN, sdot_4x4(), sdot_4x4(impl=True), override=True)
        _REGISTERED.add(SDOT_INTRIN)
    return SDOT_INTRIN


# -- CUDA (sm_75): dp4a and WMMA ------------------------------------------------------------------
_DP4A_REGISTERED: dict[tuple[str, str], str] = {}


def dp4a_intrin(a_dt: str, b_dt: str) -> str:
    """Register (once) and name the 4-wide int8 dot-product intrinsic for ``a_dt x b_dt -> int32``.

    Own registration rather than ``tvm.s_tir.tensor_intrin``'s: importing that package parses
    ~250 TVMScript functions (30-60 s here). The CUDA code generator maps ``__dp4a`` on
    ``int8x4``/``uint8x4`` operands to PTX ``dp4a.s32.s32`` / ``dp4a.u32.s32`` (it defines the
    mixed-sign overloads itself).
    """
    key = (a_dt, b_dt)
    if key in _DP4A_REGISTERED:
        return _DP4A_REGISTERED[key]
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    name = f"ibert_dp4a_{a_dt}_{b_dt}_int32"
    va, vb = f"{a_dt}x4", f"{b_dt}x4"

    def dp4a(impl: bool):  # the description, or (impl) the __dp4a call
        @T.prim_func(s_tir=True)
        def func(
            A: T.Buffer((4,), a_dt, offset_factor=1, align=4, scope="shared"),
            B: T.Buffer((4,), b_dt, offset_factor=1, align=4, scope="shared"),
            C: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local"),
        ) -> None:
            with T.sblock("root"):
                T.reads(C[0], A[0:4], B[0:4])
                T.writes(C[0])
                if impl:  # (a Python bool: TVMScript keeps one branch)
                    C[0] = C[0] + T.call_pure_extern("__dp4a", A.vload([0], va), B.vload([0], vb), T.int32(0),
                                                     dtype="int32")
                else:
                    for k in range(4):
                        with T.sblock("update"):
                            vk = T.axis.remap("R", [k])
                            C[0] = C[0] + T.cast(A[vk], "int32") * T.cast(B[vk], "int32")

        return func

    TensorIntrin.register(name, dp4a(False), dp4a(True), override=True)
    _DP4A_REGISTERED[key] = name
    return name


WMMA = 16  # the m16n16k16 int8 fragment shape (sm_72+)
_WMMA_NAMES = {
    "fill": "ibert_wmma_fill_16x16x16_s32",
    "load_a": "ibert_wmma_load_a_16x16x16_s8_shared",
    "load_b": "ibert_wmma_load_b_nt_16x16x16_s8_shared",
    "mma": "ibert_wmma_mma_16x16x16_s8s8s32_nt",
    "store": "ibert_wmma_store_16x16x16_s32_shared",
}
_WMMA_REGISTERED = False


def _frag_index(buf, stride, rows: int, cols: int):
    """Which fragment of a fragment buffer ``buf`` (laid out in ``rows x cols`` tiles) a view is."""
    return (buf.elem_offset // stride // rows) * (stride // cols) + buf.elem_offset % stride // cols


def wmma_intrins() -> dict:
    """Register (once) the five int8 WMMA intrinsics for ``C[i, j] += A[i, k] * B[j, k]``.

    Own registration rather than ``tvm.s_tir.tensor_intrin.cuda``'s: importing that package is
    slow (30-60 s here), and its fill intrinsic passes a float32 zero even to int32 fragments,
    which would put a float literal into the kernel. Here every value is an integer.
    """
    global _WMMA_REGISTERED
    if _WMMA_REGISTERED:
        return dict(_WMMA_NAMES)
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    n = WMMA

    @T.prim_func(s_tir=True)
    def fill_desc(c: T.handle) -> None:
        C = T.match_buffer(c, (n, n), "int32", align=64, offset_factor=n, scope="wmma.accumulator")
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:n, 0:n])
            for i, j in T.grid(n, n):
                with T.sblock("init"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    C[vi, vj] = T.int32(0)

    @T.prim_func(s_tir=True)
    def fill_impl(c: T.handle) -> None:
        c1 = T.int32()
        c0 = T.int32()
        C = T.match_buffer(c, (n, n), "int32", align=64, offset_factor=n, scope="wmma.accumulator", strides=[c1, c0])
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:n, 0:n])
            T.evaluate(T.tvm_fill_fragment(C.data, n, n, n, _frag_index(C, c1, n, n), T.int32(0), dtype="void"))

    def copy(dtype: str, src_scope: str, dst_scope: str, layout: str):
        """A 16 x 16 fragment copy ``C = A``: a load (shared -> fragment, ``tvm_load_matrix_sync``
        in ``layout``) or, from the accumulator, a store (fragment -> shared, row-major)."""
        store = src_scope == "wmma.accumulator"
        name = "store" if store else "load"

        @T.prim_func(s_tir=True)
        def desc(a: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (n, n), dtype, align=64, offset_factor=n, scope=src_scope)
            C = T.match_buffer(c, (n, n), dtype, align=64, offset_factor=n, scope=dst_scope)
            with T.sblock("root"):
                T.reads(A[0:n, 0:n])
                T.writes(C[0:n, 0:n])
                for i, j in T.grid(n, n):
                    with T.sblock(name):
                        vi, vj = T.axis.remap("SS", [i, j])
                        C[vi, vj] = A[vi, vj]

        @T.prim_func(s_tir=True)
        def impl(a: T.handle, c: T.handle) -> None:
            a1 = T.int32()
            a0 = T.int32()
            c1 = T.int32()
            c0 = T.int32()
            A = T.match_buffer(a, (n, n), dtype, align=64, offset_factor=n, scope=src_scope, strides=[a1, a0])
            C = T.match_buffer(c, (n, n), dtype, align=64, offset_factor=n, scope=dst_scope, strides=[c1, c0])
            with T.sblock("root"):
                T.reads(A[0:n, 0:n])
                T.writes(C[0:n, 0:n])
                if store:  # (a Python bool: TVMScript keeps one branch)
                    T.evaluate(
                        T.tvm_store_matrix_sync(
                            A.data, n, n, n, _frag_index(A, a1, n, n), C.access_ptr("w", ptr_type=dtype), c1, layout,
                            dtype="void",
                        )
                    )
                else:
                    T.evaluate(
                        T.tvm_load_matrix_sync(
                            C.data, n, n, n, _frag_index(C, c1, n, n), A.access_ptr("r", ptr_type=dtype), a1, layout,
                            dtype="void",
                        )
                    )

        return desc, impl

    @T.prim_func(s_tir=True)
    def mma_desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (n, n), "int8", align=64, offset_factor=n, scope="wmma.matrix_a")
        B = T.match_buffer(b, (n, n), "int8", align=64, offset_factor=n, scope="wmma.matrix_b")
        C = T.match_buffer(c, (n, n), "int32", align=64, offset_factor=n, scope="wmma.accumulator")
        with T.sblock("root"):
            T.reads(C[0:n, 0:n], A[0:n, 0:n], B[0:n, 0:n])
            T.writes(C[0:n, 0:n])
            for i, j, k in T.grid(n, n, n):
                with T.sblock("update"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                    C[vi, vj] = C[vi, vj] + T.Cast("int32", A[vi, vk]) * T.Cast("int32", B[vj, vk])

    @T.prim_func(s_tir=True)
    def mma_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        a1 = T.int32()
        a0 = T.int32()
        b1 = T.int32()
        b0 = T.int32()
        c1 = T.int32()
        c0 = T.int32()
        A = T.match_buffer(a, (n, n), "int8", align=64, offset_factor=n, scope="wmma.matrix_a", strides=[a1, a0])
        B = T.match_buffer(b, (n, n), "int8", align=64, offset_factor=n, scope="wmma.matrix_b", strides=[b1, b0])
        C = T.match_buffer(c, (n, n), "int32", align=64, offset_factor=n, scope="wmma.accumulator", strides=[c1, c0])
        with T.sblock("root"):
            T.reads(C[0:n, 0:n], A[0:n, 0:n], B[0:n, 0:n])
            T.writes(C[0:n, 0:n])
            T.evaluate(
                T.tvm_mma_sync(
                    C.data, _frag_index(C, c1, n, n), A.data, _frag_index(A, a1, n, n),
                    B.data, _frag_index(B, b1, n, n), C.data, _frag_index(C, c1, n, n), dtype="void",
                )
            )

    TensorIntrin.register(_WMMA_NAMES["fill"], fill_desc, fill_impl, override=True)
    # A [16 rows, 16 k] row-major; B stored [16 n, 16 k] = the k x n matrix_b in column-major order
    TensorIntrin.register(_WMMA_NAMES["load_a"], *copy("int8", "shared", "wmma.matrix_a", "row_major"), override=True)
    TensorIntrin.register(_WMMA_NAMES["load_b"], *copy("int8", "shared", "wmma.matrix_b", "col_major"), override=True)
    TensorIntrin.register(_WMMA_NAMES["mma"], mma_desc, mma_impl, override=True)
    TensorIntrin.register(_WMMA_NAMES["store"], *copy("int32", "wmma.accumulator", "shared", "row_major"),
                          override=True)
    _WMMA_REGISTERED = True
    return dict(_WMMA_NAMES)

