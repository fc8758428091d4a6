"""Integer kernels as TVM tensor expressions, and the compile-time work that feeds them.

Activations are NHWC inside the kernels (so a pixel's input channels are contiguous bytes, the
operand a dot-product instruction wants). Weights are packed once, at compile time, into blocks of
`lanes` output channels x `reduction` input channels, the layout of the target's micro-kernel
(targets.microkernels); int4 weights are packed two per byte and unpacked inside the kernel.

Zero points are folded at compile time: sum (x - zx)(w - zw) = sum x * w' - zx * sum w' with
w' = w - zw, and padding takes the value zx, so the kernel computes sum x * w' + bias' with
bias' = bias - zx * sum w'. Everything here is exact integer arithmetic, equal to the reference
interpreter (the kernels of qpass.ops.integer) bit for bit.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from qpass.errors import QpassError
from qpass.ir.types import dtype_range
from qpass.targets.microkernels import MICRO_KERNELS, MicroKernel, choose

TVM_DTYPES = {"i8": "int8", "u8": "uint8", "i16": "int16", "i32": "int32", "i64": "int64", "f32": "float32",
              "f16": "float16", "i4": "int8", "u4": "uint8", "bool": "bool"}


@dataclasses.dataclass
class Epilogue:
    """The requantizing tail of an integer op: per-channel multiplier/shift, output zero point, clamp."""

    multiplier: np.ndarray           # int32 [channels]
    shift: np.ndarray                # int32 [channels]
    zero_point: int
    lo: int
    hi: int
    dtype: str                       # TVM dtype of the result
    narrow: bool = False             # acc + bias fits int32 and 33 <= shift <= 63: see apply

    @classmethod
    def of(cls, op, channels: int) -> Optional["Epilogue"]:
        if "multiplier" not in op.attrs:
            return None
        out = op.output.type
        if out.quant.zero_point.size != 1:
            raise QpassError(f"%{op.name} ({op.kind}): a per-channel output zero point is not supported by the "
                             "compiled kernels; quantize activations per tensor")
        lo, hi = dtype_range(out.dtype, out.quant.bits)
        if "clamp" in op.attrs:
            lo, hi = max(lo, op.attrs["clamp"][0]), min(hi, op.attrs["clamp"][1])
        multiplier = np.broadcast_to(np.asarray(op.attrs["multiplier"], np.int32), (channels,))
        shift = np.broadcast_to(np.asarray(op.attrs["shift"], np.int32), (channels,))
        return cls(multiplier.copy(), shift.copy(), int(out.quant.zero_point.reshape(-1)[0]), int(lo), int(hi),
                   TVM_DTYPES[out.dtype])

    def shift_argument(self) -> np.ndarray:
        """The per-channel shifts the kernel takes: s, or s - 32 when narrow.

        (Subtracting inside the kernel would be the same arithmetic, but TVM's bound analysis
        mis-handles `x >> (s - 32)` for a loaded s and drops the clamp after it.)
        """
        return self.shift - 32 if self.narrow else self.shift

    def apply(self, value, channel, m, s):
        """TE expression: clamp(((v * m + 2^(s-1)) >> s) + zp) for an int64 `value` (int32 if narrow).

        Narrow: with v * m = H * 2^32 + L (H the signed high word, 0 <= L < 2^32) and s >= 33,
        floor((v * m + 2^(s-1)) / 2^s) = floor((H + 2^(s-33)) / 2^(s-32)), because L / 2^32 < 1
        cannot carry past an integer numerator. So one 32x32->64 multiply (vpmuldq) and 32-bit
        lanes do the whole epilogue exactly, instead of int64 arithmetic that AVX2 emulates.
        """
        from tvm import tirx
        if self.narrow:                # s holds shift - 32 here (see shift_argument)
            ss = s[channel]
            high = ((value.astype("int64") * m[channel].astype("int64")) >> tirx.const(32, "int64")).astype("int32")
            r = (high + (tirx.const(1, "int32") << (ss - 1))) >> ss
            r = r + tirx.const(self.zero_point, "int32")
            return tirx.max(tirx.min(r, tirx.const(self.hi, "int32")), tirx.const(self.lo, "int32")).astype(self.dtype)
        v = value
        mm, ss = m[channel].astype("int64"), s[channel].astype("int64")
        r = (v * mm + (tirx.const(1, "int64") << (ss - tirx.const(1, "int64")))) >> ss
        r = r + tirx.const(self.zero_point, "int64")
        return tirx.max(tirx.min(r, tirx.const(self.hi, "int64")), tirx.const(self.lo, "int64")).astype(self.dtype)


def per_tensor_zero_point(value, what: str) -> int:
    quant = value.type.quant
    if quant.zero_point.size != 1:
        raise QpassError(f"%{value.name}: {what} with a per-channel zero point is not supported by the compiled "
                         "kernels; quantize activations per tensor")
    return int(quant.zero_point.reshape(-1)[0])


def centered_weights(weight) -> np.ndarray:
    """w - zw as int32, with the zero point broadcast per channel."""
    quant = weight.type.quant
    _, zp = quant.broadcast(weight.type.shape)
    return np.asarray(weight.data).astype(np.int32) - zp.astype(np.int32)


def gemm_weight_range(graph) -> Optional[tuple[int, int]]:
    """(lo, hi) of the centered weights of the graph's tensorizable layers (qdense, qconv2d with
    groups=1); None when it has none. The target's micro-kernel is chosen for this range."""
    ranges = [(int(w.min()), int(w.max())) for w in
              (centered_weights(op.inputs[1]) for op in graph.ops
               if (op.kind == "qdense" or (op.kind == "qconv2d" and op.attrs.get("groups", 1) == 1))
               and op.inputs[1].is_constant and op.inputs[1].type.quant is not None)
              if w.size]
    return (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None


@dataclasses.dataclass
class ConvPlan:
    """Shapes and constants of one compiled qconv2d / qdense (dense is a 1x1 conv over [M,1,1,K], M
    the product of the input's leading axes)."""

    name: str
    kind: str                        # "gemm" (groups=1, tensorized), "depthwise" or "grouped"
    in_shape: tuple                  # NHWC
    out_shape: tuple                 # NHWC
    kernel: tuple                    # (KH, KW)
    strides: tuple
    dilations: tuple
    pads: tuple                      # (top, left, bottom, right)
    groups: int
    x_dtype: str
    pad_value: int
    lanes: int
    reduction: int
    weight: np.ndarray               # packed, see pack_* below
    bias: np.ndarray                 # int32 [OC], zero points folded in
    epilogue: Optional[Epilogue]
    int4: bool = False
    micro_kernel: Optional[str] = None

    @property
    def out_channels(self) -> int:
        return self.out_shape[3]

    @property
    def in_channels_padded(self) -> int:
        ic = self.in_shape[3]
        return -(-ic // self.reduction) * self.reduction

    @property
    def out_blocks(self) -> int:
        return -(-self.out_channels // self.lanes)

    @property
    def pixels(self) -> int:
        """Output pixels one micro-kernel call produces (1 without a micro-kernel)."""
        return MICRO_KERNELS[self.micro_kernel].pixels if self.micro_kernel else 1


def conv_plan(op, spec, dense: bool = False) -> ConvPlan:
    """Fold zero points, choose the kernel kind, and pack the weights of a qconv2d/qdense for `spec`."""
    x, w = op.inputs[0], op.inputs[1]
    if not w.is_constant:
        raise QpassError(f"%{op.name} ({op.kind}): the weight is not a constant; the compiled kernels need "
                         "weights known at compile time")
    zx = per_tensor_zero_point(x, "an activation")
    wc = centered_weights(w)
    if dense:
        wc = wc[:, :, None, None]
        rows = int(np.prod(x.type.shape[:-1], dtype=np.int64))   # [..., K] inputs: every leading axis is a row
        in_shape = (rows, 1, 1, x.type.shape[-1])
        out_shape = (rows, 1, 1, wc.shape[0])
        strides, dilations, pads, groups = (1, 1), (1, 1), (0, 0, 0, 0), 1
    else:
        n, c, h, wd = x.type.shape
        on, oc, oh, ow = op.output.type.shape
        in_shape, out_shape = (n, h, wd, c), (on, oh, ow, oc)
        strides, dilations = tuple(op.attrs["strides"]), tuple(op.attrs["dilations"])
        pads, groups = tuple(op.attrs["pads"]), op.attrs["groups"]
    oc, icg, kh, kw = wc.shape
    bias = np.zeros(oc, np.int64) if len(op.inputs) < 3 else np.asarray(op.inputs[2].data, np.int64)
    bias = bias - zx * wc.reshape(oc, -1).sum(1, dtype=np.int64)
    if np.abs(bias).max(initial=0) >= 2 ** 31:
        raise QpassError(f"%{op.name}: the folded bias overflows int32; the layer's scales are inconsistent")
    x_dtype = TVM_DTYPES[x.type.dtype]
    int4 = w.type.dtype in ("i4", "u4") or (w.type.quant.bits or 8) <= 4
    fits = wc.min() >= -128 and wc.max() <= 127
    lo, hi = dtype_range(x.type.dtype)
    reach = np.abs(wc).reshape(oc, -1).sum(1, dtype=np.int64) * max(abs(lo), abs(hi)) + np.abs(bias)
    epilogue = Epilogue.of(op, oc)
    if epilogue is not None:
        epilogue.narrow = bool(reach.max() < 2 ** 31 and epilogue.shift.min() >= 33 and epilogue.shift.max() <= 63)
    common = dict(name=op.name, in_shape=in_shape, out_shape=out_shape, kernel=(kh, kw), strides=strides,
                  dilations=dilations, pads=pads, groups=groups, x_dtype=x_dtype, pad_value=zx,
                  bias=bias.astype(np.int32), epilogue=epilogue)
    if groups == 1 and fits:
        micro = choose(spec.micro_kernel, x_dtype, wc, out_shape[2], strides[1])
        if micro is not None:
            packed = pack_blocks(wc, micro)
            if int4:
                packed = pack_int4(packed)
            return ConvPlan(kind="gemm", lanes=micro.lanes, reduction=micro.reduction, weight=packed, int4=int4,
                            micro_kernel=micro.name, **common)
    if groups == in_shape[3] == oc and icg == 1 and fits:
        return ConvPlan(kind="depthwise", lanes=1, reduction=1, weight=wc[:, 0].transpose(1, 2, 0).astype(np.int8),
                        **common)
    return ConvPlan(kind="grouped", lanes=1, reduction=1, weight=wc.astype(np.int16), **common)


def pack_blocks(wc: np.ndarray, micro: MicroKernel) -> np.ndarray:
    """[OC, IC, KH, KW] -> [OC/lanes, KH, KW, IC/reduction, lanes, reduction], the micro-kernel's
    weight operand blocks, zero padded."""
    lanes, reduction = micro.lanes, micro.reduction
    oc, ic, kh, kw = wc.shape
    ocp, icp = -(-oc // lanes) * lanes, -(-ic // reduction) * reduction
    padded = np.zeros((ocp, icp, kh, kw), micro.weight_dtype)
    padded[:oc, :ic] = wc
    blocks = padded.reshape(ocp // lanes, lanes, icp // reduction, reduction, kh, kw)
    return np.ascontiguousarray(blocks.transpose(0, 4, 5, 2, 1, 3))


def pack_int4(packed: np.ndarray) -> np.ndarray:
    """Two signed nibbles per byte along the last axis: element 2j in the low nibble, 2j+1 in the high."""
    low, high = packed[..., 0::2].astype(np.uint8) & 0xF, packed[..., 1::2].astype(np.uint8) << 4
    return (low | high).astype(np.int8)


# --- tensor expressions -------------------------------------------------------------------------------


def padded_input(x, plan: ConvPlan):
    """x [N,H,W,C] padded spatially and to a multiple of `reduction` channels with the zero point."""
    from tvm import te, tirx
    n, h, w, c = plan.in_shape
    top, left, bottom, right = plan.pads
    cp = plan.in_channels_padded if plan.kind == "gemm" else c
    if (top, left, bottom, right) == (0, 0, 0, 0) and cp == c:
        return x
    shape = (n, h + top + bottom, w + left + right, cp)
    fill = tirx.const(plan.pad_value, plan.x_dtype)

    def value(b, i, j, k):
        inside = tirx.all(i >= top, i < top + h, j >= left, j < left + w, k < c)
        return tirx.if_then_else(inside, x[b, i - top, j - left, tirx.min(k, c - 1)], fill)
    return te.compute(shape, value, name="pad")


def unpacked_weight(wp, plan: ConvPlan):
    """The int8 weight blocks; int4 blocks are sign-extended from their nibbles here, in the kernel."""
    from tvm import te
    if not plan.int4:
        return wp
    shape = tuple(wp.shape[:-1]) + (plan.reduction,)

    def nibble(*idx):
        byte = wp[idx[:-1] + (idx[-1] // 2,)]
        return te.if_then_else(idx[-1] % 2 == 0, (byte << 4) >> 4, byte >> 4)
    return te.compute(shape, nibble, name="unpack_int4")


def conv_compute(plan: ConvPlan):
    """The TE function of a compiled conv: (x NHWC, packed weight, bias, multiplier, shift) -> out NHWC."""
    from tvm import te

    def kernel(x, wp, bias, m, s):
        xp = padded_input(x, plan)
        (kh, kw), (sh, sw), (dh, dw) = plan.kernel, plan.strides, plan.dilations
        n, oh, ow, oc = plan.out_shape
        rh, rw = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw")
        if plan.kind == "gemm":
            wu = unpacked_weight(wp, plan)
            lanes, red = plan.lanes, plan.reduction
            ro = te.reduce_axis((0, plan.in_channels_padded // red), "ro")
            ri = te.reduce_axis((0, red), "ri")
            pair = plan.pixels                      # smmla makes a pair of pixels per call

            def dot(b, i, j, o, l):
                return te.sum(xp[b, i * sh + rh * dh, j * sw + rw * dw, ro * red + ri].astype("int32")
                              * wu[o, rh, rw, ro, l, ri].astype("int32"), axis=[rh, rw, ro, ri])
            acc = te.compute((n, oh, ow // pair, plan.out_blocks, pair, lanes),
                             lambda b, i, j, o, p, l: dot(b, i, j * pair + p, o, l), name="acc",
                             attrs={"qpass.micro_kernel": plan.micro_kernel})

            def at(b, i, j, c):
                return acc[b, i, j // pair, c // lanes, j % pair, c % lanes]
        elif plan.kind == "depthwise":
            def taps(b, i, j, c):      # the kh x kw taps written out: no reduction loop, no accumulator memory
                total = None
                for y in range(kh):
                    for z in range(kw):
                        # an int8 x int8 (or u8 x s8) product fits int16 exactly: vpmullw, then widen
                        term = (xp[b, i * sh + y * dh, j * sw + z * dw, c].astype("int16")
                                * wp[y, z, c].astype("int16")).astype("int32")
                        total = term if total is None else total + term
                return total
            acc = te.compute((n, oh, ow, oc), taps, name="acc")

            def at(b, i, j, c):
                return acc[b, i, j, c]
        else:
            icg = plan.weight.shape[1]
            ocg = oc // plan.groups
            r = te.reduce_axis((0, icg), "r")
            acc = te.compute(
                (n, oh, ow, oc),
                lambda b, i, j, c: te.sum(xp[b, i * sh + rh * dh, j * sw + rw * dw, c // ocg * icg + r].astype("int32")
                                          * wp[c, r, rh, rw].astype("int32"), axis=[r, rh, rw]), name="acc")

            def at(b, i, j, c):
                return acc[b, i, j, c]
        ep = plan.epilogue
        if ep is None:
            return te.compute(plan.out_shape, lambda b, i, j, c: at(b, i, j, c) + bias[c], name="out")
        if ep.narrow:
            return te.compute(plan.out_shape, lambda b, i, j, c: ep.apply(_add_wrapping(at(b, i, j, c), bias[c]), c,
                                                                          m, s), name="out")
        return te.compute(plan.out_shape, lambda b, i, j, c: ep.apply(
            at(b, i, j, c).astype("int64") + bias[c].astype("int64"), c, m, s), name="out")
    return kernel


def _add_wrapping(a, b):
    """a + b for int32 values whose sum is known to fit: added as uint32 so that LLVM, which may
    widen a signed (nsw) sum operand by operand, sees a plain 32-bit value when the epilogue
    sign-extends it, and multiplies it with one vpmuldq instead of a 64-bit multiply."""
    return (a.astype("uint32") + b.astype("uint32")).astype("int32")
