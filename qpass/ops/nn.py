"""Neural-network ops: convolutions, dense and matmul, normalizations, softmax, pooling and
reduce_mean.

Semantics follow the ONNX operator of each family (Conv, ConvTranspose, Gemm with transB,
MatMul, BatchNormalization, LayerNormalization, Softmax, MaxPool, AveragePool, ReduceMean) with
attributes normalized by the frontend: explicit pads [top, left, bottom, right], positive axes,
full static shapes. Float kernels accumulate in float32 like ONNX Runtime; convolutions and
products also take integer operands, which accumulate exactly in int64 (the interpreter casts to
the declared result dtype).
"""

from __future__ import annotations

import numpy as np

from qpass.ir.opdef import OpDef, Trait, define_op
from qpass.ir.types import TensorType
from qpass.ops.common import (MOVES, NATIVE, NHWC, accumulator, channel_view, check_axis, fail, like, same_dtype,
                              scalar_like, trunc_div, window_count, windows)

T = Trait
CONV_ATTRS = ("strides", "pads", "dilations", "groups")


# --------------------------------------------------------------------------- convolutions
def conv_types(kind, types, attrs, transpose=False) -> list[TensorType]:
    """Result type of a (transposed) NCHW convolution; qconv2d shares it."""
    x, w = types[0], types[1]
    if x.rank != 4 or w.rank != 4:
        fail(f"{kind} takes NCHW input and 4-D weights, got ranks {x.rank} and {w.rank}")
    groups = attrs["groups"]
    strides, pads, dilations = attrs["strides"], attrs["pads"], attrs["dilations"]
    if len(strides) != 2 or len(dilations) != 2 or len(pads) != 4:
        fail(f"{kind} needs strides=[h,w], dilations=[h,w], pads=[top,left,bottom,right]")
    n, c = x.shape[:2]
    if transpose:
        if w.shape[0] != c:
            fail(f"{kind}: input has {c} channels but the weight expects {w.shape[0]}")
        out_c = w.shape[1] * groups
        outp = attrs.get("output_padding", [0, 0])
        hw = [strides[i] * (x.shape[2 + i] - 1) + outp[i] + dilations[i] * (w.shape[2 + i] - 1) + 1
              - pads[i] - pads[i + 2] for i in range(2)]
    else:
        if c % groups or w.shape[0] % groups or w.shape[1] * groups != c:
            fail(f"{kind}: input has {c} channels, weight {list(w.shape)} with groups={groups} expects "
                 f"{w.shape[1] * groups}")
        out_c = w.shape[0]
        hw = [window_count(x.shape[2 + i], w.shape[2 + i], strides[i], pads[i], pads[i + 2], dilations[i])
              for i in range(2)]
    if min(hw) <= 0:
        fail(f"{kind}: the output would be empty ({hw}); the kernel is larger than the padded input")
    if len(types) == 3 and types[2].shape != (out_c,):
        fail(f"{kind}: bias must have shape [{out_c}], has {list(types[2].shape)}")
    return [TensorType((n, out_c, *hw), x.dtype)]


def _conv2d(op, x, w, bias=None):
    """NCHW x OIHW convolution; float32 accumulation for floats, exact int64 for integers."""
    acc = accumulator(x, w)
    x, w = x.astype(acc, copy=False), w.astype(acc, copy=False)
    n, out_c, out_h, out_w = op.outputs[0].type.shape
    _, group_c, kh, kw = w.shape
    groups, channels = op.attrs["groups"], x.shape[1]
    view = windows(x, (kh, kw), op.attrs["strides"], op.attrs["pads"], op.attrs["dilations"], (out_h, out_w))
    if groups == channels:
        # Depthwise: one einsum over the window keeps all channels in one vectorized pass.
        multiplier = out_c // channels
        y = np.einsum("nchwij,cmij->ncmhw", view, w.reshape(channels, multiplier, kh, kw))
    else:
        # im2col per group, then one batched matmul whose result is already NCHW.
        columns = view.reshape(n, groups, group_c, out_h, out_w, kh, kw)
        columns = columns.transpose(0, 1, 2, 5, 6, 3, 4).reshape(n, groups, group_c * kh * kw, out_h * out_w)
        y = np.matmul(w.reshape(groups, out_c // groups, group_c * kh * kw), columns)
    y = y.reshape(n, out_c, out_h, out_w)
    if bias is not None:
        y = y + bias.astype(acc, copy=False).reshape(1, out_c, 1, 1)
    return y


def _lower_conv2d(low, op):
    r, a = low.relax.op, op.attrs
    y = r.nn.conv2d(low.get(op.inputs[0]), low.get(op.inputs[1]), a["strides"], a["pads"], a["dilations"],
                    a["groups"])
    if len(op.inputs) > 2:
        y = r.add(y, r.reshape(low.get(op.inputs[2]), (1, -1, 1, 1)))
    return y


define_op(OpDef("conv2d", infer=lambda t, a: conv_types("conv2d", t, a), inputs=(2, 3), attrs=CONV_ATTRS,
                traits={T.WEIGHTED, T.INTEGER_FORM, T.FUSES_ACTIVATION}, kernel=_conv2d, lower=_lower_conv2d,
                doc="2-D convolution, NCHW input, OIHW weight, optional bias [O]"))


def _conv_transpose2d(op, x, w, bias=None):
    """Transposed convolution with IOHW weights, by scatter-adding each kernel tap."""
    acc = accumulator(x, w)
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


def _lower_conv_transpose2d(low, op):
    """Relax nn.conv2d_transpose: NCHW data, IOHW weight (ONNX's layout), pads [top, left, bottom, right]."""
    r, a = low.relax.op, op.attrs
    y = r.nn.conv2d_transpose(low.get(op.inputs[0]), low.get(op.inputs[1]), a["strides"], a["pads"],
                              a.get("output_padding", [0, 0]), a["dilations"], a["groups"],
                              out_dtype=low.dtype(op.output.type.dtype))
    if len(op.inputs) > 2:
        y = r.add(y, r.reshape(low.get(op.inputs[2]), (1, -1, 1, 1)))
    return y


define_op(OpDef("conv_transpose2d", infer=lambda t, a: conv_types("conv_transpose2d", t, a, transpose=True),
                inputs=(2, 3), attrs=CONV_ATTRS, optional_attrs=("output_padding",), kernel=_conv_transpose2d,
                lower=_lower_conv_transpose2d,
                doc="transposed 2-D convolution, IOHW weight (ONNX ConvTranspose layout)"))


# --------------------------------------------------------------------------- products
def dense_types(types, attrs) -> list[TensorType]:
    """Result type of x @ w.T (+ bias); qdense shares it."""
    x, w = types[0], types[1]
    if w.rank != 2 or x.rank < 1 or x.shape[-1] != w.shape[1]:
        fail(f"dense: input {list(x.shape)} and weight {list(w.shape)} do not match; the weight is "
             "[out_features, in_features]")
    if len(types) == 3 and types[2].shape != (w.shape[0],):
        fail(f"dense: bias must have shape [{w.shape[0]}], has {list(types[2].shape)}")
    return [TensorType((*x.shape[:-1], w.shape[0]), x.dtype)]


def _dense(op, x, w, bias=None):
    """x @ w.T + bias with w [out, in]; exact int64 for integer operands."""
    acc = accumulator(x, w)
    y = np.matmul(x.astype(acc, copy=False), w.astype(acc, copy=False).T)
    if bias is not None:
        y = y + bias.astype(acc, copy=False)
    return y


def _lower_dense(low, op):
    r = low.relax.op
    y = r.matmul(low.get(op.inputs[0]), r.permute_dims(low.get(op.inputs[1])))
    return r.add(y, low.get(op.inputs[2])) if len(op.inputs) > 2 else y


define_op(OpDef("dense", infer=dense_types, inputs=(2, 3), traits={T.WEIGHTED, T.INTEGER_FORM, T.FUSES_ACTIVATION},
                kernel=_dense, lower=_lower_dense, doc="x @ weight.T + bias; weight [out, in]"))


def matmul_types(types, attrs) -> list[TensorType]:
    """Result type of numpy matmul semantics; qmatmul shares it."""
    a, b = types
    if a.rank == 0 or b.rank == 0:
        fail("matmul operands must have rank >= 1")
    sa = (1,) + a.shape if a.rank == 1 else a.shape
    sb = b.shape + (1,) if b.rank == 1 else b.shape
    if sa[-1] != sb[-2]:
        fail(f"matmul: shapes {list(a.shape)} and {list(b.shape)} do not multiply")
    try:
        batch = np.broadcast_shapes(sa[:-2], sb[:-2])
    except ValueError:
        fail(f"matmul: batch dimensions of {list(a.shape)} and {list(b.shape)} do not broadcast")
    shape = (*batch, *(sa[-2:-1] if a.rank > 1 else ()), *(sb[-1:] if b.rank > 1 else ()))
    return [TensorType(shape, same_dtype("matmul", types))]


def _matmul(op, a, b):
    """numpy matmul; exact int64 for integer operands."""
    acc = accumulator(a, b)
    return np.matmul(a.astype(acc, copy=False), b.astype(acc, copy=False))


define_op(OpDef("matmul", infer=matmul_types, inputs=2, traits={T.INTEGER_FORM}, kernel=_matmul,
                lower=lambda low, op: low.relax.op.matmul(low.get(op.inputs[0]), low.get(op.inputs[1])),
                doc="numpy matmul semantics"))


# --------------------------------------------------------------------------- normalization
def _batch_norm_types(types, attrs):
    x = types[0]
    for t in types[1:]:
        if t.shape != (x.shape[1],):
            fail(f"batch_norm: parameters must have shape [{x.shape[1]}], got {list(t.shape)}")
    return [x.without_quant()]


def _batch_norm(op, x, scale, bias, mean, var):
    """Inference batch norm over axis 1, folded to x * k + c like ONNX Runtime."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    k = (1 / np.sqrt(var + like(var, op.attrs["epsilon"]))) * scale
    return x * k.reshape(shape) + (bias - mean * k).reshape(shape)


def _lower_batch_norm(low, op):
    """The kernel's folded form x * k + (bias - mean * k), k = scale / sqrt(var + eps), in Relax arithmetic."""
    r = low.relax.op
    x, scale, bias, mean, var = (low.get(v) for v in op.inputs)
    root = r.sqrt(r.add(var, scalar_like(low, op.attrs["epsilon"], op.inputs[4])))
    k = r.multiply(r.divide(scalar_like(low, 1, op.inputs[4]), root), scale)
    view = channel_view(op.inputs[0].type.shape)
    return r.add(r.multiply(x, r.reshape(k, view)), r.reshape(r.subtract(bias, r.multiply(mean, k)), view))


define_op(OpDef("batch_norm", infer=_batch_norm_types, inputs=5, attrs=("epsilon",), kernel=_batch_norm,
                lower=_lower_batch_norm,
                doc="inference batch norm: (x - mean) / sqrt(var + eps) * scale + bias, over axis 1"))


def _layer_norm_types(types, attrs):
    x = types[0]
    axis = check_axis("layer_norm", attrs["axis"], x.rank)
    for t in types[1:]:
        try:
            np.broadcast_shapes(t.shape, x.shape[axis:])
        except ValueError:
            fail(f"layer_norm: parameter shape {list(t.shape)} does not fit {list(x.shape[axis:])}")
    return [x.without_quant()]


def _layer_norm(op, x, scale, bias=None):
    """Normalize over axes [axis, rank) with float32 statistics, then scale and shift."""
    axes = tuple(range(op.attrs["axis"], x.ndim))
    mean = np.mean(x, axis=axes, keepdims=True, dtype=np.float32)
    centered = x - mean
    var = np.mean(np.square(centered), axis=axes, keepdims=True)
    y = centered / np.sqrt(var + np.float32(op.attrs["epsilon"])) * scale
    return y if bias is None else y + bias


def _lower_layer_norm(low, op):
    """The kernel's two-pass statistics in Relax arithmetic (the parameters broadcast like numpy's,
    which Relax nn.layer_norm's exact-shape gamma/beta would not)."""
    r, x = low.relax.op, op.inputs[0]
    axes = list(range(op.attrs["axis"], x.type.rank))
    centered = low.emit(r.subtract(low.get(x), r.mean(low.get(x), axes, keepdims=True)))
    var = r.mean(r.multiply(centered, centered), axes, keepdims=True)
    y = r.multiply(r.divide(centered, r.sqrt(r.add(var, scalar_like(low, op.attrs["epsilon"], x)))),
                   low.get(op.inputs[1]))
    return r.add(y, low.get(op.inputs[2])) if len(op.inputs) > 2 else y


define_op(OpDef("layer_norm", infer=_layer_norm_types, inputs=(2, 3), attrs=("axis", "epsilon"), kernel=_layer_norm,
                lower=_lower_layer_norm,
                doc="normalize over axes [axis, rank), then * scale + bias"))


def _softmax_types(types, attrs):
    check_axis("softmax", attrs["axis"], types[0].rank)
    return [types[0].without_quant()]


def _softmax(op, x):
    """exp(x - max) / sum along `axis`; subtracting the max keeps exp from overflowing."""
    axis = op.attrs["axis"]
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


define_op(OpDef("softmax", infer=_softmax_types, attrs=("axis",), kernel=_softmax,
                lower=lambda low, op: low.relax.op.nn.softmax(low.get(op.inputs[0]), op.attrs["axis"])))


# --------------------------------------------------------------------------- pooling
def _pool_types(kind):
    def infer(types, attrs):
        x = types[0]
        if x.rank != 4:
            fail(f"{kind} takes NCHW input, got rank {x.rank}")
        k, s, p = attrs["kernel"], attrs["strides"], attrs["pads"]
        d = attrs.get("dilations", [1, 1])
        hw = [window_count(x.shape[2 + i], k[i], s[i], p[i], p[i + 2], d[i], attrs.get("ceil_mode", False))
              for i in range(2)]
        if min(hw) <= 0:
            fail(f"{kind}: the output would be empty ({hw})")
        return [TensorType((*x.shape[:2], *hw), x.dtype, x.quant if kind == "max_pool2d" else None)]
    return infer


def _max_pool2d(op, x):
    """Window maximum; padding never wins (it is -inf, or the dtype minimum for integers)."""
    fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    view = windows(x, op.attrs["kernel"], op.attrs["strides"], op.attrs["pads"], op.attrs.get("dilations", [1, 1]),
                   op.outputs[0].type.shape[2:], fill)
    return view.max(axis=(-2, -1))


def _lower_max_pool2d(low, op):
    """Relax max_pool2d in the operand's layout: an integer operand between qconv2d kernels stays NHWC."""
    x, a = op.inputs[0], op.attrs
    layout = NHWC if low.layout(x) == NHWC else NATIVE
    expr = low.relax.op.nn.max_pool2d(low.get(x, layout), a["kernel"], a["strides"], list(a["pads"]),
                                      a.get("dilations", [1, 1]), ceil_mode=bool(a.get("ceil_mode", False)),
                                      layout="NHWC" if layout == NHWC else "NCHW")
    low.set(op.output, low.emit(expr), layout)


define_op(OpDef("max_pool2d", infer=_pool_types("max_pool2d"), attrs=("kernel", "strides", "pads"),
                optional_attrs=("dilations", "ceil_mode"), traits=MOVES, kernel=_max_pool2d, lower=_lower_max_pool2d))


def _pool_counts(size, kernel_len, stride, pad_begin, pad_end, out, include_pad):
    """Elements each window counts along one axis; ceil-mode overhang is never counted."""
    start = np.arange(out) * stride - pad_begin
    end = start + kernel_len
    if include_pad:
        return np.minimum(end, size + pad_end) - start
    return np.minimum(end, size) - np.maximum(start, 0)


def _avg_pool2d(op, x):
    """Window mean; the divisor counts padding only when count_include_pad is set."""
    kernel_hw, strides, pads = op.attrs["kernel"], op.attrs["strides"], op.attrs["pads"]
    out_hw = op.outputs[0].type.shape[2:]
    include_pad = bool(op.attrs.get("count_include_pad", False))
    x = x.astype(np.float32, copy=False)
    sums = windows(x, kernel_hw, strides, pads, [1, 1], out_hw).sum(axis=(-2, -1))
    counts = [_pool_counts(x.shape[2 + i], kernel_hw[i], strides[i], pads[i], pads[2 + i], out_hw[i], include_pad)
              for i in range(2)]
    return sums / np.outer(*counts).astype(np.float32)


def _lower_avg_pool2d(low, op):
    a = op.attrs
    return low.relax.op.nn.avg_pool2d(low.get(op.inputs[0]), a["kernel"], a["strides"], list(a["pads"]),
                                      a.get("dilations", [1, 1]), ceil_mode=bool(a.get("ceil_mode", False)),
                                      count_include_pad=bool(a.get("count_include_pad", False)))


define_op(OpDef("avg_pool2d", infer=_pool_types("avg_pool2d"), attrs=("kernel", "strides", "pads"),
                optional_attrs=("ceil_mode", "count_include_pad"), kernel=_avg_pool2d, lower=_lower_avg_pool2d))


# --------------------------------------------------------------------------- reductions
def reduce_mean_types(types, attrs) -> list[TensorType]:
    """Result type of a mean over `axes`; qreduce_mean shares it."""
    x = types[0]
    axes = [check_axis("reduce_mean", a, x.rank) for a in attrs["axes"]]
    keep = attrs.get("keepdims", True)
    shape = [1 if i in axes else d for i, d in enumerate(x.shape)] if keep else \
        [d for i, d in enumerate(x.shape) if i not in axes]
    return [TensorType(shape, x.dtype)]


def _reduce_mean(op, x):
    """Mean over `axes` (float32 for floats; integer sum / count truncating, as ONNX)."""
    axes, keepdims = tuple(op.attrs["axes"]), bool(op.attrs.get("keepdims", True))
    if x.dtype.kind in "iu":
        count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
        return trunc_div(np.sum(x, axis=axes, keepdims=keepdims, dtype=np.int64), count)
    return np.mean(x, axis=axes, keepdims=keepdims, dtype=np.float32)


define_op(OpDef("reduce_mean", infer=reduce_mean_types, attrs=("axes",), optional_attrs=("keepdims",),
                traits={T.INTEGER_FORM}, kernel=_reduce_mean,
                lower=lambda low, op: low.relax.op.mean(low.get(op.inputs[0]), op.attrs["axes"],
                                                        bool(op.attrs.get("keepdims", True)))))
