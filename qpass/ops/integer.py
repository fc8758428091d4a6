"""Integer ops: the quantized IR that fold-fake-quant and fuse-requant produce (semantics in
docs/integer_semantics.md; they are the integer forms of ONNX QLinearConv, QLinearMatMul,
QLinearAdd, QLinearMul and friends, with exact zero points).

Integer operands carry their meaning in their types: a value of dtype i8/u8/i4/u4 with a
quantization annotation stands for the reals scale * (q - zero_point). Rescaling is explicit:
ops that produce narrow integers hold fixed-point `multiplier`/`shift` attributes computed once
at compile time, and take the output zero point from their result type. Kernels and lowerings
rescale through the one rule of qpass.ir.fixed_point (numpy arithmetic in the interpreter, TIR in
compiled code), so compiled results equal the interpreter's bit for bit.

    qconv2d(x, w[, bias])   conv over (x - zx) * (w - zw), int32 accumulation (+ bias, i32).
                            Without `multiplier` the result is the i32 accumulator; with it, the
                            epilogue requantizes: clamp(rescale(acc) + z_out, clamp).
    qdense(x, w[, bias])    the same for x @ w.T.
    requantize(acc)         the epilogue alone, on an i32 tensor (per-channel along `axis`).
    qadd(a, b)              clamp(rounding_shift((a-za)*ma + (b-zb)*mb, s) + z_out): one rounding.
    qmul(a, b)              clamp(rescale((a-za)*(b-zb)) + z_out).
    qreduce_mean(x)         rescale(sum over axes of (x - zx)) with the 1/count folded into m.
    lut(x)                  table[x - qmin]: any unary function of an 8-bit value, exactly.

where rescale(v) = fixed_point.multiply_by_quantized(v, m, s) = (v * m + 2^(s-1)) >> s.
"""

from __future__ import annotations

import numpy as np

from qpass.errors import InterpreterError, IRError
from qpass.ir import fixed_point
from qpass.ir.fixed_point import TIR
from qpass.ir.opdef import OpDef, Trait, define_op
from qpass.ir.types import TensorType, dtype_range, is_float
from qpass.ops.common import NATIVE, NHWC, broadcast_shape, nhwc_shape, windows
from qpass.ops.nn import CONV_ATTRS, conv_types, dense_types, reduce_mean_types

EPILOGUE = ("multiplier", "shift", "clamp", "out_dtype", "axis")
INTEGER = frozenset({Trait.INTEGER, Trait.RETYPABLE_RESULT, Trait.READS_QUANTIZATION})
WEIGHTED = INTEGER | {Trait.WEIGHTED, Trait.EPILOGUE}
_EXACT = float(1 << 53)


# --------------------------------------------------------------------------- shared rules
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


def result_bounds(op) -> tuple[int, int]:
    """[lo, hi] of an integer op's result: its dtype's range, narrowed by the `clamp` attribute."""
    t = op.outputs[0].type
    lo, hi = dtype_range(t.dtype, t.quant.bits)
    if "clamp" in op.attrs:
        lo, hi = max(lo, op.attrs["clamp"][0]), min(hi, op.attrs["clamp"][1])
    return lo, hi


def _out_range(op) -> tuple[int, int, np.ndarray]:
    """(lo, hi, zero point) of the result, for the interpreter."""
    t = op.outputs[0].type
    if t.quant is None:
        raise InterpreterError(f"%{op.name} ({op.kind}): the result type {t} needs a quantization annotation "
                               "giving its zero point")
    return (*result_bounds(op), t.quant.zero_point.astype(np.int64))


def _requantized(low, op, acc, multiplier, shift):
    """TIR of fixed_point.requantize: an int64 `acc` rescaled into op's result (per-tensor zero point)."""
    lo, hi = result_bounds(op)
    return fixed_point.requantize(acc, multiplier, shift, low.zero_point(op.output), lo, hi, arith=TIR)


def centered(value, array: np.ndarray) -> np.ndarray:
    """q - zero_point as int64, with the zero point broadcast per tensor/channel/group."""
    _, zp = value.type.quant.broadcast(array.shape)
    return array.astype(np.int64) - zp.astype(np.int64)


def exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """int64 a @ b through float64 BLAS where that is provably exact (every partial sum an integer
    below 2^53, checked per call), else in int64: the same bits either way, only faster."""
    bound = float(np.abs(a).max(initial=0)) * float(np.abs(b).max(initial=0)) * a.shape[-1]
    if bound >= _EXACT:
        return np.matmul(a, b)
    return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64)


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


# --------------------------------------------------------------------------- qconv2d, qdense
def _qconv2d_types(types, attrs):
    for t in types[:2]:
        _integer("qconv2d", t)
    return _result("qconv2d", conv_types("qconv2d", types, attrs)[0].shape, attrs)


def _qconv2d(op, x, w, bias=None):
    """Integer convolution of (x - zx) and (w - zw); padding is the real zero (x's zero point)."""
    xc, wc = centered(op.inputs[0], x), centered(op.inputs[1], w)
    n, out_c, out_h, out_w = op.outputs[0].type.shape
    _, group_c, kh, kw = wc.shape
    groups = op.attrs["groups"]
    view = windows(xc, (kh, kw), op.attrs["strides"], op.attrs["pads"], op.attrs["dilations"], (out_h, out_w))
    columns = view.reshape(n, groups, group_c, out_h, out_w, kh, kw)
    columns = columns.transpose(0, 1, 3, 4, 2, 5, 6).reshape(n, groups, out_h * out_w, group_c * kh * kw)
    weights = wc.reshape(groups, out_c // groups, group_c * kh * kw).transpose(0, 2, 1)
    acc = exact_matmul(columns, weights)                       # (n, groups, oh*ow, out_c/groups)
    acc = acc.transpose(0, 1, 3, 2).reshape(n, out_c, out_h, out_w)
    if bias is not None:
        acc = acc + bias.astype(np.int64).reshape(1, out_c, 1, 1)
    return epilogue(op, acc, axis=1)


define_op(OpDef("qconv2d", infer=_qconv2d_types, inputs=(2, 3), attrs=CONV_ATTRS, optional_attrs=EPILOGUE,
                traits=WEIGHTED, kernel=_qconv2d, lower=lambda low, op: low.conv(op),
                doc="integer conv2d with exact zero points, i32 accumulation, optional requantizing epilogue"))


def _qdense_types(types, attrs):
    for t in types[:2]:
        _integer("qdense", t)
    return _result("qdense", dense_types(types, attrs)[0].shape, attrs)


def _qdense(op, x, w, bias=None):
    """Integer (x - zx) @ (w - zw).T (+ bias)."""
    acc = exact_matmul(centered(op.inputs[0], x), centered(op.inputs[1], w).T)
    if bias is not None:
        acc = acc + bias.astype(np.int64)
    return epilogue(op, acc, axis=-1)


define_op(OpDef("qdense", infer=_qdense_types, inputs=(2, 3), optional_attrs=EPILOGUE, traits=WEIGHTED,
                kernel=_qdense, lower=lambda low, op: low.conv(op),
                doc="integer x @ w.T with exact zero points, optional requantizing epilogue"))


# --------------------------------------------------------------------------- requantize
def _requantize_types(types, attrs):
    _integer("requantize", types[0], annotated=False)
    return _result("requantize", types[0].shape, attrs)


def _requantize(op, x):
    """The fixed-point epilogue alone, on x minus its zero point (0 for a plain i32 accumulator)."""
    acc = centered(op.inputs[0], x) if op.inputs[0].type.quant is not None else x.astype(np.int64)
    return epilogue(op, acc, axis=op.attrs.get("axis", 1 if acc.ndim > 1 else 0))


def _lower_requantize(low, op):
    x = op.inputs[0]
    axis = op.attrs.get("axis", 1 if x.type.rank > 1 else 0) % x.type.rank
    if low.shared_layout(op) == NHWC:
        axis = {0: 0, 1: 3, 2: 1, 3: 2}[axis]
    per_channel = len(op.attrs["multiplier"]) > 1
    zx = low.zero_point(x)

    def body(idx, load, tensors):
        c = idx[axis] if per_channel else 0
        return _requantized(low, op, load(0).astype("int64") - zx, tensors[1][c], tensors[2][c])
    low.elementwise(op, body, [low.const(np.asarray(op.attrs["multiplier"]), "int32"),
                               low.const(np.asarray(op.attrs["shift"]), "int32")])


define_op(OpDef("requantize", infer=_requantize_types, attrs=("multiplier", "shift", "out_dtype"),
                optional_attrs=("clamp", "axis"), traits=INTEGER, kernel=_requantize, lower=_lower_requantize,
                doc="i32 -> narrow integer with fixed-point multiplier/shift (per tensor or along axis)"))


# --------------------------------------------------------------------------- qadd, qmul
def _qbinary_types(kind):
    def infer(types, attrs):
        for t in types:
            _integer(kind, t)
        return [TensorType(broadcast_shape(kind, types), attrs["out_dtype"])]
    return infer


def _qadd(op, a, b):
    """(a-za)*ma + (b-zb)*mb with one shared shift and a single rounding."""
    lo, hi, zp = _out_range(op)
    ma, mb = op.attrs["multiplier"]
    total = centered(op.inputs[0], a) * ma + centered(op.inputs[1], b) * mb
    return fixed_point.clamp(fixed_point.rounding_shift(total, op.attrs["shift"][0]) + zp, lo, hi)


def _lower_qadd(low, op):
    a, b = op.inputs
    ma, mb = (int(v) for v in op.attrs["multiplier"])
    s, za, zb = int(op.attrs["shift"][0]), low.zero_point(a), low.zero_point(b)
    lo, hi = result_bounds(op)
    zp = low.zero_point(op.output)

    def body(idx, load, tensors):
        total = (load(0).astype("int64") - za) * TIR.int64(ma) + (load(1).astype("int64") - zb) * TIR.int64(mb)
        return fixed_point.clamp(fixed_point.rounding_shift(total, s, TIR) + TIR.int64(zp), lo, hi, TIR)
    low.elementwise(op, body)


define_op(OpDef("qadd", infer=_qbinary_types("qadd"), inputs=2, attrs=("multiplier", "shift", "out_dtype"),
                optional_attrs=("clamp",), traits=INTEGER, kernel=_qadd, lower=_lower_qadd,
                doc="integer add of two quantized tensors, multiplier=[ma, mb] sharing one shift"))


def _qmul(op, a, b):
    """(a-za)*(b-zb), requantized."""
    lo, hi, zp = _out_range(op)
    product = centered(op.inputs[0], a) * centered(op.inputs[1], b)
    return fixed_point.requantize(product, op.attrs["multiplier"][0], op.attrs["shift"][0], zp, lo, hi)


def _lower_qmul(low, op):
    a, b = op.inputs
    m, s = int(op.attrs["multiplier"][0]), int(op.attrs["shift"][0])
    za, zb = low.zero_point(a), low.zero_point(b)

    def body(idx, load, tensors):
        return _requantized(low, op, (load(0).astype("int64") - za) * (load(1).astype("int64") - zb), m, s)
    low.elementwise(op, body)


define_op(OpDef("qmul", infer=_qbinary_types("qmul"), inputs=2, attrs=("multiplier", "shift", "out_dtype"),
                optional_attrs=("clamp",), traits=INTEGER, kernel=_qmul, lower=_lower_qmul,
                doc="integer product of two quantized tensors, requantized"))


# --------------------------------------------------------------------------- qreduce_mean
def _qreduce_mean_types(types, attrs):
    _integer("qreduce_mean", types[0])
    shape = reduce_mean_types(types, {k: attrs[k] for k in ("axes", "keepdims") if k in attrs})[0].shape
    return [TensorType(shape, attrs["out_dtype"])]


def _qreduce_mean(op, x):
    """Sum of (x - zx) over the axes, times m * 2^-s (which includes 1/count)."""
    lo, hi, zp = _out_range(op)
    total = centered(op.inputs[0], x).sum(axis=tuple(op.attrs["axes"]), keepdims=op.attrs.get("keepdims", True))
    return fixed_point.requantize(total, op.attrs["multiplier"][0], op.attrs["shift"][0], zp, lo, hi)


def _lower_qreduce_mean(low, op):
    """A sum then a requantize; a spatial mean of an NHWC operand reduces over NHWC's H and W."""
    x, out = op.inputs[0], op.output
    axes = sorted(a % x.type.rank for a in op.attrs["axes"])
    keep = op.attrs.get("keepdims", True)
    nhwc = low.layout(x) == NHWC and axes == [2, 3] and keep
    m, s = int(op.attrs["multiplier"][0]), int(op.attrs["shift"][0])
    zx = low.zero_point(x)
    in_shape = nhwc_shape(x.type.shape) if nhwc else x.type.shape
    red_axes = [1, 2] if nhwc else axes
    out_shape = nhwc_shape(out.type.shape) if nhwc else out.type.shape
    dtype = low.dtype(out.type.dtype)

    def fn(xt):
        from tvm import te
        raxes = [te.reduce_axis((0, in_shape[a]), f"r{a}") for a in red_axes]

        def source(idx):
            full, it, k = [], iter(raxes), 0
            for a in range(len(in_shape)):
                if a in red_axes:
                    full.append(next(it))
                    if keep:
                        k += 1
                else:
                    full.append(idx[k])
                    k += 1
            return tuple(full)
        total = te.compute(out_shape, lambda *idx: te.sum(xt[source(idx)].astype("int64") - zx, axis=raxes),
                           name="sum")
        return te.compute(out_shape, lambda *idx: _requantized(low, op, total[idx], m, s).astype(dtype),
                          name="qreduce_mean")
    layout = NHWC if nhwc else NATIVE
    low.set(out, low.emit_kernel(fn, [low.get(x, layout)], op.name, "reduce", op="qreduce_mean"), layout)


define_op(OpDef("qreduce_mean", infer=_qreduce_mean_types, attrs=("axes", "multiplier", "shift", "out_dtype"),
                optional_attrs=("keepdims", "clamp"), traits=INTEGER, kernel=_qreduce_mean, lower=_lower_qreduce_mean,
                doc="integer mean: requantized sum of (x - zx)"))


# --------------------------------------------------------------------------- lut
def _lut_types(types, attrs):
    t = types[0]
    _integer("lut", t, annotated=False)
    if t.dtype not in ("i8", "u8", "i4", "u4"):
        raise IRError(f"lut takes an 8-bit or 4-bit operand, got {t.dtype}")
    bits = t.quant.bits if t.quant and t.quant.bits else (4 if t.dtype in ("i4", "u4") else 8)
    if len(attrs["table"]) != 1 << bits:
        raise IRError(f"lut on {t.dtype} needs a table of {1 << bits} entries, has {len(attrs['table'])}")
    return [TensorType(t.shape, attrs["out_dtype"])]


def _table_offset(op) -> int:
    """qmin of the operand: table[0] is the result for the smallest input."""
    t = op.inputs[0].type
    return dtype_range(t.dtype, t.quant.bits if t.quant else None)[0]


def _lut(op, x):
    """table[x - qmin]."""
    return np.asarray(op.attrs["table"], np.int64)[x.astype(np.int64) - _table_offset(op)]


def _lower_lut(low, op):
    qmin = _table_offset(op)

    def body(idx, load, tensors):
        return tensors[1][load(0).astype("int32") - qmin].astype("int64")
    low.elementwise(op, body, [low.const(np.asarray(op.attrs["table"], np.int64), "int32")])


define_op(OpDef("lut", infer=_lut_types, attrs=("table", "out_dtype"), traits=INTEGER, kernel=_lut, lower=_lower_lut,
                doc="table lookup on 8-bit (or 4-bit) integers"))
