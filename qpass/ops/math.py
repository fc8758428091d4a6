"""Math ops: unary functions (neg, abs, sign, reciprocal, log, floor, ceil, round, sin, cos,
softplus, mish, elu, selu, celu, thresholded_relu), prelu, the variadic max, min, sum and mean,
the reductions (reduce_max, reduce_min, reduce_sum, reduce_prod, reduce_l1, reduce_l2,
reduce_sum_square, reduce_log_sum_exp), argmax / argmin, and the broadcasts expand and tile.

Semantics follow the ONNX operator of the same meaning (Neg, Abs, ..., Softplus, Mish, Elu,
Selu, Celu, ThresholdedRelu, PRelu, Max, Min, Sum, Mean, Reduce*, ArgMax, ArgMin, Expand, Tile)
with attributes normalized by the frontend (positive, sorted axes; expand's full result shape).
Float kernels compute in the operand's float dtype; round is half to even; integer neg, abs, sum
and products wrap like ONNX Runtime's.
"""

from __future__ import annotations

import numpy as np

from qpass.ir.opdef import OpDef, Trait, define_op
from qpass.ir.types import TensorType
from qpass.ops.common import MOVES, broadcast_shape, check_axis, fail, float_operand, like, same_dtype, scalar_like

T = Trait
TABLE_UNARY = frozenset({T.ELEMENTWISE, T.TABLE, T.INTEGER_FORM})


def _unary(kind, floats_only=True):
    def infer(types, attrs):
        if floats_only:
            float_operand(kind, types[0])
        elif types[0].dtype == "bool":
            fail(f"{kind} takes a number, got bool; cast it first")
        return [types[0].without_quant()]
    return infer


def _log1p(low, y):
    """log(1 + y) accurate for small y (Goldberg: log(u) * y / (u - 1), u = 1 + y), as Relax has no log1p."""
    r = low.relax.op
    u = r.add(y, low.relax.const(np.float32(1)))
    one = r.equal(u, low.relax.const(np.float32(1)))
    return r.where(one, y, r.divide(r.multiply(r.log(u), y), r.subtract(u, low.relax.const(np.float32(1)))))


def _softplus(x):
    """log(1 + exp(x)) without overflow or loss for very negative x (as ONNX Runtime computes it)."""
    return np.maximum(x, like(x, 0)) + np.log1p(np.exp(-np.abs(x)))


def _lower_softplus_of(low, x_expr, x):
    r = low.relax.op
    return r.add(r.maximum(x_expr, scalar_like(low, 0, x)), _log1p(low, r.exp(r.negative(r.abs(x_expr)))))


def _elu(x, alpha):
    return np.where(x > 0, x, like(x, alpha) * (np.exp(np.minimum(x, like(x, 0))) - like(x, 1)))


def _lower_elu_of(low, x_expr, x, alpha):
    """alpha * (exp(min(x, 0)) - 1) below 0, x above (min keeps exp finite in the branch not taken)."""
    r = low.relax.op
    zero = scalar_like(low, 0, x)
    negative = r.multiply(scalar_like(low, alpha, x), r.subtract(r.exp(r.minimum(x_expr, zero)),
                                                                 scalar_like(low, 1, x)))
    return r.where(r.greater(x_expr, zero), x_expr, negative)


def _lower_round(low, op):
    """Round half to even: floor(x + 0.5), minus one where x was exactly halfway to an odd result;
    from 2^23 (float32) on every value is whole already, and x + 0.5 would round."""
    r, x = low.relax.op, op.inputs[0]
    xe = low.get(x)
    half, two = scalar_like(low, 0.5, x), scalar_like(low, 2, x)
    rounded = r.floor(r.add(xe, half))
    tie = r.equal(r.subtract(rounded, xe), half)
    odd = r.not_equal(r.subtract(rounded, r.multiply(two, r.floor(r.divide(rounded, two)))), scalar_like(low, 0, x))
    near = r.where(r.logical_and(tie, odd), r.subtract(rounded, scalar_like(low, 1, x)), rounded)
    return r.where(r.less(r.abs(xe), scalar_like(low, 2.0 ** 23, x)), near, xe)


def _relax(name):
    return lambda low, op: getattr(low.relax.op, name)(low.get(op.inputs[0]))


# kind: (kernel, lowering, traits, takes integers, attrs, doc)
_UNARY = {
    "neg": (lambda op, x: np.negative(x), _relax("negative"), TABLE_UNARY | {T.POSITIVE_HOMOGENEOUS}, True, (),
            "-x (integers wrap)"),
    "abs": (lambda op, x: np.abs(x), _relax("abs"), TABLE_UNARY | {T.POSITIVE_HOMOGENEOUS}, True, (),
            "|x| (integers wrap)"),
    "sign": (lambda op, x: np.sign(x), _relax("sign"), TABLE_UNARY, True, (), "-1, 0 or 1"),
    "reciprocal": (lambda op, x: np.reciprocal(x),
                   lambda low, op: low.relax.op.divide(scalar_like(low, 1, op.inputs[0]), low.get(op.inputs[0])),
                   {T.ELEMENTWISE}, False, (), "1 / x"),
    "log": (lambda op, x: np.log(x), _relax("log"), {T.ELEMENTWISE}, False, (), "natural logarithm"),
    "floor": (lambda op, x: np.floor(x), _relax("floor"), TABLE_UNARY, False, (), "round down"),
    "ceil": (lambda op, x: np.ceil(x), _relax("ceil"), TABLE_UNARY, False, (), "round up"),
    "round": (lambda op, x: np.round(x), _lower_round, TABLE_UNARY, False, (), "round half to even"),
    "sin": (lambda op, x: np.sin(x), _relax("sin"), TABLE_UNARY, False, (), "sine"),
    "cos": (lambda op, x: np.cos(x), _relax("cos"), TABLE_UNARY, False, (), "cosine"),
    "softplus": (lambda op, x: _softplus(x),
                 lambda low, op: _lower_softplus_of(low, low.get(op.inputs[0]), op.inputs[0]),
                 TABLE_UNARY, False, (), "log(1 + exp(x))"),
    "mish": (lambda op, x: x * np.tanh(_softplus(x)),
             lambda low, op: low.relax.op.multiply(low.get(op.inputs[0]), low.relax.op.tanh(
                 _lower_softplus_of(low, low.get(op.inputs[0]), op.inputs[0]))),
             TABLE_UNARY, False, (), "x * tanh(softplus(x))"),
    "elu": (lambda op, x: _elu(x, op.attrs["alpha"]),
            lambda low, op: _lower_elu_of(low, low.get(op.inputs[0]), op.inputs[0], op.attrs["alpha"]),
            TABLE_UNARY, False, ("alpha",), "x above 0, alpha * (exp(x) - 1) below"),
    "selu": (lambda op, x: like(x, op.attrs["gamma"]) * _elu(x, op.attrs["alpha"]),
             lambda low, op: low.relax.op.multiply(
                 scalar_like(low, op.attrs["gamma"], op.inputs[0]),
                 _lower_elu_of(low, low.get(op.inputs[0]), op.inputs[0], op.attrs["alpha"])),
             TABLE_UNARY, False, ("alpha", "gamma"), "gamma * elu(x, alpha)"),
    "celu": (lambda op, x: np.maximum(x, like(x, 0)) + np.minimum(
                 like(x, 0), _elu(x / like(x, op.attrs["alpha"]), op.attrs["alpha"])),
             lambda low, op: _lower_celu(low, op), TABLE_UNARY, False, ("alpha",),
             "max(0, x) + min(0, alpha * (exp(x / alpha) - 1))"),
    "thresholded_relu": (lambda op, x: np.where(x > like(x, op.attrs["alpha"]), x, like(x, 0)),
                         lambda low, op: low.relax.op.where(
                             low.relax.op.greater(low.get(op.inputs[0]), scalar_like(low, op.attrs["alpha"],
                                                                                     op.inputs[0])),
                             low.get(op.inputs[0]), scalar_like(low, 0, op.inputs[0])),
                         TABLE_UNARY, False, ("alpha",), "x above alpha, else 0"),
}


def _lower_celu(low, op):
    r, x = low.relax.op, op.inputs[0]
    xe, alpha = low.get(x), op.attrs["alpha"]
    scaled = r.divide(xe, scalar_like(low, alpha, x))
    zero = scalar_like(low, 0, x)
    return r.add(r.maximum(xe, zero), r.minimum(zero, _lower_elu_of(low, scaled, x, alpha)))


for _kind, (_kernel, _lowering, _traits, _ints, _attrs, _doc) in _UNARY.items():
    define_op(OpDef(_kind, infer=_unary(_kind, floats_only=not _ints), attrs=_attrs, traits=_traits, kernel=_kernel,
                    lower=_lowering, doc=_doc))


# --------------------------------------------------------------------------- prelu
def _prelu_types(types, attrs):
    x, slope = types
    float_operand("prelu", x)
    same_dtype("prelu", types)
    if broadcast_shape("prelu", types) != x.shape:
        fail(f"prelu: slope shape {list(slope.shape)} does not broadcast to the input's {list(x.shape)}")
    return [x.without_quant()]


define_op(OpDef("prelu", infer=_prelu_types, inputs=2, traits={T.ELEMENTWISE},
                kernel=lambda op, x, slope: np.where(x < 0, x * slope, x),
                lower=lambda low, op: low.relax.op.where(
                    low.relax.op.less(low.get(op.inputs[0]), scalar_like(low, 0, op.inputs[0])),
                    low.relax.op.multiply(low.get(op.inputs[0]), low.get(op.inputs[1])), low.get(op.inputs[0])),
                doc="x where x >= 0, slope * x below (slope broadcasts to x)"))


# --------------------------------------------------------------------------- variadic max, min, sum, mean
def _variadic(kind, floats_only=False):
    def infer(types, attrs):
        dtype = same_dtype(kind, types)
        if floats_only:
            float_operand(kind, types[0])
        elif dtype == "bool":
            fail(f"{kind} takes numbers, got bool; cast it first")
        return [TensorType(broadcast_shape(kind, types), dtype)]
    return infer


def _lower_variadic(name, mean=False):
    def lower(low, op):
        result = low.get(op.inputs[0])
        for v in op.inputs[1:]:
            result = getattr(low.relax.op, name)(result, low.get(v))
        if mean:
            result = low.relax.op.divide(result, scalar_like(low, len(op.inputs), op.output))
        return low.relax.op.broadcast_to(result, op.output.type.shape) if len(op.inputs) == 1 else result
    return lower


def _fold(fn, arrays, shape):
    result = arrays[0]
    for a in arrays[1:]:
        result = fn(result, a)
    return np.broadcast_to(result, shape)


_MAX_OPERANDS = 1 << 16
for _kind, _fn, _relax_name in (("max", np.maximum, "maximum"), ("min", np.minimum, "minimum"),
                                ("sum", np.add, "add")):
    define_op(OpDef(_kind, infer=_variadic(_kind), inputs=(1, _MAX_OPERANDS), traits={T.ELEMENTWISE},
                    kernel=lambda op, *xs, fn=_fn: _fold(fn, xs, op.output.type.shape),
                    lower=_lower_variadic(_relax_name),
                    doc=f"elementwise {_kind} of any number of operands with numpy broadcasting"))

define_op(OpDef("mean", infer=_variadic("mean", floats_only=True), inputs=(1, _MAX_OPERANDS), traits={T.ELEMENTWISE},
                kernel=lambda op, *xs: _fold(np.add, xs, op.output.type.shape) / like(xs[0], len(xs)),
                lower=_lower_variadic("add", mean=True),
                doc="elementwise mean of any number of operands (their sum / count) with numpy broadcasting"))


# --------------------------------------------------------------------------- reductions
def _reduce(kind, floats_only=False):
    def infer(types, attrs):
        x = types[0]
        if floats_only:
            float_operand(kind, x)
        elif x.dtype == "bool":
            fail(f"{kind} takes numbers, got bool; cast it first")
        axes = [check_axis(kind, a, x.rank) for a in attrs["axes"]]
        keep = attrs.get("keepdims", True)
        shape = [1 if i in axes else d for i, d in enumerate(x.shape)] if keep else \
            [d for i, d in enumerate(x.shape) if i not in axes]
        return [TensorType(shape, x.dtype)]
    return infer


def _log_sum_exp(x, axis, keepdims):
    """log(sum(exp(x))) with the maximum taken out first, so it does not overflow (as ONNX Runtime)."""
    top = np.max(x, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, like(x, 0))
    out = np.log(np.sum(np.exp(x - top), axis=axis, keepdims=True)) + top
    return out if keepdims else np.squeeze(out, axis=axis)


def _lower_reduce(kind):
    def lower(low, op):
        r, x = low.relax.op, op.inputs[0]
        xe, axes, keep = low.get(x), list(op.attrs["axes"]), bool(op.attrs.get("keepdims", True))
        if kind == "reduce_l1":
            return r.sum(r.abs(xe), axes, keep)
        if kind in ("reduce_l2", "reduce_sum_square"):
            total = r.sum(r.multiply(xe, xe), axes, keep)
            return r.sqrt(total) if kind == "reduce_l2" else total
        if kind == "reduce_log_sum_exp":
            top = low.emit(r.max(xe, axes, True))
            total = r.log(r.sum(r.exp(r.subtract(xe, top)), axes, True))
            out = r.add(total, top)
            return out if keep else r.squeeze(out, axes)
        return getattr(r, {"reduce_max": "max", "reduce_min": "min", "reduce_sum": "sum",
                           "reduce_prod": "prod"}[kind])(xe, axes, keep)
    return lower


_REDUCTIONS = {  # kind: (kernel of (x, axes, keepdims), floats only, doc)
    "reduce_max": (lambda x, a, k: np.max(x, axis=a, keepdims=k), False, "maximum over axes"),
    "reduce_min": (lambda x, a, k: np.min(x, axis=a, keepdims=k), False, "minimum over axes"),
    "reduce_sum": (lambda x, a, k: np.sum(x, axis=a, keepdims=k, dtype=x.dtype), False,
                   "sum over axes (integers wrap)"),
    "reduce_prod": (lambda x, a, k: np.prod(x, axis=a, keepdims=k, dtype=x.dtype), False,
                    "product over axes (integers wrap)"),
    "reduce_l1": (lambda x, a, k: np.sum(np.abs(x), axis=a, keepdims=k, dtype=x.dtype), False,
                  "sum of absolute values over axes"),
    "reduce_l2": (lambda x, a, k: np.sqrt(np.sum(x * x, axis=a, keepdims=k, dtype=x.dtype)), True,
                  "square root of the sum of squares over axes"),
    "reduce_sum_square": (lambda x, a, k: np.sum(x * x, axis=a, keepdims=k, dtype=x.dtype), False,
                          "sum of squares over axes (integers wrap)"),
    "reduce_log_sum_exp": (_log_sum_exp, True, "log of the sum of exponentials over axes"),
}
for _kind, (_fn, _floats, _doc) in _REDUCTIONS.items():
    define_op(OpDef(_kind, infer=_reduce(_kind, _floats), attrs=("axes",), optional_attrs=("keepdims",),
                    kernel=lambda op, x, fn=_fn: fn(x, tuple(op.attrs["axes"]), bool(op.attrs.get("keepdims", True))),
                    lower=_lower_reduce(_kind), doc=_doc + "; keepdims keeps them as size 1"))


# --------------------------------------------------------------------------- argmax, argmin
def _arg_types(kind):
    def infer(types, attrs):
        x = types[0]
        if x.dtype == "bool":
            fail(f"{kind} takes numbers, got bool; cast it first")
        axis = check_axis(kind, attrs["axis"], x.rank)
        keep = attrs.get("keepdims", True)
        shape = [1 if i == axis else d for i, d in enumerate(x.shape)] if keep else \
            [d for i, d in enumerate(x.shape) if i != axis]
        return [TensorType(shape, "i64")]
    return infer


def _arg(fn):
    def kernel(op, x):
        axis, keep, last = op.attrs["axis"], bool(op.attrs.get("keepdims", True)), op.attrs.get("select_last_index")
        if last:
            index = x.shape[axis] - 1 - fn(np.flip(x, axis), axis=axis)
        else:
            index = fn(x, axis=axis)
        return np.expand_dims(index, axis) if keep else index
    return kernel


def _lower_arg(name):
    def lower(low, op):
        r = low.relax.op
        axis, keep, last = op.attrs["axis"], bool(op.attrs.get("keepdims", True)), op.attrs.get("select_last_index")
        x = low.get(op.inputs[0])
        if not last:
            return r.astype(getattr(r, name)(x, axis, keep), "int64")
        index = r.astype(getattr(r, name)(r.flip(x, axis), axis, keep), "int64")
        return r.subtract(low.relax.const(op.inputs[0].type.shape[axis] - 1, "int64"), index)
    return lower


for _kind, _fn in (("argmax", np.argmax), ("argmin", np.argmin)):
    define_op(OpDef(_kind, infer=_arg_types(_kind), attrs=("axis",), optional_attrs=("keepdims", "select_last_index"),
                    kernel=_arg(_fn), lower=_lower_arg(_kind),
                    doc="i64 index of the first (or, select_last_index, the last) extreme along axis"))


# --------------------------------------------------------------------------- expand, tile
def _moved_quant(x):
    """A per-tensor annotation survives copying values around; a per-channel one would need its axis kept."""
    return x.quant if x.quant is not None and x.quant.axis is None else None


def _expand_types(types, attrs):
    x, shape = types[0], tuple(attrs["shape"])
    try:
        full = tuple(np.broadcast_shapes(x.shape, shape))
    except ValueError:
        fail(f"expand: input shape {list(x.shape)} does not broadcast to {list(shape)}")
    if full != shape:
        fail(f"expand: the shape attribute {list(shape)} must be the full result shape {list(full)} "
             "(the frontend resolves ONNX's two-way broadcast)")
    return [TensorType(shape, x.dtype, _moved_quant(x))]


define_op(OpDef("expand", infer=_expand_types, attrs=("shape",), traits=MOVES,
                kernel=lambda op, x: np.broadcast_to(x, tuple(op.attrs["shape"])).copy(),
                lower=lambda low, op: low.relax.op.broadcast_to(low.get(op.inputs[0]), op.attrs["shape"]),
                doc="broadcast to the result shape `shape`"))


def _tile_types(types, attrs):
    x, repeats = types[0], list(attrs["repeats"])
    if len(repeats) != x.rank or any(r < 0 for r in repeats):
        fail(f"tile: repeats {repeats} must give one count >= 0 per axis of the rank-{x.rank} input")
    return [TensorType([d * r for d, r in zip(x.shape, repeats)], x.dtype, _moved_quant(x))]


define_op(OpDef("tile", infer=_tile_types, attrs=("repeats",), traits=MOVES,
                kernel=lambda op, x: np.tile(x, op.attrs["repeats"]),
                lower=lambda low, op: low.relax.op.tile(low.get(op.inputs[0]), op.attrs["repeats"]),
                doc="repeat the input `repeats[i]` times along each axis i"))
