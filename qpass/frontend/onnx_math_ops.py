"""Converters of ONNX math and logic ops: comparisons, Not/And/Or/Xor, Where, the variadic
Max/Min/Sum/Mean, unary functions and activations, PRelu, the Reduce* family, ArgMax/ArgMin,
Expand, Tile and Range. Attributes are normalized here (positive sorted axes, expand's full
result shape), so the IR op never depends on the opset it came from.
"""

from __future__ import annotations

import numpy as np

from qpass.frontend.onnx_node import Node, Operand, converter, dtype_of, shape_of
from qpass.ir import TensorType, Value, infer_types, numpy_dtype


def _ir_dtype(x: Operand) -> str:
    """The IR dtype of an operand, bool arrays included (the importer stores bool constants as u8)."""
    if isinstance(x, np.ndarray) and x.dtype == np.bool_:
        return "bool"
    return dtype_of(x)


def _emit(node: Node, kind: str, operands: list, attrs=None) -> Operand:
    """node.emit with the result types inferred from the operands' own dtypes (bool arrays stay bool)."""
    attrs = dict(attrs or {})
    if all(isinstance(x, np.ndarray) for x in operands):
        try:
            types = infer_types(kind, [TensorType(x.shape, _ir_dtype(x)) for x in operands], attrs)
        except Exception as e:
            raise node.fail(f"folding it at import time failed: {e}") from e
        return node.emit(kind, operands, attrs, types=types)
    values = [x if isinstance(x, Value) else node.constant(x, dtype=_ir_dtype(x)) for x in operands]
    return node.emit(kind, values, attrs)


def _same_dtype(node: Node, operands: list, boolean: bool = False) -> list:
    """Operands in one dtype: bool for logic ops, else that of the first run-time value."""
    runtime = [x for x in operands if isinstance(x, Value)]
    dtype = "bool" if boolean else runtime[0].type.dtype if runtime else _ir_dtype(operands[0])
    result = []
    for x in operands:
        if isinstance(x, np.ndarray):
            x = np.asarray(x, numpy_dtype(dtype))
        elif x.type.dtype != dtype:
            if boolean:
                raise node.fail(f"{node.op_type} takes bool operands, but '{x.name}' is {x.type.dtype}")
            x = node.emit("cast", [x], {"to": dtype}, suffix=f"cast{len(result)}")
        result.append(x)
    return result


_COMPARISONS = {"Equal": "equal", "Less": "less", "Greater": "greater", "LessOrEqual": "less_equal",
                "GreaterOrEqual": "greater_equal"}
_LOGIC = {"And": "logical_and", "Or": "logical_or", "Xor": "logical_xor"}


@converter(*_COMPARISONS)
def comparison(node: Node):
    """ONNX Equal, Less, Greater, LessOrEqual, GreaterOrEqual -> the bool-valued comparison."""
    return _emit(node, _COMPARISONS[node.op_type], _same_dtype(node, [node.input(0), node.input(1)]))


@converter(*_LOGIC)
def logic(node: Node):
    """ONNX And, Or, Xor -> logical_and / logical_or / logical_xor of bool operands."""
    return _emit(node, _LOGIC[node.op_type], _same_dtype(node, [node.input(0), node.input(1)], boolean=True))


@converter("Not")
def logical_not(node: Node):
    """ONNX Not -> logical_not."""
    return _emit(node, "logical_not", _same_dtype(node, [node.input(0)], boolean=True))


@converter("Where")
def where(node: Node):
    """ONNX Where -> where(condition, x, y); constant branches take the run-time branch's dtype."""
    condition = _same_dtype(node, [node.input(0)], boolean=True)
    return _emit(node, "where", condition + _same_dtype(node, [node.input(1), node.input(2)]))


@converter("Max", "Min", "Sum", "Mean")
def variadic(node: Node):
    """ONNX Max, Min, Sum, Mean of one or more operands -> max / min / sum / mean."""
    operands = [x for x in node.inputs if x is not None]
    if not operands:
        raise node.fail("it needs at least one input")
    return _emit(node, node.op_type.lower(), _same_dtype(node, operands))


_UNARY = {"Neg": "neg", "Abs": "abs", "Sign": "sign", "Reciprocal": "reciprocal", "Log": "log", "Floor": "floor",
          "Ceil": "ceil", "Round": "round", "Sin": "sin", "Cos": "cos", "Softplus": "softplus", "Mish": "mish"}
# ONNX attribute defaults of the activations that take them.
_ACTIVATIONS = {"Elu": ("elu", {"alpha": 1.0}), "Celu": ("celu", {"alpha": 1.0}),
                "ThresholdedRelu": ("thresholded_relu", {"alpha": 1.0}),
                "Selu": ("selu", {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875})}


@converter(*_UNARY)
def unary(node: Node):
    """ONNX unary functions without attributes -> the IR op of the same meaning."""
    return _emit(node, _UNARY[node.op_type], [node.input(0)])


@converter(*_ACTIVATIONS)
def activation(node: Node):
    """ONNX Elu, Selu, Celu, ThresholdedRelu -> the IR op, every attribute explicit."""
    kind, defaults = _ACTIVATIONS[node.op_type]
    attrs = {name: float(node.attr(name, default)) for name, default in defaults.items()}
    if kind == "celu" and attrs["alpha"] == 0:
        raise node.fail("alpha=0 divides by zero (Celu computes exp(x / alpha)); give a non-zero alpha")
    return _emit(node, kind, [node.input(0)], attrs)


@converter("PRelu")
def prelu(node: Node):
    """ONNX PRelu -> prelu(x, slope); the slope broadcasts to x (one-way)."""
    return _emit(node, "prelu", _same_dtype(node, [node.input(0), node.input(1)]))


_REDUCTIONS = {"ReduceMax": "reduce_max", "ReduceMin": "reduce_min", "ReduceSum": "reduce_sum",
               "ReduceProd": "reduce_prod", "ReduceL1": "reduce_l1", "ReduceL2": "reduce_l2",
               "ReduceSumSquare": "reduce_sum_square", "ReduceLogSumExp": "reduce_log_sum_exp"}


def _axes_from_input(node: Node) -> bool:
    """Whether this node takes its axes as input 1 (ReduceSum from opset 13, the others from 18)."""
    return node.opset >= (13 if node.op_type == "ReduceSum" else 18)


@converter(*_REDUCTIONS)
def reduction(node: Node):
    """ONNX Reduce* -> reduce_*{axes, keepdims}: axes an attribute or a constant input (by opset); empty
    axes reduce everything, or pass the input through with noop_with_empty_axes."""
    x = node.input(0)
    rank = len(shape_of(x))
    axes = node.const_input(1, "axes") if _axes_from_input(node) else node.attr("axes")
    if axes is None or np.asarray(axes).size == 0:
        if node.attr("noop_with_empty_axes", 0):
            return x if isinstance(x, np.ndarray) else node.emit("identity", [x])
        axes = range(rank)
    axes = node.ints(axes)
    normalized = sorted({node.axis(a, rank) for a in axes})
    if len(normalized) != len(axes):
        raise node.fail(f"axes {axes} name an axis twice; list each axis once")
    return _emit(node, _REDUCTIONS[node.op_type], [x], {"axes": normalized, "keepdims": bool(node.attr("keepdims", 1))})


@converter("ArgMax", "ArgMin")
def arg_extreme(node: Node):
    """ONNX ArgMax / ArgMin -> argmax / argmin{axis, keepdims, select_last_index} (i64 indices)."""
    x = node.input(0)
    attrs = {"axis": node.axis(int(node.attr("axis", 0)), len(shape_of(x))),
             "keepdims": bool(node.attr("keepdims", 1)),
             "select_last_index": bool(node.attr("select_last_index", 0))}
    return _emit(node, node.op_type.lower(), [x], attrs)


@converter("Expand")
def expand(node: Node):
    """ONNX Expand -> expand{shape}, with the two-way broadcast of the input and the shape resolved."""
    x, shape = node.input(0), node.ints(node.const_input(1, "shape"))
    if any(d < 0 for d in shape):
        raise node.fail(f"shape {shape} has a negative dimension; Expand takes sizes >= 0 (1 keeps a dimension)")
    try:
        full = [int(d) for d in np.broadcast_shapes(shape_of(x), tuple(shape))]
    except ValueError:
        raise node.fail(f"the input shape {list(shape_of(x))} and shape {shape} do not broadcast") from None
    if list(shape_of(x)) == full and isinstance(x, Value):
        return node.emit("identity", [x])
    return _emit(node, "expand", [x], {"shape": full})


@converter("Tile")
def tile(node: Node):
    """ONNX Tile -> tile{repeats} (repeats must be a constant)."""
    x, repeats = node.input(0), node.ints(node.const_input(1, "repeats"))
    if len(repeats) != len(shape_of(x)) or any(r < 0 for r in repeats):
        raise node.fail(f"repeats {repeats} must give one count >= 0 per axis of the rank-{len(shape_of(x))} input")
    return _emit(node, "tile", [x], {"repeats": repeats})


@converter("Range")
def range_(node: Node) -> np.ndarray:
    """ONNX Range with constant start, limit and delta, folded at import: start + i * delta for
    i < max(ceil((limit - start) / delta), 0), in the inputs' element type."""
    start, limit, delta = (node.const_input(i, role) for i, role in enumerate(("start", "limit", "delta")))
    if any(a is None or np.asarray(a).size != 1 for a in (start, limit, delta)):
        raise node.fail("start, limit and delta must each be a scalar")
    dtype = np.asarray(start).dtype
    start, limit, delta = (np.asarray(a).reshape(()) for a in (start, limit, delta))
    if delta == 0:
        raise node.fail("delta is 0, so the range never reaches its limit; give a non-zero delta")
    if dtype.kind in "iu":                                   # exact for integers
        count = max(-(-(int(limit) - int(start)) // int(delta)), 0)
    else:
        count = max(int(np.ceil((float(limit) - float(start)) / float(delta))), 0)
    return (start + np.arange(count).astype(dtype) * delta).astype(dtype)
