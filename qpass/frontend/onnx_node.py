"""What an ONNX op converter sees: one node, its operands, and a way to emit IR ops.

An operand is either a numpy array (a value known at import time: an initializer, a Constant
node, or anything folded from them) or an IR `Value` computed at run time. Converters write
their op once through `Node.emit`: when every operand is an array the op is evaluated right
away by the reference interpreter and its result stays an array, so shape computations fold
away and only what the model really computes at run time reaches the graph.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qpass.errors import FrontendError, QpassError
from qpass.interpreter import evaluate
from qpass.ir import QuantParams, TensorType, Value, infer_types
from qpass.ir.types import dtype_of_array

if TYPE_CHECKING:
    from qpass.frontend.onnx_import import Importer

Operand = Union[np.ndarray, Value]


class Unsupported(FrontendError):
    """A converter refuses a variant of its op that qpass's own ops do not express (a 3-D
    convolution, a cubic resize...); the importer then imports the node as an onnx_node when
    onnx.reference implements it, else reports this error."""
Converter = Callable[["Node"], Union[Operand, Sequence[Operand]]]

CONVERTERS: dict[str, Converter] = {}

# ONNX tensor element types a run-time value may have, and their IR dtypes.
ONNX_TO_IR = {
    onnx.TensorProto.FLOAT: "f32", onnx.TensorProto.FLOAT16: "f16", onnx.TensorProto.INT64: "i64",
    onnx.TensorProto.INT32: "i32", onnx.TensorProto.INT16: "i16", onnx.TensorProto.INT8: "i8",
    onnx.TensorProto.UINT8: "u8", onnx.TensorProto.BOOL: "bool",
}


def converter(*op_types: str):
    """Register the decorated function as the converter of the ONNX `op_types`."""
    def wrap(fn: Converter) -> Converter:
        for op_type in op_types:
            if op_type in CONVERTERS:
                raise ValueError(f"a converter for ONNX op {op_type} is already registered")
            CONVERTERS[op_type] = fn
        return fn
    return wrap


def sanitize_name(name: str) -> str:
    """An ONNX value name in the IR's name charset: '/a/b/Conv_output_0' -> 'a.b.Conv'."""
    name = name.lstrip("/")
    if name.endswith("_output_0"):
        name = name[: -len("_output_0")]
    return re.sub(r"[^A-Za-z0-9_.]", "_", name.replace("/", ".")) or "v"


def node_label(proto: onnx.NodeProto) -> str:
    """How errors name a node: its name, else its first output (exporters often leave names empty)."""
    return proto.name or (proto.output[0] if proto.output else "?")


def element_type_name(code: int) -> str:
    """The name of ONNX tensor element type `code` (FLOAT, INT8, ...), also for codes ONNX does not define."""
    try:
        return onnx.TensorProto.DataType.Name(code)
    except ValueError:
        return f"<unknown element type {code}>"


def ir_array(array: np.ndarray) -> np.ndarray:
    """`array` in a dtype the IR stores: doubles and halves become f32, booleans u8, wide unsigned ints
    i64 (a float16 model computes in f32; see `Importer` for its f16 inputs and outputs)."""
    array = np.asarray(array)
    if array.dtype in (np.float64, np.float16):
        return array.astype(np.float32)
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype in (np.uint16, np.uint32, np.uint64):
        return array.astype(np.int64)
    dtype_of_array(array)  # raises for anything else the IR cannot hold
    return array


def shape_of(operand: Operand) -> tuple[int, ...]:
    """The static shape of an array or IR value."""
    return tuple(operand.shape) if isinstance(operand, np.ndarray) else operand.type.shape


def dtype_of(operand: Operand) -> str:
    """The IR dtype of an array (as it would be materialized) or IR value."""
    return dtype_of_array(ir_array(operand)) if isinstance(operand, np.ndarray) else operand.type.dtype


def _attribute(proto: onnx.AttributeProto):
    value = helper.get_attribute_value(proto)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    return value


class Node:
    """One ONNX node: its attributes, operands (arrays or IR values) and the names of its results."""

    def __init__(self, importer: "Importer", proto: onnx.NodeProto, opset: Optional[int] = None):
        self.proto = proto
        self.op_type = proto.op_type
        self.opset = importer.opset if opset is None else opset   # a function body's nodes have their own
        self._importer = importer
        self.where = f"node '{node_label(proto)}' ({proto.op_type})"
        self.attrs = {a.name: self._read_attribute(a) for a in proto.attribute}
        self.inputs: list[Optional[Operand]] = [importer.operand(name, self) if name else None
                                                for name in proto.input]
        self.output_names = [sanitize_name(name) for name in proto.output]
        self._roles: dict[int, tuple[np.ndarray, str]] = {}

    # ------------------------------------------------------------------ reading the node
    def _read_attribute(self, proto: onnx.AttributeProto):
        try:
            return _attribute(proto)
        except (ValueError, KeyError, TypeError) as e:
            raise self.fail(f"its attribute '{proto.name}' cannot be read ({e}); the model is corrupted or "
                            "uses an attribute type qpass does not know") from e

    def fail(self, message: str) -> FrontendError:
        """An error naming this node; converters `raise node.fail(...)`."""
        return FrontendError(f"{self.where}: {message}")

    def unsupported(self, message: str) -> Unsupported:
        """A variant of the op that qpass's ops do not express; converters `raise node.unsupported(...)`
        and the node falls back to an onnx_node (see qpass.frontend.onnx_fallback)."""
        return Unsupported(f"{self.where}: {message}")

    def attr(self, name: str, default=None):
        """ONNX attribute `name` (strings decoded, tensors as arrays), or `default`."""
        return self.attrs.get(name, default)

    def input(self, index: int) -> Optional[Operand]:
        """Operand `index`, or None when the ONNX input is absent or empty (optional inputs)."""
        return self.inputs[index] if index < len(self.inputs) else None

    def const_input(self, index: int, role: str, default=None) -> Optional[np.ndarray]:
        """Operand `index`, which must be known at import time (a shape, axis or size parameter)."""
        operand = self.input(index)
        if operand is None:
            return default
        if isinstance(operand, Value):
            raise self.fail(
                f"its {role} input '{self.proto.input[index]}' is computed at run time, but qpass needs "
                "static shapes: every shape, size, axis and scale parameter must be a constant once the "
                "input shapes are fixed. Fix all input dimensions (input_shapes / --input-shape) or "
                "simplify the model (e.g. with onnxsim) so that this parameter folds to a constant")
        return operand

    def is_graph_input(self, value: Value) -> bool:
        """Whether `value` is one of the graph's inputs (the importer owns their types)."""
        return any(v is value for v in self._importer.graph.inputs)

    def ints(self, values) -> list[int]:
        """An attribute list or constant array as python ints (what IR attributes hold)."""
        return [int(v) for v in np.asarray(values).reshape(-1)]

    def axis(self, axis: int, rank: int) -> int:
        """`axis` normalized to [0, rank)."""
        if axis is None:
            raise self.fail("it needs an axis attribute")
        if not -rank <= axis < rank:
            raise self.fail(f"axis {axis} is out of range for a rank-{rank} tensor")
        return axis % rank

    # ------------------------------------------------------------------ producing results
    def named(self, array: np.ndarray, role: str) -> np.ndarray:
        """Mark an array the converter derived (e.g. a transposed weight): if it is materialized,
        its constant is named '<first output>.<role>'."""
        self._roles[id(array)] = (array, role)  # holding the array keeps its id from being reused
        return array

    def constant(self, array: np.ndarray, role: Optional[str] = None, dtype: Optional[str] = None,
                 quant: Optional[QuantParams] = None) -> Value:
        """`array` as an IR constant (reused when the same array is materialized again).

        A constant from the ONNX model keeps its ONNX name; others are named after this node.
        """
        role = role or self._roles.get(id(array), (None, "const"))[1]
        return self._importer.materialize(array, f"{self.output_names[0]}.{role}", dtype, quant)

    def emit(self, kind: str, inputs: Sequence[Operand], attrs: Optional[dict] = None, *,
             suffix: Optional[str] = None, types: Optional[Sequence[TensorType]] = None,
             fold: bool = True) -> Operand:
        """Emit one single-result IR op (or fold it); see `emit_all`."""
        return self.emit_all(kind, inputs, attrs, suffix=suffix, types=types, fold=fold)[0]

    def emit_all(self, kind: str, inputs: Sequence[Operand], attrs: Optional[dict] = None, *,
                 suffix: Optional[str] = None, types: Optional[Sequence[TensorType]] = None,
                 fold: bool = True) -> list[Operand]:
        """IR op `kind` over `inputs`; folded to arrays when every input is an array and `fold`.

        Results are named after the node's ONNX outputs; an intermediate op of a multi-op
        conversion passes `suffix` and is named '<first output>.<suffix>' instead.
        """
        attrs = dict(attrs or {})
        folding = fold and all(isinstance(x, np.ndarray) for x in inputs)
        try:
            if folding:
                return list(evaluate(kind, [ir_array(x) for x in inputs], attrs, types))
            values = [x if isinstance(x, Value) else self.constant(x) for x in inputs]
            if types is None:
                types = infer_types(kind, [v.type for v in values], attrs)
            names = ([f"{self.output_names[0]}.{suffix}"] * len(types) if suffix
                     else self.output_names[: len(types)])
            return list(self._importer.graph.add_op(kind, values, attrs, types=types, names=names).outputs)
        except FrontendError:
            raise
        except QpassError as e:
            action = "folding it at import time" if folding else f"converting it to {kind}"
            raise self.fail(f"{action} failed: {e}") from e
