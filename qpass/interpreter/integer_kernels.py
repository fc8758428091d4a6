"""Exact numpy kernels of the integer ops (qpass.ir.int_ops); no float touches an integer result.

Products are summed in float64 BLAS where that is provably exact: every partial sum is an integer
below 2^53 (checked per call), so the result equals int64 arithmetic bit for bit, only faster.
"""

from __future__ import annotations

import numpy as np

from qpass.ir import fixed_point
from qpass.errors import InterpreterError
from qpass.interpreter import kernel
from qpass.interpreter.float_kernels import _windows
from qpass.ir.types import dtype_range

_EXACT = float(1 << 53)


def centered(value, array: np.ndarray) -> np.ndarray:
    """q - zero_point as int64, with the zero point broadcast per tensor/channel/group."""
    quant = value.type.quant
    _, zp = quant.broadcast(array.shape)
    return array.astype(np.int64) - zp.astype(np.int64)


def exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """int64 a @ b through float64 BLAS, refusing when a partial sum could exceed 2^53."""
    bound = float(np.abs(a).max(initial=0)) * float(np.abs(b).max(initial=0)) * a.shape[-1]
    if bound >= _EXACT:
        return np.matmul(a, b)
    return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64)


def _out_range(op, index=0) -> tuple[int, int, np.ndarray]:
    t = op.outputs[index].type
    if t.quant is None:
        raise InterpreterError(f"%{op.name} ({op.kind}): the result type {t} needs a quantization annotation "
                               "giving its zero point")
    lo, hi = dtype_range(t.dtype, t.quant.bits)
    if "clamp" in op.attrs:
        lo, hi = max(lo, op.attrs["clamp"][0]), min(hi, op.attrs["clamp"][1])
    return lo, hi, t.quant.zero_point.astype(np.int64)


def _per_axis(values, axis: int, rank: int) -> np.ndarray:
    array = np.asarray(values, np.int64)
    if array.size == 1:
        return array.reshape(())
    shape = [1] * rank
    shape[axis] = -1
    return array.reshape(shape)


def epilogue(op, acc: np.ndarray, axis: int) -> np.ndarray:
    """Apply the op's requantizing epilogue (if any) to an int64 accumulator."""
    if "multiplier" not in op.attrs:
        return acc
    axis = op.attrs.get("axis", axis) % acc.ndim
    lo, hi, zp = _out_range(op)
    return fixed_point.requantize(acc, _per_axis(op.attrs["multiplier"], axis, acc.ndim),
                                  _per_axis(op.attrs["shift"], axis, acc.ndim), zp, lo, hi)


@kernel("qconv2d")
def qconv2d(op, x, w, bias=None):
    """Integer convolution of (x - zx) and (w - zw); padding is the real zero (x's zero point)."""
    xc, wc = centered(op.inputs[0], x), centered(op.inputs[1], w)
    n, out_c, out_h, out_w = op.outputs[0].type.shape
    _, group_c, kh, kw = wc.shape
    groups = op.attrs["groups"]
    windows = _windows(xc, (kh, kw), op.attrs["strides"], op.attrs["pads"], op.attrs["dilations"], (out_h, out_w))
    columns = windows.reshape(n, groups, group_c, out_h, out_w, kh, kw)
    columns = columns.transpose(0, 1, 3, 4, 2, 5, 6).reshape(n, groups, out_h * out_w, group_c * kh * kw)
    weights = wc.reshape(groups, out_c // groups, group_c * kh * kw).transpose(0, 2, 1)
    acc = exact_matmul(columns, weights)                       # (n, groups, oh*ow, out_c/groups)
    acc = acc.transpose(0, 1, 3, 2).reshape(n, out_c, out_h, out_w)
    if bias is not None:
        acc = acc + bias.astype(np.int64).reshape(1, out_c, 1, 1)
    return epilogue(op, acc, axis=1)


@kernel("qdense")
def qdense(op, x, w, bias=None):
    """Integer (x - zx) @ (w - zw).T (+ bias)."""
    acc = exact_matmul(centered(op.inputs[0], x), centered(op.inputs[1], w).T)
    if bias is not None:
        acc = acc + bias.astype(np.int64)
    return epilogue(op, acc, axis=-1)


@kernel("requantize")
def requantize(op, x):
    """The fixed-point epilogue alone, on x minus its zero point (0 for a plain i32 accumulator)."""
    acc = centered(op.inputs[0], x) if op.inputs[0].type.quant is not None else x.astype(np.int64)
    return epilogue(op, acc, axis=op.attrs.get("axis", 1 if acc.ndim > 1 else 0))


@kernel("qadd")
def qadd(op, a, b):
    """(a-za)*ma + (b-zb)*mb with one shared shift and a single rounding."""
    lo, hi, zp = _out_range(op)
    ma, mb = op.attrs["multiplier"]
    s = np.int64(op.attrs["shift"][0])
    total = centered(op.inputs[0], a) * ma + centered(op.inputs[1], b) * mb
    return np.clip(((total + (np.int64(1) << (s - 1))) >> s) + zp, lo, hi)


@kernel("qmul")
def qmul(op, a, b):
    """(a-za)*(b-zb), requantized."""
    lo, hi, zp = _out_range(op)
    product = centered(op.inputs[0], a) * centered(op.inputs[1], b)
    return fixed_point.requantize(product, op.attrs["multiplier"][0], op.attrs["shift"][0], zp, lo, hi)


@kernel("qreduce_mean")
def qreduce_mean(op, x):
    """Sum of (x - zx) over the axes, times m * 2^-s (which includes 1/count)."""
    lo, hi, zp = _out_range(op)
    total = centered(op.inputs[0], x).sum(axis=tuple(op.attrs["axes"]), keepdims=op.attrs.get("keepdims", True))
    return fixed_point.requantize(total, op.attrs["multiplier"][0], op.attrs["shift"][0], zp, lo, hi)


@kernel("lut")
def lut(op, x):
    """table[x - qmin]."""
    t = op.inputs[0].type
    qmin = dtype_range(t.dtype, t.quant.bits if t.quant else None)[0]
    return np.asarray(op.attrs["table"], np.int64)[x.astype(np.int64) - qmin]
