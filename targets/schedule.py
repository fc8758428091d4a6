"""qpass's schedules for its kernels: tiling, parallel loops, vectorized epilogues, and tensorization
with the target's dot-product micro-kernel (its record in targets.microkernels: block shape,
register budget, tensor intrinsic).

CPU conv/dense (the "gemm" kernels): a register tile of output pixels x blocks of `lanes` output
channels accumulates while the reduction (kernel rows, columns, input-channel blocks) runs; the
micro-kernel computes lanes x reduction products per call; the requantizing epilogue runs on the
tile right after (reverse_compute_at), so the int32 accumulator never reaches memory. The outer
loops are fused and parallel. CUDA: a thread per pixel and 4 output channels, dp4a over input
channels.
"""

from __future__ import annotations

import numpy as np

from qpass.targets.kernels import ConvPlan
from qpass.targets.microkernels import MICRO_KERNELS, MicroKernel


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
    """Schedule a conv/dense kernel for a CPU: register-tiled and tensorized, depthwise or plain."""
    if plan.kind == "gemm":
        _cpu_gemm(sch, plan)
    elif plan.kind == "depthwise":
        _cpu_depthwise(sch, plan)
    else:
        _cpu_plain(sch, plan)
    _cpu_pad(sch)


def register_tile(micro: MicroKernel, pixels: int, blocks: int) -> tuple[int, int]:
    """(pixels, output-channel blocks) of the tile kept in registers: dividing the layer exactly,
    within the micro-kernel's register budget, with the fewest operand loads per multiply-accumulate."""
    most, most_blocks = micro.register_budget
    best = (1, 1)
    for px in range(1, min(pixels, 8) + 1):
        for ob in range(1, min(blocks, most_blocks) + 1):
            if pixels % px or blocks % ob or px * ob > most:
                continue
            if (px * ob / (px + ob), px * ob) > (best[0] * best[1] / sum(best), best[0] * best[1]):
                best = (px, ob)
    return best


def _cpu_gemm(sch, plan: ConvPlan):
    """A px x ob register tile: px output pixels x ob blocks of `lanes` channels accumulate in
    registers (local scope, fully unrolled) over kernel rows, columns and input-channel blocks;
    each broadcast activation meets ob weight vectors and each weight vector px activations."""
    micro = MICRO_KERNELS[plan.micro_kernel]
    acc, out = sch.get_sblock("acc"), sch.get_sblock("out")
    b, i, j, o, p, lane, rh, rw, ro, ri = sch.get_loops(acc)
    px, ob = register_tile(micro, _extent(sch, j), _extent(sch, o))
    jo, ji = sch.split(j, [None, px])
    oo, oi = sch.split(o, [None, ob])
    if plan.int4:                      # unpack each weight block once: output-channel blocks outermost
        sch.reorder(oo, b, i, jo, rh, rw, ro, ji, oi, p, lane, ri)
        outer = oo
        sch.compute_at(sch.get_sblock("unpack_int4"), oo)
    else:
        sch.reorder(b, i, jo, oo, rh, rw, ro, ji, oi, p, lane, ri)
        outer = sch.fuse(b, i, jo, oo)
    sch.parallel(outer)
    sch.set_scope(acc, 0, "local")
    sch.reverse_compute_at(out, jo if plan.int4 else outer)
    if plan.out_channels % plan.lanes == 0 and plan.lanes > 1:
        _, vec = sch.split(sch.get_loops(out)[-1], [None, plan.lanes])
        sch.vectorize(vec)
    init = sch.decompose_reduction(acc, rh)
    sch.vectorize(sch.get_loops(init)[-1])
    # A call covering several pixels (smmla) takes the pixel loop too.
    sch.tensorize(p if micro.pixels > 1 else lane, micro.tensor_intrinsic())
    sch.unroll(ji)
    sch.unroll(oi)


def _cpu_depthwise(sch, plan: ConvPlan):
    """The taps are one expression per output (no reduction loop); a row of `px` pixels x `width`
    channels is unrolled and vectorized, so each tap's weight vector serves px pixels."""
    acc, out = sch.get_sblock("acc"), sch.get_sblock("out")
    sch.compute_inline(acc)
    b, i, j, c = sch.get_loops(out)
    width = _divisor(plan.out_channels, DEPTHWISE_WIDTH, 16 if plan.out_channels % 16 == 0 else 1)
    px = _divisor(_extent(sch, j), 4)
    co, ci = sch.split(c, [None, width])
    jo, ji = sch.split(j, [None, px])
    sch.reorder(b, i, co, jo, ji, ci)
    sch.parallel(sch.fuse(b, i))
    sch.unroll(ji)
    sch.vectorize(ci)


DEPTHWISE_WIDTH = 32


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
    _vector_inner(sch, loops[-1], _extent(sch, loops[-1]), 64)


def schedule_cpu_elementwise(sch):
    """Parallel outer loop, vectorized inner chunk, for each block of a simple elementwise kernel."""
    if _quantize_to_nhwc(sch):
        return
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


PARALLEL_WORK = 1 << 18          # loop iterations below which a legalized kernel stays on one thread


def schedule_cpu_legalized(sch) -> bool:
    """A kernel TVM legalized from a Relax op (float islands: softmax, layer_norm, float conv...,
    which TVM's CPU pipeline leaves as single-threaded loops): each root block's leading spatial
    loops run in parallel, an elementwise block's inner chunk is vectorized. False when no block
    has the plain shape this expects (the kernel is left as it is)."""
    if not _has_root(sch):
        return False
    done = False
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        loops = sch.get_loops(block)
        kinds = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
        if not loops or len(loops) != len(kinds):
            continue
        lead = next((i for i, kind in enumerate(kinds) if kind != 0), len(kinds))
        work = int(np.prod([_extent(sch, loop) for loop in loops], dtype=np.int64))
        if lead == 0 or work < PARALLEL_WORK:
            continue                   # a parallel region costs more than a small kernel's loop
        fused = sch.fuse(*loops[:lead])
        extent = _extent(sch, fused)
        if lead == len(kinds) and extent >= 1024:
            outer, inner = sch.split(fused, [None, 256])
            sch.parallel(outer)
            _vector_inner(sch, inner, 256)
        elif extent >= 2:
            sch.parallel(fused)
        done = True
    return done


def _quantize_to_nhwc(sch) -> bool:
    """A quantize that writes NHWC from NCHW floats with few channels (a network's input): rows in
    parallel, each channel's row read contiguously and vectorized, written with a channel stride."""
    try:
        block = sch.get_sblock("quantize")
    except Exception:                  # noqa: BLE001
        return False
    loops = sch.get_loops(block)
    if len(loops) != 4 or _extent(sch, loops[3]) > 4:
        return False
    b, h, w, c = loops
    sch.reorder(b, h, c, w)
    sch.parallel(sch.fuse(b, h))
    _vector_inner(sch, w, _extent(sch, w))
    return True


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
        sch.tensorize(sch.get_loops(acc)[-2], MICRO_KERNELS[plan.micro_kernel].tensor_intrinsic())
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
