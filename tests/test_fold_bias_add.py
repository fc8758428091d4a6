"""fold-bias-add: conv2d/dense + a per-channel constant becomes the layer's bias."""

import numpy as np
import pytest

import qpass
from qpass.ir import Graph, TensorType

CONV = dict(strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], groups=1)
RNG = np.random.default_rng(0)


def layer_then_add(kind: str, constant: np.ndarray, users: int = 1, bias: bool = True) -> Graph:
    g = Graph("m")
    if kind == "conv2d":
        x = g.add_input("x", TensorType((1, 3, 5, 5), "f32"))
        inputs = [x, g.add_constant(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")]
        attrs = CONV
    else:
        x = g.add_input("x", TensorType((2, 6, 8), "f32"))
        inputs = [x, g.add_constant(RNG.standard_normal((4, 8)).astype(np.float32), "w")]
        attrs = {}
    if bias:
        inputs.append(g.add_constant(RNG.standard_normal(4).astype(np.float32), "b"))
    y = g.add_op(kind, inputs, attrs, names=["y"]).output
    out = [g.add_op("add", [y, g.add_constant(constant, "c")], names=["z"]).output]
    if users == 2:
        out.append(g.add_op("relu", [y], names=["r"]).output)
    g.set_outputs(out)
    return g.verify()


@pytest.mark.parametrize("kind, constant", [
    ("conv2d", RNG.standard_normal((1, 4, 1, 1)).astype(np.float32)),
    ("conv2d", RNG.standard_normal((4, 1, 1)).astype(np.float32)),
    ("conv2d", np.float32(0.5)),
    ("dense", RNG.standard_normal(4).astype(np.float32)),
    ("dense", RNG.standard_normal((1, 1, 4)).astype(np.float32)),
])
@pytest.mark.parametrize("bias", [True, False])
def test_per_channel_add_becomes_the_bias(kind, constant, bias):
    g = layer_then_add(kind, np.asarray(constant), bias=bias)
    x = {"x": RNG.standard_normal(g.inputs[0].type.shape).astype(np.float32)}
    before = qpass.interpret(g, x)["z"]
    folded = qpass.run_passes(g.copy(), "fold-bias-add")
    assert [op.kind for op in folded.ops] == [kind] and len(folded.ops[0].inputs) == 3
    assert folded.outputs[0].name == "z"
    np.testing.assert_allclose(qpass.interpret(folded, x)["z"], before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("why, graph", [
    ("varies along space", lambda: layer_then_add("conv2d", RNG.standard_normal((1, 4, 5, 5)).astype(np.float32))),
    ("broadcasts the result", lambda: layer_then_add("dense", RNG.standard_normal((3, 1, 1, 4)).astype(np.float32))),
    ("the layer's result has another user", lambda: layer_then_add("dense", np.ones(4, np.float32), users=2)),
])
def test_other_adds_stay(why, graph):
    g = graph()
    assert "add" in [op.kind for op in qpass.run_passes(g.copy(), "fold-bias-add").ops], why
