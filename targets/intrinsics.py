"""qpass's tensor intrinsics: exact AVX2 s8 x s8 and u8 x s7 (7-bit weights), AVX-512 VNNI and
AVX-VNNI (for LLVM 22's vpdpbusd signature), ARM sdot and smmla, CUDA dp4a.

Every intrinsic computes C[i] += sum_k A[k] * B[i, k] in int32 (smmla: C[i, j] += A[i, k] * B[j, k])
and is exact: no intermediate saturation for any operand the kernels hand it. The accumulator C is
a register tile (scope "local"): the schedules keep a kernel's accumulators in registers. TVM 0.27
ships sdot and a VNNI intrinsic, but with global-scope accumulators (and its VNNI one no longer
builds), so all of them are written here.

Each `register_*` function registers its intrinsic with TVM once (TVM refuses a second
registration of a name); the micro-kernel table (targets.microkernels) pairs each with its record.
"""

from __future__ import annotations

import functools

AVX2_DOT_8x4 = "qpass_avx2_dot_8x4_s8s8s32"
AVX2_U8S7_DOT_8x4 = "qpass_avx2_dot_8x4_u8s7s32"
SMMLA_2x2x8 = "qpass_smmla_2x2x8_s8s8s32"
DP4A_GLOBAL = "qpass_dp4a_s8s8s32_global"
VNNI_DOT_16x4 = "qpass_vnni_dot_16x4_u8s8s32"
AVXVNNI_DOT_8x4 = "qpass_avxvnni_dot_8x4_u8s8s32"
SDOT_4x4 = "qpass_sdot_4x4_s8s8s32"


def _dot_desc(lanes: int, a_dtype: str, c_scope: str = "local"):
    """The description every x86/CUDA micro-kernel matches: C[i] += A[k] * B[i, k], k < 4, in int32."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (lanes, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope=c_scope)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")
    return desc


@functools.cache
def register_vnni():
    """AVX-512 VNNI: C[16] += A[4] (u8, broadcast) . B[16, 4] (s8) with one vpdpbusd (no saturation).

    TVM 0.27 ships `dot_16x4_vnni`, but it calls llvm.x86.avx512.vpdpbusd.512 with <16 x i32>
    operands, which the LLVM inside the 0.27 wheels (v22) rejects: it takes <64 x i8> now.
    """
    _register_broadcast_dot(VNNI_DOT_16x4, 16, "uint8", "llvm.x86.avx512.vpdpbusd.512")


@functools.cache
def register_avxvnni():
    """AVX-VNNI: C[8] += A[4] (u8, broadcast) . B[8, 4] (s8) with one VEX-encoded vpdpbusd ymm.

    The 256-bit LLVM intrinsic is the AVX512VL one; on a target with +avxvnni and without AVX-512
    (alderlake) LLVM encodes it with VEX (`{vex} vpdpbusd`), which needs only the avx_vnni CPU flag.
    """
    _register_broadcast_dot(AVXVNNI_DOT_8x4, 8, "uint8", "llvm.x86.avx512.vpdpbusd.256")


def _register_broadcast_dot(name: str, lanes: int, a_dtype: str, llvm_intrinsic: str):
    """C[lanes] += A[4] . B[lanes, 4] with one instruction that takes (C, A broadcast to every
    lane, B) as (int32 x lanes, int8 x 4*lanes, int8 x 4*lanes): vpdpbusd, sdot."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T
    c_vec, a_vec, bytes_vec = f"int32x{lanes}", f"{a_dtype}x4", f"int8x{4 * lanes}"

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (lanes, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            a_all = T.reinterpret(bytes_vec, T.broadcast(T.reinterpret("int32", A.vload([0], a_vec)), lanes))
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                c_vec, llvm_intrinsic, C.vload([0], c_vec), a_all, B.vload([0, 0], bytes_vec))

    TensorIntrin.register(name, _dot_desc(lanes, a_dtype), impl)


@functools.cache
def register_avx2():
    """8 int32 lanes x 4 bytes, s8 x s8, exactly, with the sign trick.

    vpmaddubsw multiplies u8 by s8 and adds pairs with int16 saturation. Feeding it |a| (u8, at
    most 128) and sign(a) * b (vpsignb; exact while b != -128) makes every product a * b, at most
    128 * 127 in size, so each pair sum stays within int16: no saturation can occur. vpmaddwd
    with ones widens pairs to int32. The kernels only pick this intrinsic when no weight is -128.
    """
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "int8", offset_factor=1)
        B = T.match_buffer(b, (8, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (8,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:8], A[0:4], B[0:8, 0:4])
            T.writes(C[0:8])
            a_x32 = T.reinterpret("int8x32", T.broadcast(T.reinterpret("int32", A.vload([0], "int8x4")), 8))
            signed_b = T.call_llvm_pure_intrin("int8x32", "llvm.x86.avx2.psign.b", B.vload([0, 0], "int8x32"),
                                               a_x32)
            pairs = T.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw",
                                            T.reinterpret("uint8x32", T.abs(a_x32)), signed_b)
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], "int32x8") + T.call_llvm_pure_intrin(
                "int32x8", "llvm.x86.avx2.pmadd.wd", pairs, T.broadcast(T.int16(1), 16))

    TensorIntrin.register(AVX2_DOT_8x4, _dot_desc(8, "int8"), impl)


@functools.cache
def register_avx2_u8s7():
    """8 int32 lanes x 4 bytes, u8 activations x weights in [-64, 63], exactly, at vpmaddubsw's full rate.

    vpmaddubsw adds two u8 x s8 products with int16 saturation: with weights in [-64, 63] a pair
    sum lies in [2 * 255 * -64, 2 * 255 * 63] = [-32640, 32130], inside int16, so it never
    saturates; vpmaddwd with ones widens pairs to int32. No sign trick: three instructions per
    32 multiply-accumulates instead of five. The kernels pick it only for layers whose centered
    weights all lie in that range (MicroKernel.accepts).
    """
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (8, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (8,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:8], A[0:4], B[0:8, 0:4])
            T.writes(C[0:8])
            a_x32 = T.reinterpret("uint8x32", T.broadcast(T.reinterpret("int32", A.vload([0], "uint8x4")), 8))
            pairs = T.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw", a_x32,
                                            B.vload([0, 0], "int8x32"))
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], "int32x8") + T.call_llvm_pure_intrin(
                "int32x8", "llvm.x86.avx2.pmadd.wd", pairs, T.broadcast(T.int16(1), 16))

    TensorIntrin.register(AVX2_U8S7_DOT_8x4, _dot_desc(8, "uint8"), impl)


@functools.cache
def register_sdot():
    """ARM dotprod: C[4] += A[4] (broadcast) . B[4, 4] with one sdot."""
    _register_broadcast_dot(SDOT_4x4, 4, "int8", "llvm.aarch64.neon.sdot.v4i32.v16i8")


@functools.cache
def register_smmla():
    """ARM i8mm: C[2, 2] += A[2, 8] . B[2, 8]^T with one smmla (A rows may be strided)."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa, sc = T.int32(), T.int32()
        A = T.match_buffer(a, (2, 8), "int8", strides=[sa, 1], offset_factor=1)
        B = T.match_buffer(b, (2, 8), "int8", offset_factor=1)
        C = T.match_buffer(c, (2, 2), "int32", strides=[sc, 1], offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:2, 0:2], A[0:2, 0:8], B[0:2, 0:8])
            T.writes(C[0:2, 0:2])
            for i, j, k in T.grid(2, 2, 8):
                with T.sblock("update"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                    C[vi, vj] = C[vi, vj] + T.cast(A[vi, vk], "int32") * T.cast(B[vj, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa, sc = T.int32(), T.int32()
        A = T.match_buffer(a, (2, 8), "int8", strides=[sa, 1], offset_factor=1)
        B = T.match_buffer(b, (2, 8), "int8", offset_factor=1)
        C = T.match_buffer(c, (2, 2), "int32", strides=[sc, 1], offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:2, 0:2], A[0:2, 0:8], B[0:2, 0:8])
            T.writes(C[0:2, 0:2])
            acc = T.call_llvm_pure_intrin(
                "int32x4", "llvm.aarch64.neon.smmla.v4i32.v16i8",
                T.vectorcombine("int32x4", C.vload([0, 0], "int32x2"), C.vload([1, 0], "int32x2")),
                T.vectorcombine("int8x16", A.vload([0, 0], "int8x8"), A.vload([1, 0], "int8x8")),
                B.vload([0, 0], "int8x16"))
            C[0, T.ramp(T.int32(0), 1, 2)] = T.vectorlow("int32x2", acc)
            C[1, T.ramp(T.int32(0), 1, 2)] = T.vectorhigh("int32x2", acc)

    TensorIntrin.register(SMMLA_2x2x8, desc, impl)


@functools.cache
def register_dp4a():
    """CUDA: C[4] += A[4] . B[4, 4] with four __dp4a, operands read from global memory, C in registers."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "int8", offset_factor=1, align=4)
        B = T.match_buffer(b, (4, 4), "int8", offset_factor=1, align=4)
        C = T.match_buffer(c, (4,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:4], A[0:4], B[0:4, 0:4])
            T.writes(C[0:4])
            for i in T.unroll(4):
                C[i] += T.call_pure_extern("int32", "__dp4a", A.vload([0], "int8x4"), B.vload([i, 0], "int8x4"),
                                           T.int32(0))

    TensorIntrin.register(DP4A_GLOBAL, _dot_desc(4, "int8", "local"), impl)
