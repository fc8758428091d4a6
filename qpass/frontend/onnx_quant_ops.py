"""Converters of quantized models: QuantizeLinear and DequantizeLinear (QDQ models), and the ops
ONNX Runtime's quantizer writes (QLinearConv, QLinearMatMul, com.microsoft QLinearAdd and friends,
DynamicQuantizeLinear, ConvInteger, MatMulInteger).

The scale and zero point of Q/DQ move into the IR type: a `quantize` result and a quantized weight
constant carry `QuantParams`, and `dequantize` reads them from its operand. They are never
folded, so a later pass sees the Q/DQ structure (fold-fake-quant turns it into integer ops). The
other ops are expanded into the standard ONNX nodes that define them (see `expand`), so each
reuses the converters of those nodes and needs no IR op of its own.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx

from qpass.frontend.onnx_node import (CONVERTERS, ONNX_TO_IR, Node, Operand, converter, dtype_of,
                                      element_type_name, shape_of)
from qpass.ir import QuantParams, TensorType, Value, is_float

# numpy dtype name of a zero point -> IR dtype (int4 arrive as ml_dtypes int4/uint4)
_ZERO_POINT_DTYPES = {"int8": "i8", "uint8": "u8", "int16": "i16", "int32": "i32", "int4": "i4", "uint4": "u4"}
_OUTPUT_DTYPES = {**{k: v for k, v in ONNX_TO_IR.items() if v in _ZERO_POINT_DTYPES.values()},
                  onnx.TensorProto.INT4: "i4", onnx.TensorProto.UINT4: "u4"}


def _quant_params(node: Node, shape: tuple[int, ...], default_dtype: str) -> tuple[QuantParams, str]:
    """The QuantParams and integer dtype that the node's scale/zero point/axis/block_size describe."""
    for index, role in ((1, "scale"), (2, "zero point")):
        if isinstance(node.input(index), Value):
            raise node.fail(f"its {role} '{node.proto.input[index]}' is computed at run time; qpass needs "
                            "constant quantization parameters")
    scale, zero_point = node.input(1), node.input(2)
    if zero_point is None:
        dtype = default_dtype
        zero_point = np.zeros(scale.shape, np.int32)
    else:
        dtype = _ZERO_POINT_DTYPES.get(zero_point.dtype.name)
        if dtype is None:
            raise node.fail(f"zero point type {zero_point.dtype} is not supported; qpass quantizes to "
                            f"{', '.join(_ZERO_POINT_DTYPES)}")
    scale = scale.astype(np.float32)
    zero_point = zero_point.astype(np.int32)
    block_size = int(node.attr("block_size", 0))
    if block_size:
        params = QuantParams(scale, zero_point, node.axis(node.attr("axis", 1), len(shape)), block_size)
    elif scale.size == 1 and scale.ndim <= 1:
        params = QuantParams(scale.reshape(()), zero_point.reshape(()))
    else:
        params = QuantParams(scale.reshape(-1), zero_point.reshape(-1), node.axis(node.attr("axis", 1), len(shape)))
    reason = params.check(shape, dtype)
    if reason:
        raise node.fail(f"its quantization parameters do not fit a {dtype}{list(shape)} tensor: {reason}")
    return params, dtype


@converter("QuantizeLinear")
def quantize(node: Node):
    """ONNX QuantizeLinear -> quantize whose result type carries the scale and zero point."""
    x = node.input(0)
    if not is_float(dtype_of(x)):
        raise node.fail(f"it quantizes a {dtype_of(x)} value; QuantizeLinear takes floats")
    shape = shape_of(x)
    # Without a zero point ONNX quantizes to uint8, unless opset 21's output_dtype names the type.
    output_dtype = node.attr("output_dtype", 0)
    if output_dtype and output_dtype not in _OUTPUT_DTYPES:
        raise node.fail(f"output_dtype {element_type_name(output_dtype)} is not supported; "
                        f"qpass quantizes to {', '.join(_ZERO_POINT_DTYPES)}")
    precision = node.attr("precision", 0)               # opset 25+: the type x / scale is computed in
    if precision not in (0, onnx.TensorProto.FLOAT):
        raise node.fail(f"precision {element_type_name(precision)} is not supported; qpass divides in float32 "
                        "(precision=FLOAT or none)")
    params, dtype = _quant_params(node, shape, _OUTPUT_DTYPES.get(output_dtype, "u8"))
    return node.emit("quantize", [x], types=[TensorType(shape, dtype, params)], fold=False)


@converter("DequantizeLinear")
def dequantize(node: Node):
    """ONNX DequantizeLinear -> dequantize of a run-time value or of a quantized constant."""
    q = node.input(0)
    q_dtype = _dtype(q)
    if q_dtype is None or is_float(q_dtype):
        raise node.fail(f"its input '{node.proto.input[0]}' is {q_dtype or q.dtype}; DequantizeLinear takes "
                        "integers")
    output_dtype = node.attr("output_dtype", 0)         # opset 23+: the result's float type
    if output_dtype not in (0, onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
        raise node.fail(f"output_dtype {element_type_name(output_dtype)} is not supported; qpass dequantizes to "
                        "float32 (float16 results compute in float32 too)")
    params, dtype = _quant_params(node, shape_of(q), q_dtype)
    if q_dtype != dtype:
        raise node.fail(f"its input is {q_dtype} but its zero point is {dtype}; they must agree")
    if isinstance(q, np.ndarray):
        value = node.constant(q, dtype=dtype, quant=params)
    else:
        value = _annotated(node, q, params)
    return node.emit("dequantize", [value], fold=False)   # f32, also for float16 scales (Importer._bind)


def _dtype(operand: Operand) -> Optional[str]:
    if isinstance(operand, Value):
        return operand.type.dtype
    return _ZERO_POINT_DTYPES.get(operand.dtype.name)


def _annotated(node: Node, q: Value, params: QuantParams) -> Value:
    """`q`, whose type must carry `params`; an integer graph input gets them from this node."""
    if q.type.quant == params:
        return q
    where = f"its input '{node.proto.input[0]}'"
    if q.type.quant is not None:
        raise node.fail(f"{where} is quantized with {_describe(q.type.quant)} where it is produced, but this "
                        f"node dequantizes it with {_describe(params)}; a QuantizeLinear/DequantizeLinear "
                        "pair must use the same scale, zero point and axis")
    if not node.is_graph_input(q):
        raise node.fail(f"{where} is an integer value without quantization parameters (it is not produced by "
                        "a QuantizeLinear); qpass cannot tell what its integers mean")
    q.type = TensorType(q.type.shape, q.type.dtype, params)
    return q


def _describe(params: QuantParams) -> str:
    scale, zero_point = params.scale.reshape(-1), params.zero_point.reshape(-1)
    text = f"scale {scale[:4].tolist()}{'...' if scale.size > 4 else ''}, zero point " \
           f"{zero_point[:4].tolist()}{'...' if zero_point.size > 4 else ''}"
    return text + (f", axis {params.axis}" if params.axis is not None else "")


# --------------------------------------------------------------------------- ops ONNX Runtime's quantizer writes
# Each is expanded into the standard ONNX nodes it is defined by, converted by their own converters: a
# QLinear* op becomes DequantizeLinear -> float op -> QuantizeLinear (fold-fake-quant turns that into
# integer ops again), DynamicQuantizeLinear its defining float arithmetic, ConvInteger/MatMulInteger an
# int32 convolution/product of zero-point-centred operands.
def expand(node: Node, parts: list[onnx.NodeProto], arrays: Optional[dict] = None) -> list[Optional[Operand]]:
    """Convert `parts` (standard ONNX nodes reading this node's inputs, the names in `arrays` and each
    other's outputs, and writing this node's outputs) in place of `node`; returns its results."""
    importer = node._importer
    for name, array in (arrays or {}).items():
        importer._bind(name, array)
    for proto in parts:
        clash = [name for name in proto.output if name in importer._operands]
        if clash:
            raise node.fail(f"expanding it would overwrite the model's value '{clash[0]}'; rename that value")
        part = Node(importer, proto)
        part.where = f"{node.where} (its {proto.op_type} part)"
        results = CONVERTERS[proto.op_type](part)
        results = list(results) if isinstance(results, (list, tuple)) else [results]
        for name, result in zip(proto.output, results):
            importer._bind(name, result)
    return [importer.operand(name, node) if name else None for name in node.proto.output]


class _Parts:
    """Builds the node list of an expansion; intermediate names are '<first output>/<role>'."""

    def __init__(self, node: Node):
        self.node, self.nodes, self.arrays = node, [], {}
        self.prefix = node.proto.output[0]

    def name(self, role: str) -> str:
        return f"{self.prefix}/{role}"

    def input(self, index: int) -> str:
        """The ONNX name of the node's input `index` ('' when absent)."""
        return self.node.proto.input[index] if index < len(self.node.proto.input) else ""

    def array(self, role: str, array) -> str:
        name = self.name(role)
        self.arrays[name] = np.asarray(array)
        return name

    def add(self, op_type: str, inputs: list[str], output: Optional[str] = None, **attrs) -> str:
        output = output or self.name(op_type.lower() + str(len(self.nodes)))
        self.nodes.append(onnx.helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def run(self) -> list[Optional[Operand]]:
        return expand(self.node, self.nodes, self.arrays)


def _axis_of(node: Node, scale_index: int, axis: int) -> dict:
    """{"axis": axis} when the scale at `scale_index` is per channel, else {}."""
    scale = node.input(scale_index)
    return {"axis": axis} if isinstance(scale, np.ndarray) and scale.size > 1 else {}


def _dequantized(parts: _Parts, first: int, role: str, axis: int = 1) -> str:
    """DequantizeLinear of inputs first, first+1, first+2 (value, scale, zero point)."""
    inputs = [parts.input(first + i) for i in range(3)]
    return parts.add("DequantizeLinear", inputs, parts.name(role), **_axis_of(parts.node, first + 1, axis))


def _requantized(parts: _Parts, y: str, first: int) -> list[Optional[Operand]]:
    """QuantizeLinear of float y with the scale and zero point at inputs first, first+1: the node's result."""
    parts.add("QuantizeLinear", [y, parts.input(first), parts.input(first + 1)], parts.node.proto.output[0])
    return parts.run()


def _attrs(node: Node, *drop: str) -> dict:
    return {k: v for k, v in node.attrs.items() if k not in drop}


def _check_channels_first(node: Node) -> None:
    if node.attr("channels_last", 0):
        raise node.fail("channels_last=1 (NHWC input) is not supported; qpass imports NCHW models")


def _bias(parts: _Parts, index: int, scale_inputs: tuple[int, int], factor: float = 1.0) -> str:
    """DequantizeLinear of the int32 bias at input `index`, whose scale is factor times the product of the
    scales at `scale_inputs` (the operands'; per output channel when the weight's is)."""
    node = parts.node
    scales = [np.asarray(node.const_input(i, "scale"), np.float32) for i in scale_inputs]
    scale = (np.float32(factor) * scales[0] * scales[1]).reshape(-1)
    scale = scale.reshape(()) if scale.size == 1 else scale
    zero = parts.array("bias_zero_point", np.zeros(scale.shape, np.int32))
    return parts.add("DequantizeLinear", [parts.input(index), parts.array("bias_scale", scale), zero],
                     parts.name("bias"), **({"axis": 0} if scale.size > 1 else {}))


@converter("QLinearConv")
def qlinear_conv(node: Node):
    """QLinearConv -> DequantizeLinear (x, w, int32 bias at scale x_scale * w_scale) -> Conv -> QuantizeLinear."""
    parts = _Parts(node)
    inputs = [_dequantized(parts, 0, "x"), _dequantized(parts, 3, "w", axis=0)]
    if node.input(8) is not None:
        inputs.append(_bias(parts, 8, (1, 4)))
    y = parts.add("Conv", inputs, parts.name("conv"), **_attrs(node))
    return _requantized(parts, y, 6)


@converter("com.microsoft.QGemm")
def qgemm(node: Node):
    """com.microsoft QGemm -> DequantizeLinear (A, B, and C: int32 at scale alpha * a_scale * b_scale) ->
    Gemm -> QuantizeLinear, or a float result when it has no y_scale."""
    parts = _Parts(node)
    inputs = [_dequantized(parts, 0, "a"), _dequantized(parts, 3, "b", axis=0 if node.attr("transB", 0) else 1)]
    if node.input(6) is not None:
        inputs.append(_bias(parts, 6, (1, 4), float(node.attr("alpha", 1.0))))
    if node.input(7) is None:
        parts.add("Gemm", inputs, node.proto.output[0], **_attrs(node))
        return parts.run()
    return _requantized(parts, parts.add("Gemm", inputs, parts.name("gemm"), **_attrs(node)), 7)


@converter("QLinearMatMul")
def qlinear_matmul(node: Node):
    """QLinearMatMul -> DequantizeLinear (per column of b where b_scale is a vector) -> MatMul -> QuantizeLinear."""
    parts = _Parts(node)
    a = _dequantized(parts, 0, "a", axis=len(shape_of(node.input(0))) - 2)
    b = _dequantized(parts, 3, "b", axis=len(shape_of(node.input(3))) - 1)
    return _requantized(parts, parts.add("MatMul", [a, b], parts.name("matmul")), 6)


def _quantized_float_op(op_type: str):
    """X, X_scale, X_zero_point, Y_scale, Y_zero_point -> DequantizeLinear -> op_type -> QuantizeLinear."""
    def convert(node: Node):
        _check_channels_first(node)
        parts = _Parts(node)
        y = parts.add(op_type, [_dequantized(parts, 0, "x")], parts.name(op_type.lower()),
                      **_attrs(node, "channels_last"))
        return _requantized(parts, y, 3)
    convert.__doc__ = f"com.microsoft QLinear{op_type} -> DequantizeLinear -> {op_type} -> QuantizeLinear."
    return convert


for _op_type in ("Sigmoid", "LeakyRelu", "GlobalAveragePool", "AveragePool"):
    converter(f"com.microsoft.QLinear{_op_type}")(_quantized_float_op(_op_type))


def _quantized_binary(op_type: str):
    def convert(node: Node):
        parts = _Parts(node)
        a, b = _dequantized(parts, 0, "a"), _dequantized(parts, 3, "b")
        return _requantized(parts, parts.add(op_type, [a, b], parts.name(op_type.lower())), 6)
    convert.__doc__ = f"com.microsoft QLinear{op_type} -> DequantizeLinear (both) -> {op_type} -> QuantizeLinear."
    return convert


for _op_type in ("Add", "Mul"):
    converter(f"com.microsoft.QLinear{_op_type}")(_quantized_binary(_op_type))


@converter("com.microsoft.QLinearConcat")
def qlinear_concat(node: Node):
    """com.microsoft QLinearConcat(Y_scale, Y_zero_point, (X, X_scale, X_zero_point)...) -> DequantizeLinear
    of each -> Concat -> QuantizeLinear."""
    parts = _Parts(node)
    operands = [_dequantized(parts, i, f"x{i // 3}") for i in range(2, len(node.proto.input), 3)]
    y = parts.add("Concat", operands, parts.name("concat"), axis=int(node.attr("axis")))
    return _requantized(parts, y, 0)


@converter("DynamicQuantizeLinear")
def dynamic_quantize_linear(node: Node):
    """DynamicQuantizeLinear -> the float arithmetic that defines it (ONNX's function body, with its
    QuantizeLinear of a run-time scale spelled out, and ONNX Runtime's scale 1 for an all-zero x):
    y (u8), y_scale (f32), y_zero_point (u8)."""
    parts = _Parts(node)
    x = parts.input(0)
    zero, top = parts.array("zero", np.float32(0)), parts.array("qmax", np.float32(255))
    low = parts.add("Min", [parts.add("ReduceMin", [x], parts.name("x_min"), keepdims=0), zero], parts.name("low"))
    high = parts.add("Max", [parts.add("ReduceMax", [x], parts.name("x_max"), keepdims=0), zero], parts.name("high"))
    out = list(node.proto.output) + [""] * (3 - len(node.proto.output))
    spread = parts.add("Sub", [high, low], parts.name("range"))
    # ONNX Runtime's scale for an all-zero x is 1 (ONNX's function body would divide by zero)
    all_zero, one = parts.add("Equal", [spread, zero], parts.name("all_zero")), parts.array("one", np.float32(1))
    scale = parts.add("Where", [all_zero, one, parts.add("Div", [spread, top], parts.name("range_scaled"))],
                      out[1] or parts.name("scale"))
    zp = parts.add("Sub", [zero, parts.add("Div", [low, scale], parts.name("low_scaled"))], parts.name("zp_initial"))
    zp = parts.add("Round", [_clamped(parts, zp, zero, top, "zp")], parts.name("zp_rounded"))
    if out[2]:
        parts.add("Cast", [zp], out[2], to=onnx.TensorProto.UINT8)
    # QuantizeLinear(x, scale, zero point) with a run-time scale (which the QuantizeLinear converter refuses:
    # a QDQ model's quantize needs constant parameters), spelled out: the same float32 steps
    q = parts.add("Add", [parts.add("Round", [parts.add("Div", [x, scale], parts.name("scaled"))],
                                    parts.name("rounded")), zp], parts.name("shifted"))
    parts.add("Cast", [_clamped(parts, q, zero, top, "y")], out[0], to=onnx.TensorProto.UINT8)
    return parts.run()


def _clamped(parts: _Parts, value: str, low: str, high: str, role: str) -> str:
    """max(min(value, high), low) (Min/Max rather than Clip, whose bounds are attributes before opset 11)."""
    return parts.add("Max", [parts.add("Min", [value, high], parts.name(role + "_below")), low],
                     parts.name(role + "_clamped"))


def _centred(parts: _Parts, index: int, zp_index: int, role: str, weight_axis: Optional[int] = None):
    """Input `index` minus its zero point, as int32: folded at import for constants, else Cast and Sub
    nodes; a zero point per output channel (of a weight only) broadcasts along `weight_axis`."""
    node = parts.node
    value, zp = node.input(index), node.input(zp_index)
    if isinstance(value, np.ndarray) and (zp is None or isinstance(zp, np.ndarray)):
        centred = value.astype(np.int32)
        if zp is not None:
            zp = np.asarray(zp, np.int32)
            if zp.size > 1 and weight_axis is not None:
                zp = zp.reshape([-1 if a == weight_axis % value.ndim else 1 for a in range(value.ndim)])
            centred = centred - zp
        return parts.array(role, centred)
    to_int = onnx.TensorProto.INT32
    centred = parts.add("Cast", [parts.input(index)], parts.name(role + "_i32"), to=to_int)
    if zp is None:
        return centred
    zp_name = parts.add("Cast", [parts.input(zp_index)], parts.name(role + "_zero_point_i32"), to=to_int)
    if int(np.prod(shape_of(zp))) > 1:
        if weight_axis is None:
            raise node.fail(f"its input {index} has a zero point per channel; only the weight's may have one")
        rank = len(shape_of(value))
        per_channel = [-1 if a == weight_axis % rank else 1 for a in range(rank)]
        zp_name = parts.add("Reshape", [zp_name, parts.array(role + "_zero_point_shape", np.array(per_channel))],
                            parts.name(role + "_zero_point_per_channel"))
    return parts.add("Sub", [centred, zp_name], parts.name(role + "_centred"))


@converter("ConvInteger")
def conv_integer(node: Node):
    """ConvInteger -> int32 Conv of (x - x_zero_point) and (w - w_zero_point): padding is the real zero,
    as in ONNX Runtime, and the int32 result wraps like its accumulator."""
    parts = _Parts(node)
    x, w = _centred(parts, 0, 2, "x"), _centred(parts, 1, 3, "w", weight_axis=0)
    parts.add("Conv", [x, w], node.proto.output[0], **_attrs(node))
    return parts.run()


@converter("MatMulInteger")
def matmul_integer(node: Node):
    """MatMulInteger -> int32 MatMul of (a - a_zero_point) and (b - b_zero_point) (b's per column)."""
    parts = _Parts(node)
    a = _centred(parts, 0, 2, "a")
    b = _centred(parts, 1, 3, "b", weight_axis=-1)
    parts.add("MatMul", [a, b], node.proto.output[0])
    return parts.run()
