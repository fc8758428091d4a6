"""Converters of ONNX compute ops: convolutions, matrix products, elementwise ops, normalization,
pooling and reductions. Attributes are normalized here (explicit pads, positive axes), so the IR
op never depends on the opset it came from.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Optional

import numpy as np

from qpass.frontend.onnx_node import Node, Operand, converter, dtype_of, shape_of
from qpass.ir import Value, numpy_dtype

_SAME = ("SAME_UPPER", "SAME_LOWER")


def _spatial(node: Node, x: Operand) -> tuple[int, ...]:
    """The H, W of an NCHW operand; qpass's convolutions and pools are 2-D (1-D ones are lifted to
    2-D by `one_d_as_2d`, others import as onnx_node)."""
    shape = shape_of(x)
    if len(shape) != 4:
        raise node.unsupported(f"only 1-D and 2-D {node.op_type} (a rank-3 NCW or rank-4 NCHW input) have qpass "
                               f"ops; this input has shape {list(shape)}")
    return shape[2:]


def one_d_as_2d(convert):
    """A 1-D Conv/ConvTranspose/pool (NCW input) as its 2-D form over [N, C, 1, W]: operands and
    window attributes get a leading unit height, the result loses it again. The convolution stays
    one qpass op, so it quantizes like a 2-D one."""
    def wrapped(node: Node):
        x = node.input(0)
        if len(shape_of(x)) != 3:
            return convert(node)
        lifted = copy.copy(node)
        unit = lambda name, value: [value] + node.ints(node.attr(name)) if node.attr(name) is not None else None
        attrs = dict(node.attrs)
        for name, value in (("strides", 1), ("dilations", 1), ("kernel_shape", 1), ("output_padding", 0)):
            if name in attrs:
                attrs[name] = unit(name, value)
        if "pads" in attrs:
            begin, end = node.ints(attrs["pads"])
            attrs["pads"] = [0, begin, 0, end]
        if "output_shape" in attrs:
            attrs["output_shape"] = [1] + node.ints(attrs["output_shape"])[-1:]
        lifted.attrs = attrs
        lifted.output_names = [name + ".2d" for name in node.output_names]
        inputs = list(node.inputs)
        n, c, w_ = shape_of(x)
        inputs[0] = lifted.emit("reshape", [x], {"shape": [n, c, 1, w_]}, suffix="nchw")
        if node.op_type in ("Conv", "ConvTranspose"):
            w = inputs[1]
            o, i, k = shape_of(w)
            inputs[1] = (node.named(np.expand_dims(w, 2), "weight2d") if isinstance(w, np.ndarray)
                         else lifted.emit("reshape", [w], {"shape": [o, i, 1, k]}, suffix="weight2d"))
        lifted.inputs = inputs
        y = convert(lifted)
        n, c, _, w_ = shape_of(y)
        return node.emit("reshape", [y], {"shape": [n, c, w_]})
    wrapped.__doc__ = convert.__doc__
    return wrapped


def _pads(node: Node, size, kernel, strides, dilations) -> list[int]:
    """Explicit [top, left, bottom, right] pads, resolving auto_pad like ONNX Runtime."""
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad == "NOTSET":
        pads = node.ints(node.attr("pads", [0, 0, 0, 0]))
        if len(pads) != 4:
            raise node.fail(f"pads {pads} should have 4 entries [top, left, bottom, right]")
        return pads
    if auto_pad == "VALID":
        return [0, 0, 0, 0]
    if auto_pad not in _SAME:
        raise node.fail(f"auto_pad {auto_pad!r} is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID")
    begins, ends = [], []
    for n, k, s, d in zip(size, kernel, strides, dilations):
        total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        small, large = total // 2, total - total // 2   # SAME_UPPER puts the odd pixel at the end
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins + ends


def _window_attrs(node: Node) -> tuple[list[int], list[int]]:
    return node.ints(node.attr("strides", [1, 1])), node.ints(node.attr("dilations", [1, 1]))


@converter("Conv")
@one_d_as_2d
def conv(node: Node):
    """ONNX Conv (2-D, any groups, auto_pad resolved) -> conv2d."""
    x, w, bias = node.input(0), node.input(1), node.input(2)
    strides, dilations = _window_attrs(node)
    pads = _pads(node, _spatial(node, x), shape_of(w)[2:], strides, dilations)
    attrs = dict(strides=strides, pads=pads, dilations=dilations, groups=int(node.attr("group", 1)))
    return node.emit("conv2d", [x, w] + ([bias] if bias is not None else []), attrs)


@converter("ConvTranspose")
@one_d_as_2d
def conv_transpose(node: Node):
    """ONNX ConvTranspose (2-D; output_shape and auto_pad become explicit pads) -> conv_transpose2d."""
    x, w, bias = node.input(0), node.input(1), node.input(2)
    size, kernel = _spatial(node, x), shape_of(w)[2:]
    strides, dilations = _window_attrs(node)
    output_padding = node.ints(node.attr("output_padding", [0, 0]))
    auto_pad, output_shape = node.attr("auto_pad", "NOTSET"), node.attr("output_shape")
    if output_shape is not None or auto_pad in _SAME:
        target = node.ints(output_shape)[-2:] if output_shape is not None else [n * s for n, s in zip(size, strides)]
        begins, ends = [], []
        for n, k, s, d, extra, out in zip(size, kernel, strides, dilations, output_padding, target):
            total = s * (n - 1) + extra + (k - 1) * d + 1 - out
            if total < 0:
                raise node.fail(f"output_shape {list(target)} is larger than the transposed convolution can "
                                "produce; give the extra rows/columns with output_padding")
            # As the ONNX spec (and ONNX Runtime): the odd pixel goes to the end only for SAME_UPPER.
            begins.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
            ends.append(total - begins[-1])
        pads = begins + ends
    else:
        pads = _pads(node, size, kernel, strides, dilations)
    attrs = dict(strides=strides, pads=pads, dilations=dilations, groups=int(node.attr("group", 1)),
                 output_padding=output_padding)
    return node.emit("conv_transpose2d", [x, w] + ([bias] if bias is not None else []), attrs)


def quantized_weight(node: Node, b: Operand, transposed: bool) -> Optional[Value]:
    """For B = dequantize(integer constant) (a QDQ model's weight): a dequantized [out, in] weight
    for dense, transposing the integer constant and its quantization axis at import time."""
    graph = node._importer.graph
    producer = graph.producer(b) if isinstance(b, Value) else None
    if producer is None or producer.kind != "dequantize" or not producer.inputs[0].is_constant \
            or b.type.rank != 2:
        return None
    if transposed:
        return b
    q = producer.inputs[0]
    quant = q.type.quant
    if quant.group_size is not None:
        return None
    if quant.axis is not None:
        quant = dataclasses.replace(quant, axis=1 - quant.axis % 2)
    weight = graph.add_constant(q.data.T, q.name + ".T", dtype=q.type.dtype, quant=quant)
    return node.emit("dequantize", [weight], suffix="weight", fold=False)


@converter("Gemm")
def gemm(node: Node):
    """alpha * A' @ B' + beta * C: a dense op with folded weight and bias when B is a constant."""
    a, b, c = node.input(0), node.input(1), node.input(2)
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    if node.attr("transA", 0):
        a = node.emit("transpose", [a], {"perm": [1, 0]}, suffix="transpose_a")
    qweight = quantized_weight(node, b, bool(node.attr("transB", 0))) if alpha == 1.0 else None
    if isinstance(b, np.ndarray) or qweight is not None:
        weight = qweight if qweight is not None else b if node.attr("transB", 0) else node.named(b.T, "weight")
        if alpha != 1.0:
            weight = node.named(weight * np.asarray(alpha, weight.dtype), "weight")
        inputs = [a, weight]
        out_features = shape_of(weight)[0]
        if isinstance(c, Value) and c.type.shape == (out_features,) and qweight is not None:
            inputs.append(c)                                   # a QDQ model's dequantized int32 bias
            c = None
        elif isinstance(c, np.ndarray) and c.size in (1, out_features) and c.shape[:-1] in ((), (1,)):
            # C broadcasts along the batch: it is the dense bias.
            bias = c if c.shape == (out_features,) else node.named(
                np.broadcast_to(c.reshape(-1), (out_features,)), "bias")
            if beta != 1.0:
                bias = node.named(bias * np.asarray(beta, bias.dtype), "bias")
            inputs.append(bias)
            c = None
        y = node.emit("dense", inputs, suffix="dense" if c is not None else None)
    else:
        if node.attr("transB", 0):
            b = node.emit("transpose", [b], {"perm": [1, 0]}, suffix="transpose_b")
        y = node.emit("matmul", [a, b], suffix="matmul" if alpha != 1.0 or c is not None else None)
        if alpha != 1.0:
            y = node.emit("mul", [y, np.asarray(alpha, numpy_dtype(dtype_of(y)))],
                          suffix="alpha" if c is not None else None)
    if c is None:
        return y
    if beta != 1.0:
        c = node.emit("mul", [c, np.asarray(beta, numpy_dtype(dtype_of(c)))], suffix="beta")
    return node.emit("add", _same_dtype(node, [y, c]))


@converter("MatMul")
def matmul(node: Node):
    """ONNX MatMul -> dense when B is a constant matrix (weight = B.T), else matmul."""
    a, b = node.input(0), node.input(1)
    if isinstance(a, Value) and isinstance(b, np.ndarray) and b.ndim == 2:
        return node.emit("dense", [a, node.named(b.T, "weight")])
    qweight = quantized_weight(node, b, transposed=False)
    if isinstance(a, Value) and qweight is not None:
        return node.emit("dense", [a, qweight])
    return node.emit("matmul", [a, b])


def _same_dtype(node: Node, operands: list[Operand]) -> list[Operand]:
    """Operands in one dtype: that of the first run-time value (ONNX Pow may mix dtypes)."""
    runtime = [x for x in operands if isinstance(x, Value)]
    dtype = runtime[0].type.dtype if runtime else dtype_of(operands[0])
    result = []
    for x in operands:
        if isinstance(x, np.ndarray):
            x = node.constant(x, dtype=dtype) if runtime else x.astype(numpy_dtype(dtype), copy=False)
        elif x.type.dtype != dtype:
            x = node.emit("cast", [x], {"to": dtype}, suffix="cast")
        result.append(x)
    return result


@converter("Add", "Sub", "Mul", "Div", "Pow")
def binary(node: Node):
    """ONNX Add, Sub, Mul, Div, Pow -> the elementwise op; constants take the run-time operand's dtype."""
    return node.emit(node.op_type.lower(), _same_dtype(node, [node.input(0), node.input(1)]))


_UNARY = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Erf": "erf", "Sqrt": "sqrt", "Exp": "exp",
          "HardSwish": "hard_swish"}


@converter(*_UNARY)
def unary(node: Node):
    """ONNX elementwise ops without attributes -> the IR op of the same meaning."""
    return node.emit(_UNARY[node.op_type], [node.input(0)])


@converter("Identity")
def identity(node: Node):
    """ONNX Identity -> its operand (a graph output it feeds takes the output's name, see Importer)."""
    return node.input(0)


@converter("LeakyRelu")
def leaky_relu(node: Node):
    """ONNX LeakyRelu -> leaky_relu{alpha}."""
    return node.emit("leaky_relu", [node.input(0)], {"alpha": float(node.attr("alpha", 0.01))})


@converter("HardSigmoid")
def hard_sigmoid(node: Node):
    """ONNX HardSigmoid -> hard_sigmoid{alpha, beta}."""
    attrs = {"alpha": float(node.attr("alpha", 0.2)), "beta": float(node.attr("beta", 0.5))}
    return node.emit("hard_sigmoid", [node.input(0)], attrs)


@converter("Gelu")
def gelu(node: Node):
    """ONNX Gelu (opset 20) -> gelu{approximate}."""
    return node.emit("gelu", [node.input(0)], {"approximate": node.attr("approximate", "none")})


@converter("Clip")
def clip(node: Node):
    """ONNX Clip -> clip{min, max}: bounds from attributes (before opset 11) or constant inputs."""
    if node.opset < 11:
        bounds = {"min": node.attr("min"), "max": node.attr("max")}
    else:
        bounds = {"min": node.const_input(1, "min"), "max": node.const_input(2, "max")}
    attrs = {key: float(np.asarray(v).reshape(())) for key, v in bounds.items() if v is not None}
    return node.emit("clip", [node.input(0)], attrs)


@converter("Softmax")
def softmax(node: Node):
    """ONNX Softmax -> softmax; before opset 13 with a reshape to 2-D and back when needed."""
    x = node.input(0)
    shape = shape_of(x)
    if node.opset >= 13:
        return node.emit("softmax", [x], {"axis": node.axis(node.attr("axis", -1), len(shape))})
    # Before opset 13 Softmax flattens the input to 2-D at `axis` and normalizes each row.
    axis = node.axis(node.attr("axis", 1), len(shape))
    if axis == len(shape) - 1:
        return node.emit("softmax", [x], {"axis": axis})
    rows = int(np.prod(shape[:axis], dtype=np.int64))
    flat = node.emit("reshape", [x], {"shape": [rows, int(np.prod(shape[axis:], dtype=np.int64))]},
                     suffix="flat")
    y = node.emit("softmax", [flat], {"axis": 1}, suffix="softmax")
    return node.emit("reshape", [y], {"shape": list(shape)})


@converter("LayerNormalization")
def layer_norm(node: Node):
    """ONNX LayerNormalization -> layer_norm{axis, epsilon} (with its Mean / InvStdDev outputs read:
    the ONNX function body)."""
    if len([name for name in node.proto.output if name]) > 1:
        raise node.unsupported("its Mean / InvStdDev outputs are read; layer_norm computes only Y")
    x = node.input(0)
    inputs = [x, node.input(1)] + ([node.input(2)] if node.input(2) is not None else [])
    attrs = {"axis": node.axis(node.attr("axis", -1), len(shape_of(x))),
             "epsilon": float(node.attr("epsilon", 1e-5))}
    return node.emit("layer_norm", inputs, attrs)


@converter("BatchNormalization")
def batch_norm(node: Node):
    """ONNX BatchNormalization (inference) -> batch_norm; a pass folds it into the convolution."""
    if node.attr("training_mode", 0):
        raise node.unsupported("training_mode=1 computes batch statistics, which qpass's batch_norm does not")
    return node.emit("batch_norm", node.inputs[:5], {"epsilon": float(node.attr("epsilon", 1e-5))})


@converter("MaxPool", "AveragePool")
@one_d_as_2d
def pool(node: Node):
    """ONNX MaxPool / AveragePool (2-D) -> max_pool2d / avg_pool2d with explicit pads."""
    x = node.input(0)
    kernel = node.ints(node.attr("kernel_shape"))
    strides, dilations = _window_attrs(node)
    pads = _pads(node, _spatial(node, x), kernel, strides, dilations)
    attrs = {"kernel": kernel, "strides": strides, "pads": pads, "ceil_mode": bool(node.attr("ceil_mode", 0))}
    if node.op_type == "MaxPool":
        if node.attr("storage_order", 0):
            raise node.unsupported("storage_order=1 (column-major indices) has no qpass op")
        return node.emit("max_pool2d", [x], dict(attrs, dilations=dilations))
    if dilations != [1, 1]:
        raise node.unsupported(f"dilated average pooling (dilations={dilations}) has no qpass op")
    return node.emit("avg_pool2d", [x], dict(attrs, count_include_pad=bool(node.attr("count_include_pad", 0))))


@converter("GlobalAveragePool")
def global_average_pool(node: Node):
    """ONNX GlobalAveragePool -> reduce_mean over the spatial axes, keeping them."""
    x = node.input(0)
    return node.emit("reduce_mean", [x], {"axes": list(range(2, len(shape_of(x)))), "keepdims": True})


@converter("ReduceMean")
def reduce_mean(node: Node):
    """ONNX ReduceMean -> reduce_mean{axes, keepdims}; axes an attribute before opset 18."""
    x = node.input(0)
    rank = len(shape_of(x))
    axes = node.const_input(1, "axes") if node.opset >= 18 else node.attr("axes")
    if axes is None or len(axes) == 0:
        if node.attr("noop_with_empty_axes", 0):
            return node.emit("identity", [x])
        axes = range(rank)
    axes = sorted({node.axis(a, rank) for a in node.ints(axes)})
    return node.emit("reduce_mean", [x], {"axes": axes, "keepdims": bool(node.attr("keepdims", 1))})
