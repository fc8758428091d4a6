"""qpass's schedules for its kernels: tiling, parallel loops, vectorized epilogues, and tensorization
with the target's dot-product intrinsic (targets.intrinsics).

CPU conv/dense (the "gemm" kernels): a tile of `ow_tile` output pixels x `lanes` output channels
stays in registers while the reduction (kernel rows, columns, input-channel blocks) runs; the
micro-kernel computes lanes x reduction products per call; the requantizing epilogue runs on the
tile right after (reverse_compute_at), so the int32 accumulator never leaves the tile. The outer
loops are fused and parallel. CUDA: a thread per pixel and 4 output channels, dp4a over input
channels.
"""

from __future__ import annotations

from qpass.targets import intrinsics
from qpass.targets.kernels import ConvPlan

CPU_INTRINSICS = {"vnni": intrinsics.VNNI_DOT_16x4, "avx2": intrinsics.AVX2_DOT_8x4, "sdot": intrinsics.SDOT_4x4,
                  "smmla": intrinsics.SMMLA_2x2x8}


def _divisor(n: int, limit: int, multiple: int = 1) -> int:
    """The largest d <= limit dividing n with d % multiple == 0 (at least `multiple` if it divides n)."""
    for d in range(min(limit, n), 0, -1):
        if n % d == 0 and d % multiple == 0:
            return d
    return 1


def _vector_inner(sch, loop, extent: int, width: int = 16):
    """Split off and vectorize an inner chunk of `loop` that divides its extent."""
    inner = _divisor(extent, width)
    if inner > 1:
        _, vec = sch.split(loop, [None, inner])
        sch.vectorize(vec)


def schedule_cpu_conv(sch, plan: ConvPlan):
    if plan.kind == "gemm":
        _cpu_gemm(sch, plan)
    elif plan.kind == "depthwise":
        _cpu_depthwise(sch, plan)
    else:
        _cpu_plain(sch, plan)
    _cpu_pad(sch)


def _cpu_gemm(sch, plan: ConvPlan):
    acc, out = sch.get_sblock("acc"), sch.get_sblock("out")
    b, i, j, o, p, lane, rh, rw, ro, ri = sch.get_loops(acc)
    pixels = sch.get(j).extent                      # output columns (in pairs for smmla)
    jo, ji = sch.split(j, [None, _divisor(int(pixels), 8 // int(sch.get(p).extent))])
    if plan.int4:                      # unpack each weight block once: output-channel blocks outermost
        sch.reorder(o, b, i, jo, rh, rw, ro, ji, p, lane, ri)
        outer = o
        sch.compute_at(sch.get_sblock("unpack_int4"), o)
    else:
        sch.reorder(b, i, jo, o, rh, rw, ro, ji, p, lane, ri)
        outer = sch.fuse(b, i, jo, o)
    sch.parallel(outer)
    sch.reverse_compute_at(out, jo if plan.int4 else outer)
    if plan.out_channels % plan.lanes == 0 and plan.lanes > 1:
        sch.vectorize(sch.get_loops(out)[-1])
    init = sch.decompose_reduction(acc, rh)
    sch.vectorize(sch.get_loops(init)[-1])
    if plan.micro_kernel == "smmla":
        sch.tensorize(p, intrinsics.register(intrinsics.SMMLA_2x2x8))
    else:
        sch.tensorize(lane, intrinsics.register(CPU_INTRINSICS[plan.micro_kernel]))


def _cpu_depthwise(sch, plan: ConvPlan):
    acc, out = sch.get_sblock("acc"), sch.get_sblock("out")
    b, i, j, c, rh, rw = sch.get_loops(acc)
    sch.reorder(b, i, j, rh, rw, c)
    outer = sch.fuse(b, i)
    sch.parallel(outer)
    sch.reverse_compute_at(out, j)
    init = sch.decompose_reduction(acc, rh)
    # The update's channel loop sits under the reduction loops, where TIR refuses `vectorize`;
    # it is innermost and contiguous, so LLVM's loop vectorizer takes it.
    for block in (init, out):
        _vector_inner(sch, sch.get_loops(block)[-1], plan.out_channels)


def _cpu_plain(sch, plan: ConvPlan):
    acc, out = sch.get_sblock("acc"), sch.get_sblock("out")
    loops = sch.get_loops(acc)
    sch.parallel(sch.fuse(loops[0], loops[1]))
    sch.reverse_compute_at(out, sch.get_loops(acc)[1])


def _cpu_pad(sch):
    try:
        pad = sch.get_sblock("pad")
    except Exception:                  # noqa: BLE001 - no padding stage in this kernel
        return
    loops = sch.get_loops(pad)
    sch.parallel(sch.fuse(loops[0], loops[1]))


def schedule_cpu_elementwise(sch):
    """Parallel outer loop, vectorized inner chunk, for each block of a simple elementwise kernel."""
    for block in sch.get_child_blocks(sch.get_sblock("root")) if _has_root(sch) else []:
        loops = sch.get_loops(block)
        if not loops or any(int(iv.iter_type) != 0 for iv in sch.get(block).iter_vars):
            continue                   # reductions stay as written
        fused = sch.fuse(*loops)
        extent = _extent(sch, fused)
        if extent >= 1024:
            outer, inner = sch.split(fused, [None, 256])
            sch.parallel(outer)
            _vector_inner(sch, inner, 256)
        else:
            _vector_inner(sch, fused, extent)


def _has_root(sch) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:                  # noqa: BLE001
        return False


def _extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


# --- CUDA ------------------------------------------------------------------------------------------------

def schedule_cuda_conv(sch, plan: ConvPlan):
    """One thread per 4 output channels of a pixel, accumulating in registers with dp4a (4 channels
    of input per instruction); depthwise and grouped kernels: one thread per output element."""
    acc, out = sch.get_sblock("acc"), sch.get_sblock("out")
    sch.set_scope(acc, 0, "local")
    if plan.kind == "gemm":
        b, i, j, o, p, lane, rh, rw, ro, ri = sch.get_loops(acc)
        sch.reorder(b, i, j, o, p, rh, rw, ro, lane, ri)
        spatial = sch.fuse(b, i, j, o, p)
    else:
        spatial = sch.fuse(*sch.get_loops(acc)[:4])
    # A thread count dividing the work exactly: tensorize refuses blocks under a predicate.
    bx, tx = sch.split(spatial, [None, _divisor(_extent(sch, spatial), 128)])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    sch.reverse_compute_at(out, tx)
    if plan.kind == "gemm":
        sch.decompose_reduction(acc, sch.get_loops(acc)[2])
        sch.tensorize(sch.get_loops(acc)[-2], intrinsics.register(intrinsics.DP4A_GLOBAL))
    for name in ("pad", "unpack_int4"):
        try:
            block = sch.get_sblock(name)
        except Exception:              # noqa: BLE001
            continue
        loops = sch.get_loops(block)
        fused = sch.fuse(*loops)
        bx, tx = sch.split(fused, [None, 256])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
