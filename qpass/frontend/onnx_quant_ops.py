"""Converters of QDQ models: QuantizeLinear and DequantizeLinear.

Their scale and zero point move into the IR type: a `quantize` result and a quantized weight
constant carry `QuantParams`, and `dequantize` reads them from its operand. They are never
folded, so a later pass sees the Q/DQ structure (fold-fake-quant turns it into integer ops).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx

from qpass.frontend.onnx_node import (ONNX_TO_IR, Node, Operand, converter, dtype_of, element_type_name,
                                      shape_of)
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
