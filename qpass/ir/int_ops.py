"""Integer ops: the catalogue entries of the quantized IR (semantics in docs/integer_semantics.md).

Integer operands carry their meaning in their types: a value of dtype i8/u8/i4/u4 with a
quantization annotation stands for the reals scale * (q - zero_point). Rescaling is explicit:
ops that produce narrow integers hold fixed-point `multiplier`/`shift` attributes computed once
at compile time (qpass.ir.fixed_point), and take the output zero point from their result type.

    qconv2d(x, w[, bias])   conv over (x - zx) * (w - zw), int32 accumulation (+ bias, i32).
                            Without `multiplier` the result is the i32 accumulator; with it, the
                            epilogue requantizes: clamp(((acc*m + 2^(s-1)) >> s) + z_out, clamp).
    qdense(x, w[, bias])    the same for x @ w.T.
    requantize(acc)         the epilogue alone, on an i32 tensor (per-channel along `axis`).
    qadd(a, b)              clamp((((a-za)*ma + (b-zb)*mb + 2^(s-1)) >> s) + z_out): one rounding.
    qmul(a, b)              clamp(requant((a-za)*(b-zb)) + z_out).
    qreduce_mean(x)         requant(sum over axes of (x - zx)) with the 1/count folded into m.
    lut(x)                  table[x - qmin]: any unary function of an 8-bit value, exactly.
"""

from __future__ import annotations

from qpass.errors import IRError
from qpass.ir.ops import _CONV_ATTRS, Trait, _conv_common, _dense, _reduce_mean, register_op
from qpass.ir.types import TensorType, is_float

EPILOGUE = ("multiplier", "shift", "clamp", "out_dtype", "axis")
INTEGER = (Trait.INTEGER, Trait.RETYPABLE_RESULT, Trait.READS_QUANTIZATION)
WEIGHTED = INTEGER + (Trait.WEIGHTED, Trait.EPILOGUE)


def _integer(kind, t: TensorType, annotated=True):
    if is_float(t.dtype):
        raise IRError(f"{kind} takes integer operands, got {t.dtype}")
    if annotated and t.quant is None:
        raise IRError(f"{kind}: operand of type {t} needs a quantization annotation (its zero point)")


def _result(kind, shape, attrs) -> list[TensorType]:
    if "multiplier" in attrs:
        if "shift" not in attrs or "out_dtype" not in attrs:
            raise IRError(f"{kind}: a requantizing epilogue needs multiplier, shift and out_dtype")
        if len(attrs["multiplier"]) != len(attrs["shift"]):
            raise IRError(f"{kind}: multiplier and shift lists differ in length")
        return [TensorType(shape, attrs["out_dtype"])]
    return [TensorType(shape, "i32")]


def _qconv(types, attrs):
    for t in types[:2]:
        _integer("qconv2d", t)
    shape = _conv_common("qconv2d", types, attrs)[0].shape
    return _result("qconv2d", shape, attrs)


def _qdense(types, attrs):
    for t in types[:2]:
        _integer("qdense", t)
    return _result("qdense", _dense(types, attrs)[0].shape, attrs)


def _requantize(types, attrs):
    _integer("requantize", types[0], annotated=False)
    return _result("requantize", types[0].shape, attrs)


def _qbinary(kind):
    def infer(types, attrs):
        for t in types:
            _integer(kind, t)
        from qpass.ir.ops import _broadcast
        return [TensorType(_broadcast(kind, types), attrs["out_dtype"])]
    return infer


def _qreduce_mean(types, attrs):
    _integer("qreduce_mean", types[0])
    shape = _reduce_mean(types, {k: attrs[k] for k in ("axes", "keepdims") if k in attrs})[0].shape
    return [TensorType(shape, attrs["out_dtype"])]


def _lut(types, attrs):
    t = types[0]
    _integer("lut", t, annotated=False)
    if t.dtype not in ("i8", "u8", "i4", "u4"):
        raise IRError(f"lut takes an 8-bit or 4-bit operand, got {t.dtype}")
    bits = t.quant.bits if t.quant and t.quant.bits else (4 if t.dtype in ("i4", "u4") else 8)
    if len(attrs["table"]) != 1 << bits:
        raise IRError(f"lut on {t.dtype} needs a table of {1 << bits} entries, has {len(attrs['table'])}")
    return [TensorType(t.shape, attrs["out_dtype"])]


register_op("qconv2d", _qconv, inputs=(2, 3), attrs=_CONV_ATTRS, optional=EPILOGUE,
            doc="integer conv2d with exact zero points, i32 accumulation, optional requantizing epilogue", traits=WEIGHTED)
register_op("qdense", _qdense, inputs=(2, 3), optional=EPILOGUE,
            doc="integer x @ w.T with exact zero points, optional requantizing epilogue", traits=WEIGHTED)
register_op("requantize", _requantize, attrs=("multiplier", "shift", "out_dtype"), optional=("clamp", "axis"),
            doc="i32 -> narrow integer with fixed-point multiplier/shift (per tensor or along axis)", traits=INTEGER)
register_op("qadd", _qbinary("qadd"), inputs=2, attrs=("multiplier", "shift", "out_dtype"), optional=("clamp",),
            doc="integer add of two quantized tensors, multiplier=[ma, mb] sharing one shift", traits=INTEGER)
register_op("qmul", _qbinary("qmul"), inputs=2, attrs=("multiplier", "shift", "out_dtype"), optional=("clamp",),
            doc="integer product of two quantized tensors, requantized", traits=INTEGER)
register_op("qreduce_mean", _qreduce_mean, attrs=("axes", "multiplier", "shift", "out_dtype"),
            optional=("keepdims", "clamp"), doc="integer mean: requantized sum of (x - zx)", traits=INTEGER)
register_op("lut", _lut, attrs=("table", "out_dtype"), doc="table lookup on 8-bit (or 4-bit) integers", traits=INTEGER)
