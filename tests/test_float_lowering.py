"""Float ops compiled through TVM against the interpreter.

Each case builds a one-op float graph, builds it for the host through the backend (a float
graph skips calibration this way) and runs it in the Relax VM. These are float ops, so the
compiled results equal the interpreter's within float32 rounding (rtol = atol = 1e-5), not bit
for bit: TVM may contract multiply-adds and sums in another order.
"""

from __future__ import annotations

import numpy as np
import pytest

from qpass.backends import backend
from qpass.errors import QpassError
from qpass.interpreter import interpret
from qpass.ir import Graph, TensorType
from qpass.ir.opdef import OPS

RNG = np.random.default_rng(7)


def _random(*shape, low=-3.0, high=3.0):
    return RNG.uniform(low, high, shape).astype(np.float32)


def one_op(kind, shape, attrs=None, constants=(), results=1, x=None):
    """Graph x -> kind(x, *constants) with `results` outputs, and its input array."""
    g = Graph(kind)
    xv = g.add_input("x", TensorType(shape, "f32"))
    operands = [xv] + [g.add_constant(c, f"c{i}") for i, c in enumerate(constants)]
    op = g.add_op(kind, operands, attrs or {}, names=[f"y{i}" for i in range(results)])
    g.set_outputs(op.outputs)
    return g, (_random(*shape) if x is None else x)


CONV_T = dict(strides=[2, 2], pads=[1, 1, 1, 1], dilations=[1, 1], groups=1, output_padding=[1, 1])


def _resize(mode, transform, nearest="round_prefer_floor", sizes=(1, 2, 7, 9), shape=(1, 2, 4, 5), **extra):
    attrs = dict(sizes=list(sizes), mode=mode, coordinate_transformation_mode=transform, **extra)
    if mode == "nearest":
        attrs["nearest_mode"] = nearest
    return lambda: one_op("resize", shape, attrs)


CASES = {
    "hard_swish": lambda: one_op("hard_swish", (2, 3, 9)),
    "leaky_relu": lambda: one_op("leaky_relu", (2, 3, 9), {"alpha": 0.1}),
    "hard_sigmoid": lambda: one_op("hard_sigmoid", (2, 3, 9), {"alpha": 0.2, "beta": 0.4}),
    "gelu-erf": lambda: one_op("gelu", (2, 3, 9)),
    "gelu-tanh": lambda: one_op("gelu", (2, 3, 9), {"approximate": "tanh"}),
    "pow": lambda: one_op("pow", (2, 3, 4), constants=[_random(4, low=-2, high=2)], x=_random(2, 3, 4, low=0.1)),
    "batch_norm": lambda: one_op("batch_norm", (2, 3, 4, 4), {"epsilon": 1e-3},
                                 [_random(3), _random(3), _random(3), _random(3, low=0.1)]),
    "layer_norm-bias": lambda: one_op("layer_norm", (2, 3, 8), {"axis": 2, "epsilon": 1e-5},
                                      [_random(8), _random(8)]),
    "layer_norm-no-bias-two-axes": lambda: one_op("layer_norm", (2, 3, 8), {"axis": 1, "epsilon": 1e-5},
                                                  [_random(3, 8)]),
    "conv_transpose2d-stride2-output-padding": lambda: one_op(
        "conv_transpose2d", (1, 4, 5, 5), CONV_T, [_random(4, 3, 3, 3), _random(3)]),
    "conv_transpose2d-groups-dilation": lambda: one_op(
        "conv_transpose2d", (1, 4, 5, 5), dict(CONV_T, groups=2, dilations=[2, 2], output_padding=[0, 1]),
        [_random(4, 2, 3, 3)]),
    "split-3": lambda: one_op("split", (2, 6, 4), {"axis": 1, "sizes": [1, 2, 3]}, results=3),
    "gather-axis0": lambda: one_op("gather", (5, 3), {"axis": 0}, [np.array([4, 0, -1, 2], np.int64)]),
    "gather-axis1-2d": lambda: one_op("gather", (2, 5, 3), {"axis": 1}, [np.array([[1, -2], [0, 4]], np.int32)]),
    "gather-scalar-index": lambda: one_op("gather", (5, 3), {"axis": 1}, [np.array(-2, np.int64)]),
    "pad-constant-crop": lambda: one_op("pad", (1, 2, 4, 5), {"pads": [0, 0, 2, -1, 0, 1, 1, 3], "value": 1.5}),
    "pad-reflect": lambda: one_op("pad", (1, 2, 4, 5), {"pads": [0, 0, 3, 2, 0, 0, 1, 4], "mode": "reflect"}),
    "pad-edge": lambda: one_op("pad", (1, 2, 4, 5), {"pads": [0, 1, 2, 0, 0, 0, 1, 3], "mode": "edge"}),
    "resize-nearest-half_pixel": _resize("nearest", "half_pixel"),
    "resize-nearest-asymmetric-floor": _resize("nearest", "asymmetric", "floor"),
    "resize-nearest-align_corners-prefer-ceil": _resize("nearest", "align_corners", "round_prefer_ceil"),
    "resize-nearest-pytorch-ceil-down": _resize("nearest", "pytorch_half_pixel", "ceil", sizes=(1, 2, 1, 3)),
    "resize-nearest-scales": _resize("nearest", "asymmetric", sizes=(1, 2, 8, 10), scales=[1, 1, 2, 2]),
    "resize-linear-half_pixel": _resize("linear", "half_pixel"),
    "resize-linear-pytorch_half_pixel": _resize("linear", "pytorch_half_pixel", sizes=(1, 2, 1, 9)),
    "resize-linear-align_corners": _resize("linear", "align_corners"),
    "resize-linear-asymmetric-down": _resize("linear", "asymmetric", sizes=(1, 2, 3, 2)),
}


@pytest.fixture(scope="module")
def host():
    b = backend()
    return b, b.resolve_target("x86_64-linux-gnu")


@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_float_op_matches_interpreter(host, case):
    import tvm
    from tvm import relax
    b, spec = host
    graph, x = CASES[case]()
    built = b.build(graph, spec)
    main = relax.VirtualMachine(built.executable, tvm.cpu())["main"]
    got = [r.numpy() for r in main(tvm.runtime.tensor(x))]
    want = interpret(graph, {"x": x})
    assert len(got) == len(graph.outputs)
    for value, array in zip(graph.outputs, got):
        expected = want[value.name]
        assert array.shape == expected.shape and array.dtype == expected.dtype, (value.name, array.shape)
        np.testing.assert_allclose(array, expected, rtol=1e-5, atol=1e-5, err_msg=f"{case}: %{value.name}")


def test_gather_with_computed_negative_indices(host):
    import tvm
    from tvm import relax
    b, spec = host
    g = Graph("gather")
    x, indices = g.add_input("x", TensorType((5, 3), "f32")), g.add_input("i", TensorType((4,), "i64"))
    g.set_outputs(g.add_op("gather", [x, indices], {"axis": 0}, names=["y"]).outputs)
    feeds = {"x": _random(5, 3), "i": np.array([-1, 0, -5, 3], np.int64)}
    main = relax.VirtualMachine(b.build(g, spec).executable, tvm.cpu())["main"]
    got = main(tvm.runtime.tensor(feeds["x"]), tvm.runtime.tensor(feeds["i"]))[0].numpy()
    np.testing.assert_array_equal(got, interpret(g, feeds)["y"])


def test_every_op_has_a_lowering():
    assert [d.name for d in OPS.definitions() if d.lower is None] == []


def test_unsupported_gelu_form_is_refused_naming_op_and_attribute(host):
    b, spec = host
    graph, _ = one_op("gelu", (2, 3), {"approximate": "sigmoid"})
    with pytest.raises(QpassError, match=r"gelu approximate='sigmoid'"):
        b.build(graph, spec)


def test_integer_pow_is_refused_naming_op_and_dtype(host):
    b, spec = host
    g = Graph("pow")
    x = g.add_input("x", TensorType((3,), "i32"))
    g.set_outputs(g.add_op("pow", [x, g.add_constant(np.array([2, 3, 1], np.int32))]).outputs)
    with pytest.raises(QpassError, match=r"pow of i32 operands has no lowering"):
        b.build(g, spec)


def test_out_of_range_constant_gather_indices_are_refused(host):
    b, spec = host
    graph, _ = one_op("gather", (5, 3), {"axis": 0}, [np.array([5], np.int64)])
    with pytest.raises(QpassError, match=r"gather indices .* out of range for axis 0"):
        b.build(graph, spec)
