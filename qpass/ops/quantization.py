"""Quantization ops at the float/integer boundary: quantize and dequantize.

Semantics are exactly ONNX QuantizeLinear and DequantizeLinear (see docs/integer_semantics.md):
`q = clamp(round_half_to_even(x / scale) + zp, qmin, qmax)` and `scale * (q - zp)`, both in
float32. The scale and zero point are not attributes: quantize takes them from its result type,
dequantize from its operand's, per tensor, per channel (`axis`) or per group.
"""

from __future__ import annotations

import numpy as np

from qpass.errors import InterpreterError
from qpass.ir.opdef import OpDef, Trait, define_op
from qpass.ir.types import TensorType, dtype_range, is_float
from qpass.ops.common import NATIVE, NHWC, fail, nhwc_shape


# --------------------------------------------------------------------------- quantize
def _quantize_types(types, attrs):
    fail("quantize results carry their quantization in the result type; pass types= explicitly")


def _check_quantize_result(inputs, attrs, declared):
    t = declared[0] if declared else None
    if len(declared) != 1 or t.quant is None or is_float(t.dtype) or t.shape != inputs[0].shape:
        return "quantize must give one integer result of its operand's shape, annotated with scale/zero point"
    return None


def _quantize(op, x):
    """q = clamp(round_half_even(x / scale) + zp, qmin, qmax), in float32 like ONNX QuantizeLinear."""
    result = op.outputs[0].type
    if result.quant is None:
        raise InterpreterError(f"quantize %{op.name}: its result type carries no quantization annotation, "
                               "so there is no scale to divide by")
    scale, zero_point = result.quant.broadcast(x.shape)
    low, high = dtype_range(result.dtype, result.quant.bits)
    q = np.rint(x.astype(np.float32, copy=False) / scale) + zero_point.astype(np.float32)
    return np.clip(q, low, high).astype(result.numpy_dtype)


def _lower_quantize(low, op):
    """A float -> integer kernel; it writes NHWC straight away when a qconv2d reads the result."""
    x, out = op.inputs[0], op.output
    quant = out.type.quant
    lo, hi = dtype_range(out.type.dtype, quant.bits)
    to_nhwc = out.type.rank == 4 and quant.axis is None and low.wants_nhwc(out)
    scale = low.const(np.asarray(quant.scale, np.float32).reshape(-1), "float32")
    zp = low.const(np.asarray(quant.zero_point, np.float32).reshape(-1), "float32")
    dtype, axis, rank = low.dtype(out.type.dtype), quant.axis, out.type.rank

    def fn(xt, st, zt):
        from tvm import te, tirx

        def q(*idx):
            src = (idx[0], idx[3], idx[1], idx[2]) if to_nhwc else idx
            k = 0 if axis is None else idx[axis % rank]
            v = tirx.nearbyint(xt[src] / st[k]) + zt[k]
            return tirx.max(tirx.min(v, tirx.const(hi, "float32")), tirx.const(lo, "float32")).astype(dtype)
        return te.compute(nhwc_shape(out.type.shape) if to_nhwc else out.type.shape, q, name="quantize")
    expr = low.emit_kernel(fn, [low.get(x), scale, zp], op.name, "elementwise", op="quantize")
    low.set(out, expr, NHWC if to_nhwc else NATIVE)


define_op(OpDef("quantize", infer=_quantize_types, check_results=_check_quantize_result,
                traits={Trait.RETYPABLE_RESULT}, kernel=_quantize, lower=_lower_quantize,
                doc="real -> integer, q = clamp(round_half_even(x/scale)+zp); scale and zero point come from "
                    "the result type"))


# --------------------------------------------------------------------------- dequantize
def _dequantize_types(types, attrs):
    q = types[0]
    if q.quant is None:
        fail("dequantize needs an operand whose type carries a quantization annotation")
    return [TensorType(q.shape, attrs.get("to", "f32"))]


def _dequantize(op, q):
    """scale * (q - zp) in float32, with scale and zero point from the operand's type."""
    quant = op.inputs[0].type.quant
    if quant is None:
        raise InterpreterError(f"dequantize %{op.name}: its operand's type carries no quantization "
                               "annotation, so there is no scale to apply")
    scale, zero_point = quant.broadcast(q.shape)
    return (q.astype(np.int32) - zero_point).astype(np.float32) * scale


def _lower_dequantize(low, op):
    """An integer -> float kernel reading the operand in its layout (graph outputs come back NCHW)."""
    q, out = op.inputs[0], op.output
    quant = q.type.quant
    from_nhwc = low.layout(q) == NHWC and quant.axis is None
    scale = low.const(np.asarray(quant.scale, np.float32).reshape(-1), "float32")
    zp = low.const(np.asarray(quant.zero_point, np.int32).reshape(-1), "int32")
    axis, rank, dtype = quant.axis, q.type.rank, low.dtype(out.type.dtype)

    def fn(qt, st, zt):
        from tvm import te

        def d(*idx):
            src = (idx[0], idx[2], idx[3], idx[1]) if from_nhwc else idx
            k = 0 if axis is None else idx[axis % rank]
            return ((qt[src].astype("int32") - zt[k]).astype("float32") * st[k]).astype(dtype)
        return te.compute(out.type.shape, d, name="dequantize")
    args = [low.get(q, NHWC if from_nhwc else NATIVE), scale, zp]
    low.set(out, low.emit_kernel(fn, args, op.name, "elementwise", op="dequantize"))


define_op(OpDef("dequantize", infer=_dequantize_types, optional_attrs=("to",), traits={Trait.READS_QUANTIZATION},
                kernel=_dequantize, lower=_lower_dequantize, doc="integer -> real, scale * (q - zp)"))
