"""The reference interpreter: executes any IR graph in numpy. It is the golden model.

Each op's kernel is part of its definition (`OpDef.kernel`, see qpass.ops): it takes the op (for
attributes and result types) and its operand arrays and returns one array per result. Float
kernels compute in float32 like ONNX Runtime; integer kernels are exact and use no floats inside
integer ops.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

import numpy as np

from qpass.errors import InterpreterError, QpassError
from qpass.ir.graph import Graph, Op, Value
from qpass.ir.opdef import infer_types, op_def
from qpass.ir.types import MissingData, TensorType


def run_op(op: Op, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Execute one op on concrete operands; results are cast to the declared result dtypes."""
    fn = op_def(op.kind).kernel
    if fn is None:
        raise InterpreterError(f"the interpreter cannot run %{op.name}: the definition of op kind '{op.kind}' "
                               "has no kernel; give its OpDef a kernel=(op, *arrays) function")
    out = fn(op, *arrays)
    results = list(out) if isinstance(out, (tuple, list)) else [out]
    if len(results) != len(op.outputs):
        raise InterpreterError(f"kernel '{op.kind}' returned {len(results)} results for {len(op.outputs)}")
    checked = []
    for value, array in zip(op.outputs, results):
        array = np.asarray(array)
        if array.shape != value.type.shape:
            raise InterpreterError(f"kernel '{op.kind}' for %{value.name} gave shape {list(array.shape)}, "
                                   f"the IR says {list(value.type.shape)}")
        checked.append(array.astype(value.type.numpy_dtype, copy=False))
    return checked


class _DetachedOp:
    """A stand-in op for evaluating a kind on arrays outside any graph (constant folding)."""

    def __init__(self, kind: str, attrs: dict, inputs: list[Value], outputs: list[Value]):
        self.kind, self.attrs, self.inputs, self.outputs = kind, attrs, inputs, outputs
        self.name = outputs[0].name if outputs else kind


def evaluate(kind: str, arrays: list[np.ndarray], attrs: Optional[dict] = None,
             types: Optional[list[TensorType]] = None,
             input_types: Optional[list[TensorType]] = None) -> list[np.ndarray]:
    """Evaluate op `kind` on arrays without a graph; result types inferred unless given.

    `input_types` annotates the operands (dequantize reads its scale from the operand's
    quantization); without it each operand's type is that of its array.
    """
    attrs = dict(attrs or {})
    arrays = [np.asarray(a) for a in arrays]
    if input_types is None:
        input_types = [TensorType.of(a) for a in arrays]
    elif len(input_types) != len(arrays):
        raise InterpreterError(f"evaluate {kind}: {len(input_types)} input types for {len(arrays)} arrays")
    if types is None:
        types = infer_types(kind, input_types, attrs)
    inputs = [Value(f"{kind}_operand{i}", t) for i, t in enumerate(input_types)]
    op = _DetachedOp(kind, attrs, inputs, [Value(f"{kind}_{i}", t) for i, t in enumerate(types)])
    return run_op(op, arrays)  # type: ignore[arg-type]


def _check_input(value: Value, array) -> np.ndarray:
    array = np.asarray(array)
    t = value.type
    if array.shape != t.shape:
        raise InterpreterError(f"input %{value.name} has shape {list(array.shape)} but the graph expects "
                               f"{list(t.shape)}; resize the data or re-import with --input-shape")
    if array.dtype != t.numpy_dtype:
        if array.dtype.kind == t.numpy_dtype.kind or (array.dtype.kind in "iu" and t.numpy_dtype.kind in "iu"):
            array = array.astype(t.numpy_dtype)
        else:
            raise InterpreterError(f"input %{value.name} is {array.dtype} but the graph expects {t.dtype}; "
                                   f"convert it with .astype(np.{t.numpy_dtype})")
    return array


def interpret(graph: Graph, inputs: Mapping[str, np.ndarray], *,
              observe: Optional[Callable[[Value, np.ndarray], None]] = None) -> dict[str, np.ndarray]:
    """Run `graph` on `inputs` (name -> array); returns output name -> array.

    `observe(value, array)` is called for every op result as it is computed (calibration uses
    it); intermediate arrays are freed once their last reader has run, so memory stays bounded.
    """
    missing = [v.name for v in graph.inputs if v.name not in inputs]
    extra = sorted(set(inputs) - {v.name for v in graph.inputs})
    if missing or extra:
        raise InterpreterError(
            f"graph @{graph.name} takes inputs {', '.join(v.name for v in graph.inputs)}; "
            + (f"missing {', '.join(missing)}" if missing else "")
            + ("; " if missing and extra else "") + (f"unknown {', '.join(extra)}" if extra else ""))
    env: dict[int, np.ndarray] = {}
    for value in graph.inputs:
        env[id(value)] = _check_input(value, inputs[value.name])
    for value in graph.constants():
        if isinstance(value.data, MissingData):
            raise InterpreterError(f"constant %{value.name} was loaded without its data; load the .qir "
                                   "together with its .npz")
        env[id(value)] = value.data
    ops = graph.ops
    last_use: dict[int, int] = {}
    for i, op in enumerate(ops):
        for value in op.inputs:
            last_use[id(value)] = i
    keep = {id(v) for v in graph.outputs} | {id(v) for v in graph.constants()}
    for i, op in enumerate(ops):
        try:
            results = run_op(op, [env[id(v)] for v in op.inputs])
        except QpassError:
            raise
        except Exception as e:  # a kernel bug or numpy error: name the op
            raise InterpreterError(f"executing %{op.name} = {op.kind}(...) failed: {type(e).__name__}: {e}") from e
        for value, array in zip(op.outputs, results):
            env[id(value)] = array
            if observe is not None:
                observe(value, array)
        for value in op.inputs:
            if last_use.get(id(value)) == i and id(value) not in keep:
                env.pop(id(value), None)
    return {v.name: env[id(v)] for v in graph.outputs}
