"""The op catalogue: each op kind's operands, attributes and result-type inference.

Semantics of the float ops follow the ONNX operator of the same family; attributes are
normalized by the frontend (explicit pads, full static shapes, positive axes), so an op's
meaning never depends on the opset it came from. Integer ops register here too.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from qpass.errors import IRError
from qpass.ir.opdef import OPS, InferFn, OpDef, Trait, define_op, infer_types, op_def  # noqa: F401
from qpass.ir.types import TensorType, is_float

T = Trait


def register_op(kind: str, infer: InferFn, inputs: int | tuple[int, int] = 1, attrs=(), optional=(),
                doc: str = "", traits=(), static_range=None) -> OpDef:
    """Define an op kind (see qpass.ir.opdef); a kind defined twice is an error."""
    return define_op(OpDef(kind, infer, inputs, tuple(attrs), tuple(optional), frozenset(traits),
                           static_range=static_range, doc=doc))


# --------------------------------------------------------------------------- helpers
def _fail(msg: str):
    raise IRError(msg)


def _same_dtype(kind, types):
    dtypes = {t.dtype for t in types}
    if len(dtypes) > 1:
        _fail(f"{kind} operands must share a dtype, got {', '.join(sorted(dtypes))}")
    return types[0].dtype


def _float_in(kind, t: TensorType):
    if not is_float(t.dtype):
        _fail(f"{kind} takes a float operand, got {t.dtype}")


def _broadcast(kind, types):
    try:
        return tuple(np.broadcast_shapes(*[t.shape for t in types]))
    except ValueError:
        _fail(f"{kind}: shapes {' and '.join(str(list(t.shape)) for t in types)} do not broadcast")


def _axis(kind, axis, rank):
    if not 0 <= axis < rank:
        _fail(f"{kind}: axis {axis} is out of range for rank {rank} (axes are normalized to >= 0)")
    return axis


def _window(size, kernel, stride, pad_begin, pad_end, dilation, ceil_mode=False):
    span = dilation * (kernel - 1) + 1
    total = size + pad_begin + pad_end - span
    if total < 0:
        return -1
    out = -(-total // stride) if ceil_mode else total // stride
    if ceil_mode and out * stride >= size + pad_begin:   # last window must start inside the input
        out -= 1
    return out + 1


# --------------------------------------------------------------------------- elementwise
def _unary(kind):
    def infer(types, attrs):
        _float_in(kind, types[0])
        return [types[0].without_quant()]
    return infer


def _binary(kind):
    def infer(types, attrs):
        dtype = _same_dtype(kind, types)
        return [TensorType(_broadcast(kind, types), dtype)]
    return infer


TABLE_UNARY = (T.ELEMENTWISE, T.TABLE, T.INTEGER_FORM)
_RANGES = {"relu": lambda a: (0.0, None), "sigmoid": lambda a: (0.0, 1.0), "tanh": lambda a: (-1.0, 1.0)}
for _k in ("relu", "sigmoid", "tanh", "erf", "sqrt", "exp", "hard_swish"):
    register_op(_k, _unary(_k), doc=f"elementwise {_k}",
                traits=TABLE_UNARY + ((T.ACTIVATION,) if _k == "relu" else ()), static_range=_RANGES.get(_k))
register_op("leaky_relu", _unary("leaky_relu"), attrs=("alpha",), traits=TABLE_UNARY)
register_op("hard_sigmoid", _unary("hard_sigmoid"), attrs=("alpha", "beta"),
            doc="max(0, min(1, alpha * x + beta))", traits=TABLE_UNARY, static_range=lambda a: (0.0, 1.0))
register_op("gelu", _unary("gelu"), optional=("approximate",), doc="approximate='none' (erf) or 'tanh'",
            traits=TABLE_UNARY)
register_op("clip", lambda t, a: [t[0].without_quant()], optional=("min", "max"),
            doc="clamp to [min, max]; a missing bound is open", traits=TABLE_UNARY + (T.ACTIVATION,),
            static_range=lambda a: (a.get("min"), a.get("max")))
MOVE = (T.DATA_MOVEMENT, T.FOLLOWS_OPERAND, T.INTEGER_FORM)
register_op("identity", lambda t, a: [t[0]], traits=MOVE + (T.ELEMENTWISE,))
register_op("add", _binary("add"), inputs=2, doc="elementwise add with numpy broadcasting",
            traits=(T.ELEMENTWISE, T.INTEGER_FORM, T.FUSES_ACTIVATION))
register_op("mul", _binary("mul"), inputs=2, doc="elementwise mul with numpy broadcasting",
            traits=(T.ELEMENTWISE, T.INTEGER_FORM))
for _k in ("sub", "div", "pow"):
    register_op(_k, _binary(_k), inputs=2, doc=f"elementwise {_k} with numpy broadcasting", traits=(T.ELEMENTWISE,))


def _cast(types, attrs):
    return [TensorType(types[0].shape, attrs["to"])]


register_op("cast", _cast, attrs=("to",), traits=(T.ELEMENTWISE,))


# --------------------------------------------------------------------------- convolutions
def _conv_common(kind, types, attrs, transpose=False):
    x, w = types[0], types[1]
    if x.rank != 4 or w.rank != 4:
        _fail(f"{kind} takes NCHW input and 4-D weights, got ranks {x.rank} and {w.rank}")
    groups = attrs["groups"]
    strides, pads, dilations = attrs["strides"], attrs["pads"], attrs["dilations"]
    if len(strides) != 2 or len(dilations) != 2 or len(pads) != 4:
        _fail(f"{kind} needs strides=[h,w], dilations=[h,w], pads=[top,left,bottom,right]")
    n, c = x.shape[:2]
    if transpose:
        if w.shape[0] != c:
            _fail(f"{kind}: input has {c} channels but the weight expects {w.shape[0]}")
        out_c = w.shape[1] * groups
        outp = attrs.get("output_padding", [0, 0])
        hw = [strides[i] * (x.shape[2 + i] - 1) + outp[i] + dilations[i] * (w.shape[2 + i] - 1) + 1
              - pads[i] - pads[i + 2] for i in range(2)]
    else:
        if c % groups or w.shape[0] % groups or w.shape[1] * groups != c:
            _fail(f"{kind}: input has {c} channels, weight {list(w.shape)} with groups={groups} expects "
                  f"{w.shape[1] * groups}")
        out_c = w.shape[0]
        hw = [_window(x.shape[2 + i], w.shape[2 + i], strides[i], pads[i], pads[i + 2], dilations[i])
              for i in range(2)]
    if min(hw) <= 0:
        _fail(f"{kind}: the output would be empty ({hw}); the kernel is larger than the padded input")
    if len(types) == 3 and types[2].shape != (out_c,):
        _fail(f"{kind}: bias must have shape [{out_c}], has {list(types[2].shape)}")
    return [TensorType((n, out_c, *hw), x.dtype)]


_CONV_ATTRS = ("strides", "pads", "dilations", "groups")
register_op("conv2d", lambda t, a: _conv_common("conv2d", t, a), inputs=(2, 3), attrs=_CONV_ATTRS,
            doc="2-D convolution, NCHW input, OIHW weight, optional bias [O]",
            traits=(T.WEIGHTED, T.INTEGER_FORM, T.FUSES_ACTIVATION))
register_op("conv_transpose2d", lambda t, a: _conv_common("conv_transpose2d", t, a, transpose=True),
            inputs=(2, 3), attrs=_CONV_ATTRS, optional=("output_padding",),
            doc="transposed 2-D convolution, IOHW weight (ONNX ConvTranspose layout)")


def _dense(types, attrs):
    x, w = types[0], types[1]
    if w.rank != 2 or x.rank < 1 or x.shape[-1] != w.shape[1]:
        _fail(f"dense: input {list(x.shape)} and weight {list(w.shape)} do not match; the weight is "
              "[out_features, in_features]")
    if len(types) == 3 and types[2].shape != (w.shape[0],):
        _fail(f"dense: bias must have shape [{w.shape[0]}], has {list(types[2].shape)}")
    return [TensorType((*x.shape[:-1], w.shape[0]), x.dtype)]


register_op("dense", _dense, inputs=(2, 3), doc="x @ weight.T + bias; weight [out, in]",
            traits=(T.WEIGHTED, T.INTEGER_FORM, T.FUSES_ACTIVATION))


def _matmul(types, attrs):
    a, b = types
    if a.rank == 0 or b.rank == 0:
        _fail("matmul operands must have rank >= 1")
    sa = (1,) + a.shape if a.rank == 1 else a.shape
    sb = b.shape + (1,) if b.rank == 1 else b.shape
    if sa[-1] != sb[-2]:
        _fail(f"matmul: shapes {list(a.shape)} and {list(b.shape)} do not multiply")
    try:
        batch = np.broadcast_shapes(sa[:-2], sb[:-2])
    except ValueError:
        _fail(f"matmul: batch dimensions of {list(a.shape)} and {list(b.shape)} do not broadcast")
    shape = (*batch, *(sa[-2:-1] if a.rank > 1 else ()), *(sb[-1:] if b.rank > 1 else ()))
    return [TensorType(shape, _same_dtype("matmul", types))]


register_op("matmul", _matmul, inputs=2, doc="numpy matmul semantics")


# --------------------------------------------------------------------------- normalization
def _batch_norm(types, attrs):
    x = types[0]
    for t in types[1:]:
        if t.shape != (x.shape[1],):
            _fail(f"batch_norm: parameters must have shape [{x.shape[1]}], got {list(t.shape)}")
    return [x.without_quant()]


register_op("batch_norm", _batch_norm, inputs=5, attrs=("epsilon",),
            doc="inference batch norm: (x - mean) / sqrt(var + eps) * scale + bias, over axis 1")


def _layer_norm(types, attrs):
    x = types[0]
    axis = _axis("layer_norm", attrs["axis"], x.rank)
    for t in types[1:]:
        try:
            np.broadcast_shapes(t.shape, x.shape[axis:])
        except ValueError:
            _fail(f"layer_norm: parameter shape {list(t.shape)} does not fit {list(x.shape[axis:])}")
    return [x.without_quant()]


register_op("layer_norm", _layer_norm, inputs=(2, 3), attrs=("axis", "epsilon"),
            doc="normalize over axes [axis, rank), then * scale + bias")


def _softmax(types, attrs):
    _axis("softmax", attrs["axis"], types[0].rank)
    return [types[0].without_quant()]


register_op("softmax", _softmax, attrs=("axis",))


# --------------------------------------------------------------------------- pooling / reductions
def _pool(kind):
    def infer(types, attrs):
        x = types[0]
        if x.rank != 4:
            _fail(f"{kind} takes NCHW input, got rank {x.rank}")
        k, s, p = attrs["kernel"], attrs["strides"], attrs["pads"]
        d = attrs.get("dilations", [1, 1])
        hw = [_window(x.shape[2 + i], k[i], s[i], p[i], p[i + 2], d[i], attrs.get("ceil_mode", False))
              for i in range(2)]
        if min(hw) <= 0:
            _fail(f"{kind}: the output would be empty ({hw})")
        return [TensorType((*x.shape[:2], *hw), x.dtype, x.quant if kind == "max_pool2d" else None)]
    return infer


register_op("max_pool2d", _pool("max_pool2d"), attrs=("kernel", "strides", "pads"),
            optional=("dilations", "ceil_mode"), traits=MOVE)
register_op("avg_pool2d", _pool("avg_pool2d"), attrs=("kernel", "strides", "pads"),
            optional=("ceil_mode", "count_include_pad"))


def _reduce_mean(types, attrs):
    x = types[0]
    axes = [_axis("reduce_mean", a, x.rank) for a in attrs["axes"]]
    keep = attrs.get("keepdims", True)
    shape = [1 if i in axes else d for i, d in enumerate(x.shape)] if keep else \
        [d for i, d in enumerate(x.shape) if i not in axes]
    return [TensorType(shape, x.dtype)]


register_op("reduce_mean", _reduce_mean, attrs=("axes",), optional=("keepdims",), traits=(T.INTEGER_FORM,))


# --------------------------------------------------------------------------- data movement
def _reshape(types, attrs):
    x, shape = types[0], tuple(attrs["shape"])
    if any(d < 0 for d in shape) or int(np.prod(shape, dtype=np.int64)) != x.size:
        _fail(f"reshape: cannot reshape {list(x.shape)} ({x.size} elements) to {list(shape)}; the frontend "
              "resolves -1 and 0 so the IR shape is explicit")
    return [TensorType(shape, x.dtype, x.quant if x.quant and x.quant.axis is None else None)]


register_op("reshape", _reshape, attrs=("shape",), traits=MOVE)


def _transpose(types, attrs):
    x, perm = types[0], list(attrs["perm"])
    if sorted(perm) != list(range(x.rank)):
        _fail(f"transpose: perm {perm} is not a permutation of 0..{x.rank - 1}")
    return [TensorType([x.shape[p] for p in perm], x.dtype)]


register_op("transpose", _transpose, attrs=("perm",), traits=MOVE)


def _concat(types, attrs):
    axis = _axis("concat", attrs["axis"], types[0].rank)
    dtype = _same_dtype("concat", types)
    for t in types[1:]:
        if t.rank != types[0].rank or any(a != b for i, (a, b) in enumerate(zip(t.shape, types[0].shape))
                                           if i != axis):
            _fail(f"concat: shapes {[list(t.shape) for t in types]} differ outside axis {axis}")
    shape = list(types[0].shape)
    shape[axis] = sum(t.shape[axis] for t in types)
    return [TensorType(shape, dtype)]


register_op("concat", _concat, inputs=(1, 1 << 16), attrs=("axis",), traits=(T.FOLLOWS_OPERAND, T.INTEGER_FORM))


def _split(types, attrs):
    x = types[0]
    axis = _axis("split", attrs["axis"], x.rank)
    if sum(attrs["sizes"]) != x.shape[axis]:
        _fail(f"split: sizes {attrs['sizes']} do not add up to dimension {axis} ({x.shape[axis]})")
    return [x.with_shape([s if i == axis else d for i, d in enumerate(x.shape)]).without_quant()
            for s in attrs["sizes"]]


register_op("split", _split, attrs=("axis", "sizes"))


def _slice(types, attrs):
    x = types[0]
    shape = list(x.shape)
    if len({len(attrs[k]) for k in ("starts", "ends", "axes", "steps")}) != 1:
        _fail("slice: starts, ends, axes and steps must have one entry per sliced axis")
    for start, end, axis, step in zip(attrs["starts"], attrs["ends"], attrs["axes"], attrs["steps"]):
        _axis("slice", axis, x.rank)
        shape[axis] = len(range(*slice(start, end, step).indices(x.shape[axis])))
    return [TensorType(shape, x.dtype)]


register_op("slice", _slice, attrs=("starts", "ends", "axes", "steps"), traits=MOVE)


def _gather(types, attrs):
    x, idx = types
    axis = _axis("gather", attrs["axis"], x.rank)
    if idx.dtype not in ("i32", "i64"):
        _fail(f"gather: indices must be i32 or i64, got {idx.dtype}")
    return [TensorType((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]), x.dtype)]


register_op("gather", _gather, inputs=2, attrs=("axis",))


def _pad(types, attrs):
    x, pads = types[0], attrs["pads"]
    if len(pads) != 2 * x.rank:
        _fail(f"pad: pads needs {2 * x.rank} entries (all begins, then all ends), has {len(pads)}")
    shape = [d + pads[i] + pads[i + x.rank] for i, d in enumerate(x.shape)]
    if attrs.get("mode", "constant") not in ("constant", "reflect", "edge"):
        _fail(f"pad: mode {attrs['mode']!r} is not one of constant, reflect, edge")
    return [TensorType(shape, x.dtype)]


register_op("pad", _pad, attrs=("pads",), optional=("mode", "value"))


def _resize(types, attrs):
    x, sizes = types[0], attrs["sizes"]
    if len(sizes) != x.rank:
        _fail(f"resize: sizes {sizes} must give every dimension of rank {x.rank}")
    if attrs["mode"] not in ("nearest", "linear"):
        _fail(f"resize: mode {attrs['mode']!r} is not supported; use nearest or linear")
    coordinates = attrs.get("coordinate_transformation_mode", "half_pixel")
    if coordinates not in ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"):
        _fail(f"resize: coordinate_transformation_mode {coordinates!r} is not supported; use half_pixel, "
              "pytorch_half_pixel, align_corners or asymmetric")
    rounding = attrs.get("nearest_mode", "round_prefer_floor")
    if rounding not in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
        _fail(f"resize: nearest_mode {rounding!r} is not one of round_prefer_floor, round_prefer_ceil, floor, ceil")
    if "scales" in attrs and len(attrs["scales"]) != x.rank:
        _fail(f"resize: scales {attrs['scales']} must give every dimension of rank {x.rank}")
    return [TensorType(sizes, x.dtype)]


register_op("resize", _resize, attrs=("sizes", "mode"),
            optional=("coordinate_transformation_mode", "nearest_mode", "scales"))


# --------------------------------------------------------------------------- quantization
def _quantize(types, attrs):
    _fail("quantize results carry their quantization in the result type; pass types= explicitly")


def _dequantize(types, attrs):
    q = types[0]
    if q.quant is None:
        _fail("dequantize needs an operand whose type carries a quantization annotation")
    return [TensorType(q.shape, attrs.get("to", "f32"))]


register_op("quantize", _quantize, doc="real -> integer, q = clamp(round_half_even(x/scale)+zp); "
            "scale and zero point come from the result type", traits=(T.RETYPABLE_RESULT,))
register_op("dequantize", _dequantize, optional=("to",), doc="integer -> real, scale * (q - zp)",
            traits=(T.READS_QUANTIZATION,))


def check_result_types(kind: str, inputs: Sequence[TensorType], attrs: dict,
                       declared: Sequence[TensorType]) -> Optional[str]:
    """Why `declared` result types disagree with inference, or None (used by verify)."""
    if kind == "quantize":
        t = declared[0] if declared else None
        if len(declared) != 1 or t.quant is None or is_float(t.dtype) or t.shape != inputs[0].shape:
            return "quantize must give one integer result of its operand's shape, annotated with scale/zero point"
        return None
    inferred = infer_types(kind, inputs, attrs)
    if len(inferred) != len(declared):
        return f"{kind} gives {len(inferred)} results, {len(declared)} declared"
    for i, (a, b) in enumerate(zip(inferred, declared)):
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"result {i} is declared {b} but {kind} of these operands gives {a}"
    return None
