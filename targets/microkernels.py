"""The int8 dot-product micro-kernels: one record per instruction, read by every backend step.

A record says what one call computes (`pixels` output pixels x `lanes` output channels, summing
`reduction` input channels), which operands it takes and over which values its result is exact,
how large a register tile its schedule may keep, the TVM tensor intrinsic that implements it, and
which micro-kernel takes a layer it cannot compute. The registry gives a target the first record
of its family whose feature it has and whose weight range holds the graph's weights (without a
graph: any 8-bit weights, [-127, 127]); `kernels.conv_plan` packs weights into the record's blocks;
`schedule` tiles and tensorizes with it. Adding an instruction is one record here plus its
intrinsic in `targets.intrinsics`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np

from qpass.targets import intrinsics

INT8, UINT8 = (-128, 127), (0, 255)
# What symmetric 8-bit weight quantization produces (narrow range): every target must take these.
EIGHT_BIT_WEIGHTS = (-127, 127)
# What 7-bit weights (quantize{weight-bits=7}, --exact-range) lie in: AVX2's u8 x s7 kernel needs them.
SEVEN_BIT_WEIGHTS = (-64, 63)


@dataclasses.dataclass(frozen=True)
class MicroKernel:
    """One dot-product instruction as the kernels use it."""

    name: str
    family: str                        # the target family ("x86", "arm", "cuda") that has it
    feature: str                       # the target feature that provides it
    lanes: int                         # output channels per call: a packed weight block's rows
    reduction: int                     # input channels per call: K is padded to a multiple of it
    pixels: int                        # output pixels per call
    activation_dtype: str              # TVM dtype of the activation operand
    weight_dtype: str                  # TVM dtype of the packed weights
    activation_range: tuple[int, int]  # operand values for which the instruction's result is exact
    weight_range: tuple[int, int]
    register_budget: Optional[tuple[int, int]]   # (most accumulators, most output-channel blocks)
    intrinsic: str                     # the TVM tensor intrinsic's name
    registers: Callable[[], None]      # the function that registers `intrinsic` with TVM
    fallback: Optional[str] = None     # the micro-kernel to try for a layer this one does not accept

    def accepts(self, activation_dtype: str, weights: np.ndarray, out_width: int, stride_w: int) -> bool:
        """Does this instruction compute a layer with these activations and (centered) weights exactly?

        A call covering several pixels takes them as adjacent output columns: the width must split
        into such groups, and the layer must have stride 1 along it (the only case its schedule
        handles).
        """
        lo, hi = self.weight_range
        if activation_dtype != self.activation_dtype or weights.min() < lo or weights.max() > hi:
            return False
        return self.pixels == 1 or (out_width % self.pixels == 0 and stride_w == 1)

    def holds(self, weight_range: tuple[int, int]) -> bool:
        """Are weights in `weight_range` (lo, hi) within the values this instruction is exact for?"""
        return self.weight_range[0] <= weight_range[0] and weight_range[1] <= self.weight_range[1]

    def tensor_intrinsic(self) -> str:
        """The tensor intrinsic's name, registered with TVM on first use."""
        self.registers()
        return self.intrinsic


# In order of preference within a family: a target gets the first whose feature it has.
# Register budgets were measured with scripts/bench_kernels.py. AVX-512 and NEON have 32 vector
# registers. AVX2 has 16, yet an 8 x 4 tile (32 accumulators, some living in L1) beat every tile
# that fits (MobileNetV2's kernels 1.5x faster than with 4 x 2): the sign trick keeps the multiply
# ports busy, spilled accumulators use the idle load/store ports, and each |a| and broadcast serves
# four blocks. CUDA has no register tile: a thread per pixel and `lanes` channels.
MICRO_KERNELS = {kernel.name: kernel for kernel in (
    # vpdpbusd multiplies u8 by s8: VNNI targets get u8 activations (legalize-activations); a
    # layer whose activations stayed i8 takes AVX2's kernel.
    MicroKernel("vnni", "x86", "vnni", lanes=16, reduction=4, pixels=1, activation_dtype="uint8",
                weight_dtype="int8", activation_range=UINT8, weight_range=INT8, register_budget=(24, 4),
                intrinsic=intrinsics.VNNI_DOT_16x4, registers=intrinsics.register_vnni, fallback="avx2"),
    # AVX-VNNI: the same u8 x s8 vpdpbusd, VEX-encoded on ymm (Alder Lake and later, Zen 5). 16
    # registers, yet as with AVX2 the largest tile won on MobileNetV2 (Zen 5, GEMM kernels' sum):
    # 32 x 4 3.1 ms, 24 x 4 3.3-3.6, 16 x 4 3.9, 12 x 4 4.2.
    MicroKernel("avxvnni", "x86", "avxvnni", lanes=8, reduction=4, pixels=1, activation_dtype="uint8",
                weight_dtype="int8", activation_range=UINT8, weight_range=INT8, register_budget=(32, 4),
                intrinsic=intrinsics.AVXVNNI_DOT_8x4, registers=intrinsics.register_avxvnni, fallback="avx2"),
    # AVX2 at vpmaddubsw's full rate: u8 activations x weights in [-64, 63], so that no pair sum
    # saturates int16 (2 * 255 * 64 = 32640). Taken only for a graph whose GEMM weights all fit
    # (7-bit weights: --exact-range, or int4); its i8 layers (activations legalize-activations
    # could not retype) take the sign trick. Without the sign trick's ALU work, spilled accumulators
    # cost more: on Zen 5 (MobileNetV2's GEMM kernels' sum, scripts/bench_kernels.py --exact-range,
    # a shared machine) 24 x 4 4.8 ms, 32 x 4 4.9, 16 x 4 5.1, 12 x 4 5.4, 8 x 4 6.8; the large-K
    # layers ran best at 16-24 accumulators (85% of the vpmaddubsw peak), the K <= 32 ones at 32.
    MicroKernel("avx2-u8s7", "x86", "avx2", lanes=8, reduction=4, pixels=1, activation_dtype="uint8",
                weight_dtype="int8", activation_range=UINT8, weight_range=SEVEN_BIT_WEIGHTS,
                register_budget=(24, 4), intrinsic=intrinsics.AVX2_U8S7_DOT_8x4,
                registers=intrinsics.register_avx2_u8s7, fallback="avx2"),
    # The sign trick (vpsignb) negates weights: exact only for weights above -128.
    MicroKernel("avx2", "x86", "avx2", lanes=8, reduction=4, pixels=1, activation_dtype="int8",
                weight_dtype="int8", activation_range=INT8, weight_range=(-127, 127), register_budget=(32, 4),
                intrinsic=intrinsics.AVX2_DOT_8x4, registers=intrinsics.register_avx2),
    MicroKernel("smmla", "arm", "i8mm", lanes=2, reduction=8, pixels=2, activation_dtype="int8",
                weight_dtype="int8", activation_range=INT8, weight_range=INT8, register_budget=(16, 4),
                intrinsic=intrinsics.SMMLA_2x2x8, registers=intrinsics.register_smmla, fallback="sdot"),
    MicroKernel("sdot", "arm", "dotprod", lanes=4, reduction=4, pixels=1, activation_dtype="int8",
                weight_dtype="int8", activation_range=INT8, weight_range=INT8, register_budget=(24, 4),
                intrinsic=intrinsics.SDOT_4x4, registers=intrinsics.register_sdot),
    MicroKernel("dp4a", "cuda", "dp4a", lanes=4, reduction=4, pixels=1, activation_dtype="int8",
                weight_dtype="int8", activation_range=INT8, weight_range=INT8, register_budget=None,
                intrinsic=intrinsics.DP4A_GLOBAL, registers=intrinsics.register_dp4a),
)}


def for_target(family: str, features, weight_range: Optional[tuple[int, int]] = None) -> Optional[MicroKernel]:
    """The micro-kernel a target of `family` with `features` tensorizes with; None: plain loops.

    `weight_range`: the (lo, hi) of the graph's centered conv/dense weights; the first record whose
    weight range holds it wins, so a kernel needing narrower weights (avx2-u8s7) is taken only
    for graphs whose weights fit it. Without one (or when none holds it): the first record that
    takes any 8-bit weights, the kernel for an arbitrary graph.
    """
    available = [k for k in MICRO_KERNELS.values() if k.family == family and k.feature in features]
    general = next((k for k in available if k.holds(EIGHT_BIT_WEIGHTS)), None)
    if weight_range is None:
        return general
    return next((k for k in available if k.holds(weight_range)), general)


def choose(name: Optional[str], activation_dtype: str, weights: np.ndarray, out_width: int,
           stride_w: int) -> Optional[MicroKernel]:
    """Micro-kernel `name` or the first of its fallbacks that computes the layer exactly; None: plain loops."""
    while name is not None:
        kernel = MICRO_KERNELS[name]
        if kernel.accepts(activation_dtype, weights, out_width, stride_w):
            return kernel
        name = kernel.fallback
    return None
