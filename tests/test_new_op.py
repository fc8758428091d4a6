"""Adding ops from outside qpass, in this one file: an integer op (ONNX BitShift on uint8) and a
float op (ONNX Softsign), each with its definition, frontend converter, interpreter kernel and
lowering. A model using both imports, interprets, compiles for the host and runs: the integer
result equals the interpreter's bit for bit, the float one within float rounding."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import qpass
from qpass.frontend.onnx_node import converter
from qpass.ir import OpDef, TensorType, Trait, define_op
from qpass.ir.types import is_float


# --------------------------------------------------------------------------- integer op: bit_shift
def _bit_shift_type(types, attrs):
    x, amount = types
    if is_float(x.dtype) or is_float(amount.dtype):
        raise qpass.IRError(f"bit_shift takes integer operands, got {x.dtype} and {amount.dtype}")
    return [TensorType(np.broadcast_shapes(x.shape, amount.shape), x.dtype)]


def _bit_shift(op, x, amount):
    """x << amount or x >> amount in x's dtype (a left shift wraps, as ONNX's does)."""
    wide, by = x.astype(np.int64), amount.astype(np.int64)
    return (wide << by if op.attrs["direction"] == "left" else wide >> by).astype(x.dtype)


def _lower_bit_shift(low, op):
    left = op.attrs["direction"] == "left"

    def body(idx, load, tensors):
        x, by = load(0).astype("int64"), load(1).astype("int64")
        return x << by if left else x >> by                 # the cast to the result dtype wraps
    low.elementwise(op, body)


define_op(OpDef("bit_shift", infer=_bit_shift_type, inputs=2, attrs=("direction",),
                traits={Trait.ELEMENTWISE, Trait.INTEGER}, kernel=_bit_shift, lower=_lower_bit_shift,
                doc="x << amount (direction=left, wrapping) or x >> amount (right), integers"))


@converter("BitShift")
def _convert_bit_shift(node):
    return node.emit("bit_shift", [node.input(0), node.input(1)], {"direction": node.attr("direction").lower()})


# --------------------------------------------------------------------------- float op: softsign
def _softsign(op, x):
    """x / (1 + |x|)."""
    return x / (1 + np.abs(x))


define_op(OpDef("softsign", infer=lambda types, attrs: [types[0].without_quant()],
                traits={Trait.ELEMENTWISE}, kernel=_softsign,
                lower=lambda low, op: low.relax.op.divide(
                    low.get(op.inputs[0]),
                    low.relax.op.add(low.relax.op.abs(low.get(op.inputs[0])), low.relax.const(1.0, "float32"))),
                doc="x / (1 + |x|)"))


@converter("Softsign")
def _convert_softsign(node):
    return node.emit("softsign", [node.input(0)])


# --------------------------------------------------------------------------- the model
def model() -> onnx.ModelProto:
    amount = helper.make_tensor("amount", TensorProto.UINT8, [1], [2])
    nodes = [helper.make_node("BitShift", ["x", "amount"], ["shifted"], direction="RIGHT"),
             helper.make_node("Cast", ["shifted"], ["real"], to=TensorProto.FLOAT),
             helper.make_node("Softsign", ["real"], ["y"])]
    graph = helper.make_graph(nodes, "new_ops", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("shifted", TensorProto.UINT8, [1, 4, 8, 8]),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                              initializer=[amount])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_new_integer_op_and_float_op_import_interpret_and_compile(tmp_path):
    graph = qpass.import_onnx(model())
    assert [op.kind for op in graph.ops] == ["bit_shift", "cast", "softsign"]
    x = np.random.default_rng(0).integers(0, 256, (1, 4, 8, 8)).astype(np.uint8)
    want = qpass.interpret(graph, {"x": x})
    assert np.array_equal(want["shifted"], x >> 2)
    np.testing.assert_allclose(want["y"], (x >> 2) / (1 + (x >> 2).astype(np.float32)), rtol=1e-6)
    assert qpass.parse_graph(qpass.print_graph(graph)) == graph

    compiled = qpass.compile(graph, "x86_64-linux-gnu")
    assert compiled.report["model"]["integer_ops"] == 1
    got = compiled.run({"x": x})
    assert np.array_equal(got["shifted"], want["shifted"])            # integer: bit for bit
    np.testing.assert_allclose(got["y"], want["y"], rtol=1e-6)        # float: within float rounding


def test_an_op_without_lowering_is_refused_before_any_work():
    define_op(OpDef("interpret_only", infer=lambda types, attrs: [types[0]], kernel=lambda op, x: x))
    graph = qpass.Graph()
    x = graph.add_input("x", TensorType((2,), "f32"))
    graph.set_outputs([graph.add_op("interpret_only", [x], names=["y"]).output])
    with pytest.raises(qpass.QpassError, match=r"no lowering to TVM: interpret_only \(1 op: %y\)"):
        qpass.compile(graph, "x86_64-linux-gnu", calibration={"x": np.zeros((4, 2), np.float32)})
