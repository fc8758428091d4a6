"""Comparison and logic ops: equal, less, greater, less_equal, greater_equal (bool results),
logical_not, logical_and, logical_or, logical_xor (bool operands) and where (a bool condition
choosing between two operands), all with numpy broadcasting.

Semantics follow ONNX Equal, Less, Greater, LessOrEqual, GreaterOrEqual, Not, And, Or, Xor and
Where. Results are exact (no arithmetic), so compiled code equals the interpreter bit for bit.
"""

from __future__ import annotations

import numpy as np

from qpass.ir.opdef import OpDef, Trait, define_op
from qpass.ir.types import TensorType
from qpass.ops.common import broadcast_shape, fail, same_dtype

T = Trait


def _comparison(kind):
    def infer(types, attrs):
        same_dtype(kind, types)
        return [TensorType(broadcast_shape(kind, types), "bool")]
    return infer


def _boolean(kind):
    def infer(types, attrs):
        wrong = sorted({t.dtype for t in types} - {"bool"})
        if wrong:
            fail(f"{kind} takes bool operands, got {', '.join(wrong)}; compare (equal, less, ...) or cast first")
        return [TensorType(broadcast_shape(kind, types), "bool")]
    return infer


def _relax_binary(name):
    def lower(low, op):
        return getattr(low.relax.op, name)(low.get(op.inputs[0]), low.get(op.inputs[1]))
    return lower


_COMPARISONS = {"equal": np.equal, "less": np.less, "greater": np.greater, "less_equal": np.less_equal,
                "greater_equal": np.greater_equal}
for _kind, _fn in _COMPARISONS.items():
    define_op(OpDef(_kind, infer=_comparison(_kind), inputs=2, traits={T.ELEMENTWISE},
                    kernel=lambda op, a, b, fn=_fn: fn(a, b), lower=_relax_binary(_kind),
                    doc=f"elementwise {_kind} with numpy broadcasting; bool result"))

_LOGIC = {"logical_and": np.logical_and, "logical_or": np.logical_or, "logical_xor": np.logical_xor}
for _kind, _fn in _LOGIC.items():
    define_op(OpDef(_kind, infer=_boolean(_kind), inputs=2, traits={T.ELEMENTWISE},
                    kernel=lambda op, a, b, fn=_fn: fn(a, b), lower=_relax_binary(_kind),
                    doc=f"elementwise {_kind} of bool operands with numpy broadcasting"))

define_op(OpDef("logical_not", infer=_boolean("logical_not"), traits={T.ELEMENTWISE},
                kernel=lambda op, x: np.logical_not(x),
                lower=lambda low, op: low.relax.op.logical_not(low.get(op.inputs[0])),
                doc="elementwise not of a bool operand"))


def _where_types(types, attrs):
    condition, x, y = types
    if condition.dtype != "bool":
        fail(f"where takes a bool condition, got {condition.dtype}; compare (equal, less, ...) or cast first")
    dtype = same_dtype("where", [x, y])
    return [TensorType(broadcast_shape("where", types), dtype)]


define_op(OpDef("where", infer=_where_types, inputs=3, traits={T.ELEMENTWISE},
                kernel=lambda op, c, x, y: np.where(c.astype(bool), x, y),
                lower=lambda low, op: low.relax.op.where(*(low.get(v) for v in op.inputs)),
                doc="x where the condition holds, else y (numpy broadcasting of all three)"))
