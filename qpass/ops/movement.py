"""Data-movement ops: identity, reshape, transpose, concat, split, slice, gather, pad and resize.

Semantics follow the ONNX operator of each family (Identity, Reshape, Transpose, Concat, Split,
Slice, Gather, Pad, Resize) with attributes normalized by the frontend: explicit target shapes
(no -1 or 0), positive axes, explicit split sizes and resize output sizes. Most move values
without computing on them, so an integer operand passes through unchanged (see their traits);
resize's linear mode interpolates in float32 like ONNX Runtime.
"""

from __future__ import annotations

import numpy as np

from qpass.errors import InterpreterError
from qpass.ir.opdef import OpDef, Trait, define_op
from qpass.ir.types import TensorType
from qpass.ops.common import MOVES, check_axis, fail, like, same_dtype

T = Trait

define_op(OpDef("identity", infer=lambda t, a: [t[0]], traits=MOVES | {T.ELEMENTWISE}, kernel=lambda op, x: x,
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


define_op(OpDef("split", infer=_split_types, attrs=("axis", "sizes"), kernel=_split))


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


define_op(OpDef("gather", infer=_gather_types, inputs=2, attrs=("axis",),
                # np.take: negative indices count from the end, as in ONNX
                kernel=lambda op, x, indices: np.take(x, indices, axis=op.attrs["axis"])))


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


define_op(OpDef("pad", infer=_pad_types, attrs=("pads",), optional_attrs=("mode", "value"), kernel=_pad))


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


def _linear_along(x, axis, coords):
    """1-D linear interpolation along `axis`, coordinates clamped to the input like ORT."""
    in_len = x.shape[axis]
    coords = np.clip(coords, np.float32(0), np.float32(in_len - 1))
    low = np.minimum(coords.astype(np.int64), in_len - 1)
    high = np.minimum(low + 1, in_len - 1)
    weight_low = np.abs(coords - high.astype(np.float32))
    weight_high = np.abs(coords - low.astype(np.float32))
    edge = low == high
    weight_low[edge] = weight_high[edge] = np.float32(0.5)
    view = [1] * x.ndim
    view[axis] = -1
    return (np.take(x, low, axis=axis) * weight_low.reshape(view)
            + np.take(x, high, axis=axis) * weight_high.reshape(view))


def _resize(op, x):
    """Nearest or (separable multi-)linear resize to `sizes`, with ONNX coordinate transforms.

    The scale of each axis is `scales[i]` when given, else out/in in float32 (what ORT derives
    from sizes); axes whose size and scale are both unchanged are left alone.
    """
    sizes, mode = op.attrs["sizes"], op.attrs["mode"]
    transform = op.attrs.get("coordinate_transformation_mode", "half_pixel")
    nearest_mode = op.attrs.get("nearest_mode", "round_prefer_floor")
    scales = op.attrs.get("scales") or [np.float32(o) / np.float32(i) for o, i in zip(sizes, x.shape)]
    if mode == "linear":
        x = x.astype(np.float32, copy=False)
    for axis, (out_len, in_len, scale) in enumerate(zip(sizes, x.shape, scales)):
        scale = np.float32(scale)
        if out_len == in_len and scale == 1:
            continue
        coords = _source_coordinates(out_len, in_len, scale, transform)
        if mode == "nearest":
            x = np.take(x, _nearest_indices(coords, in_len, nearest_mode), axis=axis)
        else:
            x = _linear_along(x, axis, coords)
    return x


define_op(OpDef("resize", infer=_resize_types, attrs=("sizes", "mode"),
                optional_attrs=("coordinate_transformation_mode", "nearest_mode", "scales"), kernel=_resize))
