"""Data-movement ops: identity, reshape, transpose, concat, split, slice, gather, pad and resize.

Semantics follow the ONNX operator of each family (Identity, Reshape, Transpose, Concat, Split,
Slice, Gather, Pad, Resize) with attributes normalized by the frontend: explicit target shapes
(no -1 or 0), positive axes, explicit split sizes and resize output sizes. Most move values
without computing on them, so an integer operand passes through unchanged (see their traits);
resize's linear mode interpolates in float32 like ONNX Runtime.
"""

from __future__ import annotations

import numpy as np

from qpass.errors import InterpreterError, QpassError
from qpass.ir.opdef import OpDef, Trait, define_op
from qpass.ir.types import TensorType
from qpass.ops.common import MOVES, check_axis, fail, like, same_dtype

T = Trait

define_op(OpDef("identity", infer=lambda t, a: [t[0]], traits=MOVES | {T.ELEMENTWISE, T.POSITIVE_HOMOGENEOUS},
                kernel=lambda op, x: x,
                lower=lambda low, op: low.get(op.inputs[0])))


# --------------------------------------------------------------------------- reshape, transpose
def _reshape_types(types, attrs):
    x, shape = types[0], tuple(attrs["shape"])
    if any(d < 0 for d in shape) or int(np.prod(shape, dtype=np.int64)) != x.size:
        fail(f"reshape: cannot reshape {list(x.shape)} ({x.size} elements) to {list(shape)}; the frontend "
             "resolves -1 and 0 so the IR shape is explicit")
    return [TensorType(shape, x.dtype, x.quant if x.quant and x.quant.axis is None else None)]


define_op(OpDef("reshape", infer=_reshape_types, attrs=("shape",), traits=MOVES,
                kernel=lambda op, x: x.reshape(op.attrs["shape"]),
                lower=lambda low, op: low.relax.op.reshape(low.get(op.inputs[0]), op.attrs["shape"])))


def _transpose_types(types, attrs):
    x, perm = types[0], list(attrs["perm"])
    if sorted(perm) != list(range(x.rank)):
        fail(f"transpose: perm {perm} is not a permutation of 0..{x.rank - 1}")
    return [TensorType([x.shape[p] for p in perm], x.dtype)]


define_op(OpDef("transpose", infer=_transpose_types, attrs=("perm",), traits=MOVES,
                kernel=lambda op, x: np.transpose(x, op.attrs["perm"]),
                lower=lambda low, op: low.relax.op.permute_dims(low.get(op.inputs[0]), op.attrs["perm"])))


# --------------------------------------------------------------------------- concat, split, slice
def _concat_types(types, attrs):
    axis = check_axis("concat", attrs["axis"], types[0].rank)
    dtype = same_dtype("concat", types)
    for t in types[1:]:
        if t.rank != types[0].rank or any(a != b for i, (a, b) in enumerate(zip(t.shape, types[0].shape))
                                           if i != axis):
            fail(f"concat: shapes {[list(t.shape) for t in types]} differ outside axis {axis}")
    shape = list(types[0].shape)
    shape[axis] = sum(t.shape[axis] for t in types)
    return [TensorType(shape, dtype)]


define_op(OpDef("concat", infer=_concat_types, inputs=(1, 1 << 16), attrs=("axis",),
                traits={T.FOLLOWS_OPERAND, T.INTEGER_FORM},
                kernel=lambda op, *xs: np.concatenate(xs, axis=op.attrs["axis"]),
                lower=lambda low, op: low.relax.op.concat([low.get(v) for v in op.inputs], op.attrs["axis"])))


def _split_types(types, attrs):
    x = types[0]
    axis = check_axis("split", attrs["axis"], x.rank)
    if sum(attrs["sizes"]) != x.shape[axis]:
        fail(f"split: sizes {attrs['sizes']} do not add up to dimension {axis} ({x.shape[axis]})")
    return [x.with_shape([s if i == axis else d for i, d in enumerate(x.shape)]).without_quant()
            for s in attrs["sizes"]]


def _split(op, x):
    """Cut along `axis` into pieces of `sizes`."""
    return tuple(np.split(x, np.cumsum(op.attrs["sizes"])[:-1], axis=op.attrs["axis"]))


def _lower_split(low, op):
    """Relax split at the running sums of `sizes`; binds each result to its tuple field."""
    r = low.relax
    if len(op.outputs) == 1:             # Relax split into one piece gives the tensor, not a tuple
        low.set(op.output, low.get(op.inputs[0]))
        return None
    cuts = [int(c) for c in np.cumsum(op.attrs["sizes"])[:-1]]
    pieces = low.emit(r.op.split(low.get(op.inputs[0]), cuts, op.attrs["axis"]))
    for i, value in enumerate(op.outputs):
        low.set(value, low.emit(r.TupleGetItem(pieces, i)))


define_op(OpDef("split", infer=_split_types, attrs=("axis", "sizes"), kernel=_split, lower=_lower_split))


def _slice_types(types, attrs):
    x = types[0]
    shape = list(x.shape)
    if len({len(attrs[k]) for k in ("starts", "ends", "axes", "steps")}) != 1:
        fail("slice: starts, ends, axes and steps must have one entry per sliced axis")
    for start, end, axis, step in zip(attrs["starts"], attrs["ends"], attrs["axes"], attrs["steps"]):
        check_axis("slice", axis, x.rank)
        shape[axis] = len(range(*slice(start, end, step).indices(x.shape[axis])))
    return [TensorType(shape, x.dtype)]


def _slice(op, x):
    """Python slicing start:end:step on each listed axis."""
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(op.attrs["starts"], op.attrs["ends"], op.attrs["axes"], op.attrs["steps"]):
        index[axis] = slice(start, end, step)
    return x[tuple(index)]


def _lower_slice(low, op):
    a = op.attrs
    return low.relax.op.strided_slice(low.get(op.inputs[0]), a["axes"], a["starts"], a["ends"], a["steps"])


define_op(OpDef("slice", infer=_slice_types, attrs=("starts", "ends", "axes", "steps"), traits=MOVES,
                kernel=_slice, lower=_lower_slice))


# --------------------------------------------------------------------------- gather, pad
def _gather_types(types, attrs):
    x, idx = types
    axis = check_axis("gather", attrs["axis"], x.rank)
    if idx.dtype not in ("i32", "i64"):
        fail(f"gather: indices must be i32 or i64, got {idx.dtype}")
    return [TensorType((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]), x.dtype)]


def _lower_gather(low, op):
    """Relax take. Constant indices are checked and made non-negative here; computed ones take
    mode 'wrap', which maps ONNX's negative indices (counting from the end) to the same element."""
    r, (x, indices), axis = low.relax.op, op.inputs, op.attrs["axis"]
    if not indices.is_constant:
        return r.take(low.get(x), low.get(indices), axis, mode="wrap")
    length, data = x.type.shape[axis], np.asarray(indices.data)
    if data.size and not (-length <= data.min() and data.max() < length):
        raise QpassError(f"%{op.name}: gather indices {data.min()}..{data.max()} are out of range for axis {axis} "
                         f"of length {length}")
    # In range by now, so clip never clips: it only spares the user TVM's warning about fast mode.
    data = np.where(data < 0, data + length, data).astype(low.dtype(indices.type.dtype))
    return r.take(low.get(x), low.relax.const(data), axis, mode="clip")


define_op(OpDef("gather", infer=_gather_types, inputs=2, attrs=("axis",),
                # np.take: negative indices count from the end, as in ONNX
                kernel=lambda op, x, indices: np.take(x, indices, axis=op.attrs["axis"]), lower=_lower_gather))


def _pad_types(types, attrs):
    x, pads = types[0], attrs["pads"]
    if len(pads) != 2 * x.rank:
        fail(f"pad: pads needs {2 * x.rank} entries (all begins, then all ends), has {len(pads)}")
    shape = [d + pads[i] + pads[i + x.rank] for i, d in enumerate(x.shape)]
    if attrs.get("mode", "constant") not in ("constant", "reflect", "edge"):
        fail(f"pad: mode {attrs['mode']!r} is not one of constant, reflect, edge")
    return [TensorType(shape, x.dtype)]


def _pad(op, x):
    """Pad by `pads` (all begins, then all ends) in mode constant, reflect or edge.

    Negative pads crop, as ONNX Pad allows.
    """
    pads, rank = op.attrs["pads"], x.ndim
    begins, ends = pads[:rank], pads[rank:]
    x = x[tuple(slice(max(-b, 0), x.shape[i] - max(-e, 0)) for i, (b, e) in enumerate(zip(begins, ends)))]
    widths = [(max(b, 0), max(e, 0)) for b, e in zip(begins, ends)]
    mode = op.attrs.get("mode", "constant")
    if mode == "constant":
        return np.pad(x, widths, constant_values=like(x, op.attrs.get("value", 0)))
    return np.pad(x, widths, mode=mode)


def _lower_pad(low, op):
    """Negative pads crop (strided_slice); constant mode is Relax nn.pad, reflect and edge gather
    each padded axis at the indices numpy's own pad of arange gives (exact for any width, where
    TOPI's reflect_pad and replicate_pad would need other conventions checked)."""
    r, x = low.relax.op, op.inputs[0]
    pads, shape, rank = op.attrs["pads"], x.type.shape, x.type.rank
    begins, ends = pads[:rank], pads[rank:]
    expr = low.get(x)
    crop = [i for i in range(rank) if begins[i] < 0 or ends[i] < 0]
    if crop:
        expr = low.emit(r.strided_slice(expr, crop, [max(-begins[i], 0) for i in crop],
                                        [shape[i] - max(-ends[i], 0) for i in crop], [1] * len(crop)))
    widths = [(max(b, 0), max(e, 0)) for b, e in zip(begins, ends)]
    mode = op.attrs.get("mode", "constant")
    if mode == "constant":
        value = op.attrs.get("value", 0)
        return r.nn.pad(expr, [w for pair in widths for w in pair], "constant",
                        float(value) if np.dtype(low.dtype(x.type.dtype)).kind == "f" else int(value))
    if mode not in ("reflect", "edge"):
        raise QpassError(f"%{op.name}: pad mode {mode!r} has no lowering; use constant, reflect or edge")
    for axis, width in enumerate(widths):
        if width != (0, 0):
            length = shape[axis] - max(-begins[axis], 0) - max(-ends[axis], 0)
            indices = np.pad(np.arange(length, dtype=np.int64), width, mode=mode)
            expr = low.emit(r.take(expr, low.const(indices, "int64"), axis, mode="clip"))
    return expr


define_op(OpDef("pad", infer=_pad_types, attrs=("pads",), optional_attrs=("mode", "value"), kernel=_pad,
                lower=_lower_pad))


# --------------------------------------------------------------------------- resize
_COORDINATES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")
_NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _resize_types(types, attrs):
    x, sizes = types[0], attrs["sizes"]
    if len(sizes) != x.rank:
        fail(f"resize: sizes {sizes} must give every dimension of rank {x.rank}")
    if attrs["mode"] not in ("nearest", "linear"):
        fail(f"resize: mode {attrs['mode']!r} is not supported; use nearest or linear")
    coordinates = attrs.get("coordinate_transformation_mode", "half_pixel")
    if coordinates not in _COORDINATES:
        fail(f"resize: coordinate_transformation_mode {coordinates!r} is not supported; use half_pixel, "
             "pytorch_half_pixel, align_corners or asymmetric")
    rounding = attrs.get("nearest_mode", "round_prefer_floor")
    if rounding not in _NEAREST:
        fail(f"resize: nearest_mode {rounding!r} is not one of round_prefer_floor, round_prefer_ceil, floor, ceil")
    if "scales" in attrs and len(attrs["scales"]) != x.rank:
        fail(f"resize: scales {attrs['scales']} must give every dimension of rank {x.rank}")
    return [TensorType(sizes, x.dtype)]


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


def _linear_taps(coords, in_len):
    """The two samples of each output along an axis and their float32 weights, coordinates
    clamped to the input like ORT (weights 0.5 each where the samples coincide)."""
    coords = np.clip(coords, np.float32(0), np.float32(in_len - 1))
    low = np.minimum(coords.astype(np.int64), in_len - 1)
    high = np.minimum(low + 1, in_len - 1)
    weight_low = np.abs(coords - high.astype(np.float32))
    weight_high = np.abs(coords - low.astype(np.float32))
    edge = low == high
    weight_low[edge] = weight_high[edge] = np.float32(0.5)
    return low, high, weight_low, weight_high


def _linear_along(x, axis, coords):
    """1-D linear interpolation along `axis`."""
    low, high, weight_low, weight_high = _linear_taps(coords, x.shape[axis])
    view = [1] * x.ndim
    view[axis] = -1
    return (np.take(x, low, axis=axis) * weight_low.reshape(view)
            + np.take(x, high, axis=axis) * weight_high.reshape(view))


def _resize_steps(attrs, in_shape):
    """What resize does to each axis it changes: (axis, source coordinates), in axis order.

    The scale of each axis is `scales[i]` when given, else out/in in float32 (what ORT derives
    from sizes); axes whose size and scale are both unchanged are left alone.
    """
    sizes = attrs["sizes"]
    transform = attrs.get("coordinate_transformation_mode", "half_pixel")
    scales = attrs.get("scales") or [np.float32(o) / np.float32(i) for o, i in zip(sizes, in_shape)]
    steps = []
    for axis, (out_len, in_len, scale) in enumerate(zip(sizes, in_shape, scales)):
        scale = np.float32(scale)
        if not (out_len == in_len and scale == 1):
            steps.append((axis, _source_coordinates(out_len, in_len, scale, transform)))
    return steps


def _resize(op, x):
    """Nearest or (separable multi-)linear resize to `sizes`, with ONNX coordinate transforms."""
    nearest_mode = op.attrs.get("nearest_mode", "round_prefer_floor")
    if op.attrs["mode"] == "linear":
        x = x.astype(np.float32, copy=False)
    for axis, coords in _resize_steps(op.attrs, x.shape):
        if op.attrs["mode"] == "nearest":
            x = np.take(x, _nearest_indices(coords, x.shape[axis], nearest_mode), axis=axis)
        else:
            x = _linear_along(x, axis, coords)
    return x


def _lower_resize(low, op):
    """The kernel's own per-axis gathers, with indices and weights computed here from the static
    shapes: exact for every coordinate and rounding mode (image.resize2d lacks some of ONNX's,
    e.g. pytorch_half_pixel's one-pixel rule and the round_prefer_* ties) and for any rank."""
    r, x = low.relax.op, op.inputs[0]
    nearest_mode = op.attrs.get("nearest_mode", "round_prefer_floor")
    expr = low.get(x)
    linear = op.attrs["mode"] == "linear"
    if linear and x.type.dtype != "f32":
        expr = low.emit(r.astype(expr, "float32"))
    for axis, coords in _resize_steps(op.attrs, x.type.shape):
        in_len = x.type.shape[axis]
        if not linear:
            indices = _nearest_indices(coords, in_len, nearest_mode)
            expr = low.emit(r.take(expr, low.const(indices, "int64"), axis, mode="clip"))
            continue
        low_index, high_index, low_weight, high_weight = _linear_taps(coords, in_len)
        view = [1] * x.type.rank
        view[axis] = -1
        terms = []
        for index, weight in ((low_index, low_weight), (high_index, high_weight)):
            taken = r.take(expr, low.const(index, "int64"), axis, mode="clip")
            terms.append(r.multiply(taken, low.const(weight.reshape(view), "float32")))
        expr = low.emit(r.add(*terms))
    out_dtype = low.dtype(op.output.type.dtype)
    return r.astype(expr, out_dtype) if linear and out_dtype != "float32" else expr


define_op(OpDef("resize", infer=_resize_types, attrs=("sizes", "mode"),
                optional_attrs=("coordinate_transformation_mode", "nearest_mode", "scales"), kernel=_resize,
                lower=_lower_resize))
