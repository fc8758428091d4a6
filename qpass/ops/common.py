"""Helpers the op families share: checks for type inference, numpy pieces for kernels, and the
layout names lowering functions use (the Lowering object in qpass.targets.lower tracks them).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from qpass.errors import IRError
from qpass.ir.opdef import Trait
from qpass.ir.types import TensorType, is_float

# Layouts a lowered value can be in: the IR's own (NCHW for 4-D) or NHWC, the integer kernels' layout.
NHWC, NATIVE = "NHWC", "NATIVE"


# Traits of an op that moves values unchanged (an integer operand passes through with its quantization).
MOVES = frozenset({Trait.DATA_MOVEMENT, Trait.FOLLOWS_OPERAND, Trait.INTEGER_FORM})


def nhwc_shape(shape) -> tuple:
    """The NHWC shape of an NCHW `shape`."""
    return (shape[0], shape[2], shape[3], shape[1])


# --------------------------------------------------------------------------- type inference
def fail(msg: str):
    """Raise the IRError type inference reports."""
    raise IRError(msg)


def same_dtype(kind: str, types) -> str:
    """The dtype all operands share (an error names them when they differ)."""
    dtypes = {t.dtype for t in types}
    if len(dtypes) > 1:
        fail(f"{kind} operands must share a dtype, got {', '.join(sorted(dtypes))}")
    return types[0].dtype


def float_operand(kind: str, t: TensorType) -> None:
    """Refuse a non-float operand."""
    if not is_float(t.dtype):
        fail(f"{kind} takes a float operand, got {t.dtype}")


def broadcast_shape(kind: str, types) -> tuple:
    """The numpy-broadcast shape of the operands."""
    try:
        return tuple(np.broadcast_shapes(*[t.shape for t in types]))
    except ValueError:
        fail(f"{kind}: shapes {' and '.join(str(list(t.shape)) for t in types)} do not broadcast")


def check_axis(kind: str, axis: int, rank: int) -> int:
    """`axis` itself, when it is a normalized (>= 0) axis of a rank-`rank` tensor."""
    if not 0 <= axis < rank:
        fail(f"{kind}: axis {axis} is out of range for rank {rank} (axes are normalized to >= 0)")
    return axis


def window_count(size, kernel, stride, pad_begin, pad_end, dilation, ceil_mode=False) -> int:
    """How many windows fit along one axis (ONNX Conv/Pool output size); <= 0 when none does."""
    span = dilation * (kernel - 1) + 1
    total = size + pad_begin + pad_end - span
    if total < 0:
        return -1
    out = -(-total // stride) if ceil_mode else total // stride
    if ceil_mode and out * stride >= size + pad_begin:   # last window must start inside the input
        out -= 1
    return out + 1


# --------------------------------------------------------------------------- kernels
def like(x: np.ndarray, value) -> np.generic:
    """An attribute as a scalar of x's dtype, so numpy keeps computing in that dtype."""
    return x.dtype.type(value)


def accumulator(*arrays: np.ndarray) -> type:
    """int64 when every operand is an integer (exact sums), float32 otherwise."""
    return np.int64 if all(a.dtype.kind in "iu" for a in arrays) else np.float32


def trunc_div(a: np.ndarray, b) -> np.ndarray:
    """Integer division rounding toward zero, as ONNX (C++) does, without floats."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    quotient = np.abs(a) // np.abs(b)
    return np.where((a < 0) != (b < 0), -quotient, quotient)


def windows(x, kernel_hw, strides, pads, dilations, out_hw, fill=0):
    """View (N, C, OH, OW, KH, KW) of the windows of NCHW `x` padded with `fill`.

    The bottom/right padding grows beyond `pads` when the output needs it (ceil-mode pooling),
    so the caller decides the output size and this only materializes it.
    """
    spans = [(kernel_hw[i] - 1) * dilations[i] + 1 for i in range(2)]
    ends = [max(pads[2 + i], (out_hw[i] - 1) * strides[i] + spans[i] - x.shape[2 + i] - pads[i])
            for i in range(2)]
    padded = np.pad(x, ((0, 0), (0, 0), (pads[0], ends[0]), (pads[1], ends[1])), constant_values=fill)
    view = sliding_window_view(padded, spans, axis=(2, 3))
    view = view[:, :, ::strides[0], ::strides[1], ::dilations[0], ::dilations[1]]
    return view[:, :, :out_hw[0], :out_hw[1]]


# --------------------------------------------------------------------------- lowering
def scalar_like(low, number, value):
    """A Relax scalar constant of `number` in the TVM dtype of IR value `value`, so the lowered
    arithmetic stays in the operand's dtype as the kernels' `like` keeps numpy in it (rank 0, so a
    rank-0 operand stays rank 0: `low.const` would make it [1])."""
    return low.relax.const(np.array(number, dtype=low.dtype(value.type.dtype)))


def channel_view(shape) -> tuple:
    """The shape (1, C, 1, ...) that broadcasts a per-channel vector along axis 1 of a `shape` tensor."""
    return (1, shape[1]) + (1,) * (len(shape) - 2)
