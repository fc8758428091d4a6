"""Numpy kernels for the ops of `qpass.ir.ops`, following the ONNX operator of each family.

Float kernels compute in float32 (or the operand's float dtype for elementwise ops) so that
results match ONNX Runtime to float rounding. Convolutions and products also take integer
operands; those accumulate exactly in int64 and `run_op` casts to the declared result dtype.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import special

from qpass.errors import InterpreterError
from qpass.interpreter import kernel
from qpass.ir.types import dtype_range, numpy_dtype


def _accumulator(*arrays: np.ndarray) -> type:
    """int64 when every operand is an integer (exact sums), float32 otherwise."""
    return np.int64 if all(a.dtype.kind in "iu" for a in arrays) else np.float32


def _like(x: np.ndarray, value) -> np.generic:
    """An attribute as a scalar of x's dtype, so numpy keeps computing in that dtype."""
    return x.dtype.type(value)


def _trunc_div(a: np.ndarray, b) -> np.ndarray:
    """Integer division rounding toward zero, as ONNX (C++) does, without floats."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    quotient = np.abs(a) // np.abs(b)
    return np.where((a < 0) != (b < 0), -quotient, quotient)


# --------------------------------------------------------------------------- elementwise
@kernel("relu")
def relu(op, x):
    """max(x, 0)."""
    return np.maximum(x, _like(x, 0))


# Plain unary functions: the kernel is the numpy/scipy function itself (expit cannot overflow).
_UNARY = {"sigmoid": special.expit, "tanh": np.tanh, "erf": special.erf, "sqrt": np.sqrt, "exp": np.exp}
for _kind, _fn in _UNARY.items():
    kernel(_kind)(lambda op, x, fn=_fn: fn(x))


@kernel("hard_swish")
def hard_swish(op, x):
    """x * hard_sigmoid(x) with ONNX's alpha=1/6, beta=0.5."""
    return x * np.clip(x * _like(x, 1 / 6) + _like(x, 0.5), 0, 1)


@kernel("hard_sigmoid")
def hard_sigmoid(op, x):
    """max(0, min(1, alpha * x + beta))."""
    return np.clip(x * _like(x, op.attrs["alpha"]) + _like(x, op.attrs["beta"]), 0, 1)


@kernel("leaky_relu")
def leaky_relu(op, x):
    """x for x >= 0, alpha * x below."""
    return np.where(x >= 0, x, x * _like(x, op.attrs["alpha"]))


@kernel("gelu")
def gelu(op, x):
    """0.5 * x * (1 + erf(x / sqrt(2))), or its tanh approximation when approximate='tanh'."""
    approximate = op.attrs.get("approximate", "none")
    if approximate == "tanh":
        inner = _like(x, np.sqrt(2 / np.pi)) * (x + _like(x, 0.044715) * x * x * x)
        return _like(x, 0.5) * x * (1 + np.tanh(inner))
    if approximate != "none":
        raise InterpreterError(f"gelu: approximate={approximate!r} is not one of 'none', 'tanh'")
    return _like(x, 0.5) * x * (1 + special.erf(x * _like(x, np.sqrt(0.5))))


@kernel("clip")
def clip(op, x):
    """Clamp to [min, max]; a missing bound is open."""
    if "min" in op.attrs:
        x = np.maximum(x, _like(x, op.attrs["min"]))
    if "max" in op.attrs:
        x = np.minimum(x, _like(x, op.attrs["max"]))
    return x


@kernel("identity")
def identity(op, x):
    """The operand itself."""
    return x


@kernel("add")
def add(op, a, b):
    """a + b with broadcasting (integers wrap like ONNX)."""
    return np.add(a, b)


@kernel("sub")
def sub(op, a, b):
    """a - b with broadcasting."""
    return np.subtract(a, b)


@kernel("mul")
def mul(op, a, b):
    """a * b with broadcasting."""
    return np.multiply(a, b)


@kernel("div")
def div(op, a, b):
    """a / b; integer division truncates toward zero like ONNX Div."""
    if a.dtype.kind in "iu":
        return _trunc_div(a, b)
    return np.divide(a, b)


@kernel("pow")
def power(op, a, b):
    """a ** b with broadcasting."""
    return np.power(a, b)


@kernel("cast")
def cast(op, x):
    """Convert to IR dtype `to` (float -> int truncates toward zero)."""
    return x.astype(numpy_dtype(op.attrs["to"]))


# --------------------------------------------------------------------------- convolutions
def _windows(x, kernel_hw, strides, pads, dilations, out_hw, fill=0):
    """View (N, C, OH, OW, KH, KW) of the windows of NCHW `x` padded with `fill`.

    The bottom/right padding grows beyond `pads` when the output needs it (ceil-mode pooling),
    so the caller decides the output size and this only materializes it.
    """
    spans = [(kernel_hw[i] - 1) * dilations[i] + 1 for i in range(2)]
    ends = [max(pads[2 + i], (out_hw[i] - 1) * strides[i] + spans[i] - x.shape[2 + i] - pads[i])
            for i in range(2)]
    padded = np.pad(x, ((0, 0), (0, 0), (pads[0], ends[0]), (pads[1], ends[1])), constant_values=fill)
    windows = sliding_window_view(padded, spans, axis=(2, 3))
    windows = windows[:, :, ::strides[0], ::strides[1], ::dilations[0], ::dilations[1]]
    return windows[:, :, :out_hw[0], :out_hw[1]]


@kernel("conv2d")
def conv2d(op, x, w, bias=None):
    """NCHW x OIHW convolution; float32 accumulation for floats, exact int64 for integers."""
    acc = _accumulator(x, w)
    x, w = x.astype(acc, copy=False), w.astype(acc, copy=False)
    n, out_c, out_h, out_w = op.outputs[0].type.shape
    _, group_c, kh, kw = w.shape
    groups, channels = op.attrs["groups"], x.shape[1]
    windows = _windows(x, (kh, kw), op.attrs["strides"], op.attrs["pads"], op.attrs["dilations"],
                       (out_h, out_w))
    if groups == channels:
        # Depthwise: one einsum over the window keeps all channels in one vectorized pass.
        multiplier = out_c // channels
        y = np.einsum("nchwij,cmij->ncmhw", windows, w.reshape(channels, multiplier, kh, kw))
    else:
        # im2col per group, then one batched matmul whose result is already NCHW.
        columns = windows.reshape(n, groups, group_c, out_h, out_w, kh, kw)
        columns = columns.transpose(0, 1, 2, 5, 6, 3, 4).reshape(n, groups, group_c * kh * kw, out_h * out_w)
        y = np.matmul(w.reshape(groups, out_c // groups, group_c * kh * kw), columns)
    y = y.reshape(n, out_c, out_h, out_w)
    if bias is not None:
        y = y + bias.astype(acc, copy=False).reshape(1, out_c, 1, 1)
    return y


@kernel("conv_transpose2d")
def conv_transpose2d(op, x, w, bias=None):
    """Transposed convolution with IOHW weights, by scatter-adding each kernel tap."""
    acc = _accumulator(x, w)
    x, w = x.astype(acc, copy=False), w.astype(acc, copy=False)
    n, channels, h, wd = x.shape
    _, group_out, kh, kw = w.shape
    groups = op.attrs["groups"]
    (sh, sw), (dh, dw), pads = op.attrs["strides"], op.attrs["dilations"], op.attrs["pads"]
    _, out_c, out_h, out_w = op.outputs[0].type.shape
    # Every input pixel times every tap, per group: (N, G, Og*KH*KW, H*W) in one matmul.
    weights = w.reshape(groups, channels // groups, group_out * kh * kw).transpose(0, 2, 1)
    taps = np.matmul(weights, x.reshape(n, groups, channels // groups, h * wd))
    taps = taps.reshape(n, out_c, kh, kw, h, wd)
    full = np.zeros((n, out_c, pads[0] + out_h + pads[2], pads[1] + out_w + pads[3]), acc)
    for i in range(kh):
        for j in range(kw):
            full[:, :, i * dh:i * dh + sh * (h - 1) + 1:sh, j * dw:j * dw + sw * (wd - 1) + 1:sw] += taps[:, :, i, j]
    y = full[:, :, pads[0]:pads[0] + out_h, pads[1]:pads[1] + out_w]
    if bias is not None:
        y = y + bias.astype(acc, copy=False).reshape(1, out_c, 1, 1)
    return y


@kernel("dense")
def dense(op, x, w, bias=None):
    """x @ w.T + bias with w [out, in]; exact int64 for integer operands."""
    acc = _accumulator(x, w)
    y = np.matmul(x.astype(acc, copy=False), w.astype(acc, copy=False).T)
    if bias is not None:
        y = y + bias.astype(acc, copy=False)
    return y


@kernel("matmul")
def matmul(op, a, b):
    """numpy matmul; exact int64 for integer operands."""
    acc = _accumulator(a, b)
    return np.matmul(a.astype(acc, copy=False), b.astype(acc, copy=False))


# --------------------------------------------------------------------------- normalization
@kernel("batch_norm")
def batch_norm(op, x, scale, bias, mean, var):
    """Inference batch norm over axis 1, folded to x * k + c like ONNX Runtime."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    k = (1 / np.sqrt(var + _like(var, op.attrs["epsilon"]))) * scale
    return x * k.reshape(shape) + (bias - mean * k).reshape(shape)


@kernel("layer_norm")
def layer_norm(op, x, scale, bias=None):
    """Normalize over axes [axis, rank) with float32 statistics, then scale and shift."""
    axes = tuple(range(op.attrs["axis"], x.ndim))
    mean = np.mean(x, axis=axes, keepdims=True, dtype=np.float32)
    centered = x - mean
    var = np.mean(np.square(centered), axis=axes, keepdims=True)
    y = centered / np.sqrt(var + np.float32(op.attrs["epsilon"])) * scale
    return y if bias is None else y + bias


@kernel("softmax")
def softmax(op, x):
    """exp(x - max) / sum along `axis`; subtracting the max keeps exp from overflowing."""
    axis = op.attrs["axis"]
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


# --------------------------------------------------------------------------- pooling / reductions
@kernel("max_pool2d")
def max_pool2d(op, x):
    """Window maximum; padding never wins (it is -inf, or the dtype minimum for integers)."""
    fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    windows = _windows(x, op.attrs["kernel"], op.attrs["strides"], op.attrs["pads"],
                       op.attrs.get("dilations", [1, 1]), op.outputs[0].type.shape[2:], fill)
    return windows.max(axis=(-2, -1))


def _pool_counts(size, kernel_len, stride, pad_begin, pad_end, out, include_pad):
    """Elements each window counts along one axis; ceil-mode overhang is never counted."""
    start = np.arange(out) * stride - pad_begin
    end = start + kernel_len
    if include_pad:
        return np.minimum(end, size + pad_end) - start
    return np.minimum(end, size) - np.maximum(start, 0)


@kernel("avg_pool2d")
def avg_pool2d(op, x):
    """Window mean; the divisor counts padding only when count_include_pad is set."""
    kernel_hw, strides, pads = op.attrs["kernel"], op.attrs["strides"], op.attrs["pads"]
    out_hw = op.outputs[0].type.shape[2:]
    include_pad = bool(op.attrs.get("count_include_pad", False))
    x = x.astype(np.float32, copy=False)
    sums = _windows(x, kernel_hw, strides, pads, [1, 1], out_hw).sum(axis=(-2, -1))
    counts = [_pool_counts(x.shape[2 + i], kernel_hw[i], strides[i], pads[i], pads[2 + i], out_hw[i],
                           include_pad) for i in range(2)]
    return sums / np.outer(*counts).astype(np.float32)


@kernel("reduce_mean")
def reduce_mean(op, x):
    """Mean over `axes` (float32 for floats; integer sum / count truncating, as ONNX)."""
    axes, keepdims = tuple(op.attrs["axes"]), bool(op.attrs.get("keepdims", True))
    if x.dtype.kind in "iu":
        count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
        return _trunc_div(np.sum(x, axis=axes, keepdims=keepdims, dtype=np.int64), count)
    return np.mean(x, axis=axes, keepdims=keepdims, dtype=np.float32)


# --------------------------------------------------------------------------- data movement
@kernel("reshape")
def reshape(op, x):
    """Reshape to the explicit `shape`."""
    return x.reshape(op.attrs["shape"])


@kernel("transpose")
def transpose(op, x):
    """Permute axes by `perm`."""
    return np.transpose(x, op.attrs["perm"])


@kernel("concat")
def concat(op, *xs):
    """Join along `axis`."""
    return np.concatenate(xs, axis=op.attrs["axis"])


@kernel("split")
def split(op, x):
    """Cut along `axis` into pieces of `sizes`."""
    return tuple(np.split(x, np.cumsum(op.attrs["sizes"])[:-1], axis=op.attrs["axis"]))


@kernel("slice")
def slice_(op, x):
    """Python slicing start:end:step on each listed axis."""
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(op.attrs["starts"], op.attrs["ends"], op.attrs["axes"], op.attrs["steps"]):
        index[axis] = slice(start, end, step)
    return x[tuple(index)]


@kernel("gather")
def gather(op, x, indices):
    """np.take along `axis` (negative indices count from the end, as in ONNX)."""
    return np.take(x, indices, axis=op.attrs["axis"])


@kernel("pad")
def pad(op, x):
    """Pad by `pads` (all begins, then all ends) in mode constant, reflect or edge.

    Negative pads crop, as ONNX Pad allows.
    """
    pads, rank = op.attrs["pads"], x.ndim
    begins, ends = pads[:rank], pads[rank:]
    x = x[tuple(slice(max(-b, 0), x.shape[i] - max(-e, 0)) for i, (b, e) in enumerate(zip(begins, ends)))]
    widths = [(max(b, 0), max(e, 0)) for b, e in zip(begins, ends)]
    mode = op.attrs.get("mode", "constant")
    if mode == "constant":
        return np.pad(x, widths, constant_values=_like(x, op.attrs.get("value", 0)))
    return np.pad(x, widths, mode=mode)


# --------------------------------------------------------------------------- resize
def _source_coordinates(out_len, in_len, scale, mode):
    """Where each output index samples the input, computed in float32 as ONNX Runtime does."""
    x = np.arange(out_len, dtype=np.float32)
    if mode == "half_pixel":
        return (x + np.float32(0.5)) / scale - np.float32(0.5)
    if mode == "pytorch_half_pixel":
        return (x + np.float32(0.5)) / scale - np.float32(0.5) if out_len > 1 else np.zeros_like(x)
    if mode == "align_corners":
        return x * np.float32(in_len - 1) / np.float32(out_len - 1) if out_len > 1 else np.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    raise InterpreterError(f"resize: coordinate_transformation_mode {mode!r} is not supported; use "
                           "half_pixel, pytorch_half_pixel, align_corners or asymmetric")


def _nearest_indices(coords, in_len, nearest_mode):
    floor = np.floor(coords)
    frac = coords - floor   # exact in float32, so ties are recognized exactly
    if nearest_mode == "round_prefer_floor":
        index = floor + (frac > 0.5)
    elif nearest_mode == "round_prefer_ceil":
        index = floor + (frac >= 0.5)
    elif nearest_mode == "floor":
        index = floor
    elif nearest_mode == "ceil":
        index = np.ceil(coords)
    else:
        raise InterpreterError(f"resize: nearest_mode {nearest_mode!r} is not supported; use "
                               "round_prefer_floor, round_prefer_ceil, floor or ceil")
    return np.clip(index, 0, in_len - 1).astype(np.int64)


def _linear_along(x, axis, coords):
    """1-D linear interpolation along `axis`, coordinates clamped to the input like ORT."""
    in_len = x.shape[axis]
    coords = np.clip(coords, np.float32(0), np.float32(in_len - 1))
    low = np.minimum(coords.astype(np.int64), in_len - 1)
    high = np.minimum(low + 1, in_len - 1)
    weight_low = np.abs(coords - high.astype(np.float32))
    weight_high = np.abs(coords - low.astype(np.float32))
    edge = low == high
    weight_low[edge] = weight_high[edge] = np.float32(0.5)
    view = [1] * x.ndim
    view[axis] = -1
    return (np.take(x, low, axis=axis) * weight_low.reshape(view)
            + np.take(x, high, axis=axis) * weight_high.reshape(view))


@kernel("resize")
def resize(op, x):
    """Nearest or (separable multi-)linear resize to `sizes`, with ONNX coordinate transforms.

    The scale of each axis is `scales[i]` when given, else out/in in float32 (what ORT derives
    from sizes); axes whose size and scale are both unchanged are left alone.
    """
    sizes, mode = op.attrs["sizes"], op.attrs["mode"]
    transform = op.attrs.get("coordinate_transformation_mode", "half_pixel")
    nearest_mode = op.attrs.get("nearest_mode", "round_prefer_floor")
    scales = op.attrs.get("scales") or [np.float32(o) / np.float32(i) for o, i in zip(sizes, x.shape)]
    if mode == "linear":
        x = x.astype(np.float32, copy=False)
    for axis, (out_len, in_len, scale) in enumerate(zip(sizes, x.shape, scales)):
        scale = np.float32(scale)
        if out_len == in_len and scale == 1:
            continue
        coords = _source_coordinates(out_len, in_len, scale, transform)
        if mode == "nearest":
            x = np.take(x, _nearest_indices(coords, in_len, nearest_mode), axis=axis)
        else:
            x = _linear_along(x, axis, coords)
    return x


# --------------------------------------------------------------------------- quantization
@kernel("quantize")
def quantize(op, x):
    """q = clamp(round_half_even(x / scale) + zp, qmin, qmax), in float32 like ONNX QuantizeLinear."""
    result = op.outputs[0].type
    if result.quant is None:
        raise InterpreterError(f"quantize %{op.name}: its result type carries no quantization annotation, "
                               "so there is no scale to divide by")
    scale, zero_point = result.quant.broadcast(x.shape)
    low, high = dtype_range(result.dtype, result.quant.bits)
    q = np.rint(x.astype(np.float32, copy=False) / scale) + zero_point.astype(np.float32)
    return np.clip(q, low, high).astype(result.numpy_dtype)


@kernel("dequantize")
def dequantize(op, q):
    """scale * (q - zp) in float32, with scale and zero point from the operand's type."""
    quant = op.inputs[0].type.quant
    if quant is None:
        raise InterpreterError(f"dequantize %{op.name}: its operand's type carries no quantization "
                               "annotation, so there is no scale to apply")
    scale, zero_point = quant.broadcast(q.shape)
    return (q.astype(np.int32) - zero_point).astype(np.float32) * scale
