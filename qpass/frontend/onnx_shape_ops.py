"""Converters of ONNX data-movement and constant ops: constants, shapes, casts, reshapes, slicing,
gathering, padding and resizing. Every shape, axis and size parameter must be known at import
time; the IR ops get them fully resolved (no -1 or 0 in shapes, clamped slice bounds).
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from qpass.frontend.onnx_node import ONNX_TO_IR, Node, Operand, converter, element_type_name, shape_of


@converter("Constant")
def constant(node: Node):
    """ONNX Constant -> an array (value, value_float(s), value_int(s))."""
    for key, dtype in (("value", None), ("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in node.attrs:
            return np.asarray(node.attrs[key], dtype=dtype)
    raise node.unsupported("only numeric tensor values have a qpass form, not "
                           f"{', '.join(node.attrs) or 'an empty value'}")


@converter("ConstantOfShape")
def constant_of_shape(node: Node):
    """ONNX ConstantOfShape with a constant shape -> an array."""
    value = node.attr("value", np.zeros(1, np.float32))
    return np.full(node.ints(node.const_input(0, "shape")), value.reshape(-1)[0], dtype=value.dtype)


@converter("Shape")
def shape(node: Node):
    """ONNX Shape -> an int64 array: every shape is static."""
    dims = np.array(shape_of(node.input(0)), dtype=np.int64)
    return dims[node.attr("start", 0): node.attr("end", len(dims))]   # python slicing clamps like ONNX


@converter("Cast")
def cast(node: Node):
    """ONNX Cast -> a converted array for constants, else cast{to}, or its operand when that has the type
    already (a cast to float16 casts to f32)."""
    x, to = node.input(0), node.attr("to")
    if node.attr("round_mode", "up") != "up":          # opset 24+: only casts to float8e8m0 round
        raise node.fail(f"round_mode={node.attr('round_mode')!r} applies to float8e8m0 results, which the IR "
                        "does not have; drop the attribute")
    if isinstance(x, np.ndarray):
        return x.astype(helper.tensor_dtype_to_np_dtype(to))
    if to not in ONNX_TO_IR:
        raise node.fail(f"casting a run-time value to {element_type_name(to)} is not supported; "
                        f"the IR has {', '.join(ONNX_TO_IR.values())}")
    dtype = "f32" if ONNX_TO_IR[to] == "f16" else ONNX_TO_IR[to]   # float16 computes in f32 (Importer._bind)
    return x if x.type.dtype == dtype else node.emit("cast", [x], {"to": dtype})


def _reshape(node: Node, shape) -> Operand:
    return node.emit("reshape", [node.input(0)], {"shape": [int(d) for d in shape]})


@converter("Reshape")
def reshape(node: Node):
    """ONNX Reshape with a constant shape (0 and -1 resolved, allowzero honoured) -> reshape."""
    dims = shape_of(node.input(0))
    target = node.ints(node.const_input(1, "shape"))
    if not node.attr("allowzero", 0):
        target = [dims[i] if d == 0 else d for i, d in enumerate(target)]
    if target.count(-1) > 1:
        raise node.fail(f"shape {target} has more than one -1")
    if -1 in target:
        known = int(np.prod([d for d in target if d != -1], dtype=np.int64))
        size = int(np.prod(dims, dtype=np.int64))
        if known == 0 or size % known:
            raise node.fail(f"cannot reshape {list(dims)} to {target}")
        target[target.index(-1)] = size // known
    return _reshape(node, target)


@converter("Flatten")
def flatten(node: Node):
    """ONNX Flatten -> reshape to 2-D."""
    dims = shape_of(node.input(0))
    axis = node.attr("axis", 1)
    if not -len(dims) <= axis <= len(dims):
        raise node.fail(f"axis {axis} is out of range for a rank-{len(dims)} tensor")
    axis += len(dims) if axis < 0 else 0
    return _reshape(node, [int(np.prod(dims[:axis], dtype=np.int64)), int(np.prod(dims[axis:], dtype=np.int64))])


def _squeeze_axes(node: Node):
    """Squeeze/Unsqueeze axes: an attribute before opset 13, the second input from it on."""
    values = node.const_input(1, "axes") if node.opset >= 13 else node.attr("axes")
    return None if values is None else node.ints(values)


@converter("Squeeze")
def squeeze(node: Node):
    """ONNX Squeeze -> reshape; axes an attribute before opset 13."""
    dims = shape_of(node.input(0))
    axes = _squeeze_axes(node)
    axes = [i for i, d in enumerate(dims) if d == 1] if axes is None else [node.axis(a, len(dims)) for a in axes]
    if any(dims[a] != 1 for a in axes):
        raise node.fail(f"cannot squeeze axes {axes} of shape {list(dims)}: they must have size 1")
    return _reshape(node, [d for i, d in enumerate(dims) if i not in axes])


@converter("Unsqueeze")
def unsqueeze(node: Node):
    """ONNX Unsqueeze -> reshape; axes an attribute before opset 13."""
    dims = list(shape_of(node.input(0)))
    axes = _squeeze_axes(node)
    if axes is None:
        raise node.fail("it has no axes")
    rank = len(dims) + len(axes)
    for axis in sorted(node.axis(a, rank) for a in axes):
        dims.insert(axis, 1)
    return _reshape(node, dims)


@converter("Transpose")
def transpose(node: Node):
    """ONNX Transpose (default perm reverses the axes) -> transpose."""
    rank = len(shape_of(node.input(0)))
    perm = node.ints(node.attr("perm", list(range(rank))[::-1]))
    return node.emit("transpose", [node.input(0)], {"perm": [node.axis(p, rank) for p in perm]})


@converter("Concat")
def concat(node: Node):
    """ONNX Concat -> concat with a positive axis."""
    inputs = [x for x in node.inputs if x is not None]
    axis = node.axis(node.attr("axis"), len(shape_of(inputs[0])))
    return node.emit("concat", inputs, {"axis": axis})


@converter("Split")
def split(node: Node):
    """ONNX Split (sizes from attribute, input or equal parts) -> split{axis, sizes}."""
    dims = shape_of(node.input(0))
    axis = node.axis(node.attr("axis", 0), len(dims))
    sizes = node.const_input(1, "split") if node.opset >= 13 else node.attr("split")
    if sizes is None or len(sizes) == 0:
        # Equal parts; opset 18's num_outputs lets the last part be smaller.
        parts = node.attr("num_outputs", len(node.proto.output))
        chunk = -(-dims[axis] // parts)
        sizes = [chunk] * (parts - 1) + [dims[axis] - chunk * (parts - 1)]
    sizes = node.ints(sizes)
    if min(sizes) < 0 or sum(sizes) != dims[axis]:
        raise node.fail(f"cannot split dimension {axis} ({dims[axis]}) into parts {sizes}")
    return node.emit_all("split", [node.input(0)], {"axis": axis, "sizes": sizes})


def _slice_bounds(start: int, end: int, step: int, dim: int) -> tuple[int, int]:
    """ONNX Slice bounds clamped like ONNX, written so that python slicing gives the same elements.

    With a negative step ONNX clamps `end` to -1, meaning "through index 0"; python would read -1
    as the last element, so that end becomes -(dim + 1), which python clamps to before index 0.
    """
    start, end = start + dim if start < 0 else start, end + dim if end < 0 else end
    if step > 0:
        return min(max(start, 0), dim), min(max(end, 0), dim)
    start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return start, -(dim + 1) if end == -1 else end


@converter("Slice")
def slice_(node: Node):
    """ONNX Slice -> slice with bounds clamped like ONNX and encoded for python slicing."""
    dims = shape_of(node.input(0))
    if node.opset < 10:
        starts, ends, axes, steps = node.attr("starts"), node.attr("ends"), node.attr("axes"), None
    else:
        starts, ends = node.const_input(1, "starts"), node.const_input(2, "ends")
        axes, steps = node.const_input(3, "axes"), node.const_input(4, "steps")
    starts, ends = node.ints(starts), node.ints(ends)
    axes = list(range(len(starts))) if axes is None else [node.axis(a, len(dims)) for a in node.ints(axes)]
    steps = [1] * len(starts) if steps is None else node.ints(steps)
    if len(set(axes)) != len(axes) or 0 in steps:
        raise node.fail(f"axes {axes} repeat an axis or steps {steps} contain 0")
    bounds = [_slice_bounds(s, e, step, dims[a]) for s, e, step, a in zip(starts, ends, steps, axes)]
    attrs = {"starts": [b[0] for b in bounds], "ends": [b[1] for b in bounds], "axes": axes, "steps": steps}
    return node.emit("slice", [node.input(0)], attrs)


@converter("Gather")
def gather(node: Node):
    """ONNX Gather -> gather: constant indices checked and made non-negative i64 here; run-time indices
    (an embedding lookup) as they are, negative ones counting from the end in the kernel and lowering."""
    dims = shape_of(node.input(0))
    axis = node.axis(node.attr("axis", 0), len(dims))
    if not isinstance(node.input(1), np.ndarray):
        return node.emit("gather", [node.input(0), node.input(1)], {"axis": axis})
    indices = node.input(1).astype(np.int64)
    if indices.size and (indices.min() < -dims[axis] or indices.max() >= dims[axis]):
        raise node.fail(f"indices {indices.reshape(-1)[:8].tolist()} are out of range for dimension "
                        f"{axis} ({dims[axis]})")
    indices = node.named(np.where(indices < 0, indices + dims[axis], indices), "indices")
    return node.emit("gather", [node.input(0), indices], {"axis": axis})


@converter("Pad")
def pad(node: Node):
    """ONNX Pad (constant, reflect, edge) -> pad with all begins then all ends."""
    rank = len(shape_of(node.input(0)))
    mode = node.attr("mode", "constant")
    if node.opset < 11:
        pads, value, axes = node.ints(node.attr("pads")), node.attr("value", 0.0), None
    else:
        pads = node.ints(node.const_input(1, "pads"))
        value, axes = node.const_input(2, "constant_value", 0.0), node.const_input(3, "axes")
    if axes is not None:   # opset 18: pads only for the listed axes
        axes = [node.axis(a, rank) for a in node.ints(axes)]
        full = [0] * (2 * rank)
        for i, axis in enumerate(axes):
            full[axis], full[axis + rank] = pads[i], pads[i + len(axes)]
        pads = full
    if mode not in ("constant", "reflect", "edge"):
        raise node.unsupported(f"mode {mode!r} has no qpass op; qpass pads with constant, reflect or edge")
    if len(pads) != 2 * rank:
        raise node.fail(f"pads {pads} must give {2 * rank} sizes (all begins, then all ends)")
    attrs = {"pads": pads, "mode": mode}
    if mode == "constant":
        attrs["value"] = float(np.asarray(value).reshape(()))
    return node.emit("pad", [node.input(0)], attrs)


@converter("Resize", "Upsample")
def resize(node: Node):
    """Nearest or linear resizing to a fully static size; `scales` is kept when the model gave scales,
    because ONNX maps output to input coordinates with the given scale, not with out/in."""
    dims = shape_of(node.input(0))
    mode = node.attr("mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear"):
        raise node.unsupported(f"mode {mode!r} has no qpass op; qpass resizes with nearest or linear")
    if node.op_type == "Upsample" or node.opset < 11:
        # Upsample and Resize-10: scales only, asymmetric coordinates, nearest rounds down.
        scales = node.attr("scales") if "scales" in node.attrs else node.const_input(1, "scales")
        sizes, axes, coordinates, nearest = None, None, "asymmetric", "floor"
    else:
        coordinates = node.attr("coordinate_transformation_mode", "half_pixel")
        nearest = node.attr("nearest_mode", "round_prefer_floor")
        if coordinates == "tf_crop_and_resize" or node.attr("antialias", 0) \
                or node.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise node.unsupported("tf_crop_and_resize, antialias and keep_aspect_ratio_policy other than "
                                   "stretch have no qpass op")
        scales, sizes = node.const_input(2, "scales"), node.const_input(3, "sizes")
        axes = node.attr("axes")
    axes = list(range(len(dims))) if axes is None else [node.axis(a, len(dims)) for a in axes]
    attrs = {"mode": "linear" if mode == "bilinear" else mode, "coordinate_transformation_mode": coordinates}
    if mode == "nearest":
        attrs["nearest_mode"] = nearest
    if sizes is not None and sizes.size:
        out = list(dims)
        for axis, size in zip(axes, node.ints(sizes)):
            out[axis] = size
    elif scales is not None and np.size(scales):
        full = [1.0] * len(dims)
        for axis, scale in zip(axes, np.asarray(scales, np.float32).reshape(-1)):
            full[axis] = float(scale)
        # ONNX Runtime computes the output size in float32, then truncates.
        out = [int(np.float32(d) * np.float32(s)) for d, s in zip(dims, full)]
        attrs["scales"] = full
    else:
        raise node.fail("it gives neither scales nor sizes")
    attrs["sizes"] = out
    return node.emit("resize", [node.input(0)], attrs)


@converter("GatherElements")
def gather_elements(node: Node):
    """Constant operands fold with np.take_along_axis (onnx.reference's kernel is limited to 64
    entries along the axis: np.choose); a run-time operand makes it an onnx_node."""
    data, indices = node.input(0), node.input(1)
    if not (isinstance(data, np.ndarray) and isinstance(indices, np.ndarray)):
        from qpass.frontend.onnx_fallback import onnx_node
        return onnx_node(node)[0]
    axis = node.axis(node.attr("axis", 0), data.ndim)
    indices = indices.astype(np.int64)
    if indices.size and (indices.min() < -data.shape[axis] or indices.max() >= data.shape[axis]):
        raise node.fail(f"indices are out of range for axis {axis} of size {data.shape[axis]}")
    return np.take_along_axis(data, np.where(indices < 0, indices + data.shape[axis], indices), axis)
