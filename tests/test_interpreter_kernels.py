"""Interpreter kernels against ONNX Runtime: each op kind on small tensors, one ORT node each."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from qpass.errors import InterpreterError, QpassError
from qpass.interpreter import evaluate, interpret
from qpass.ir import Graph, QuantParams, TensorType

RTOL, ATOL = 1e-5, 1e-6


@dataclasses.dataclass
class Const:
    """An ONNX operand given as an initializer (shapes, pads, scales: what the IR holds as attributes)."""

    array: np.ndarray


def onnx_run(op_type, inputs, attrs=None, *, opset=17, outputs=1, out_dtype=None):
    """Run one ONNX node in ORT. `inputs` holds arrays (graph inputs), Const, or None (omitted)."""
    names, graph_inputs, initializers, feeds = [], [], [], {}
    for i, item in enumerate(inputs):
        name = f"in{i}"
        if item is None:
            name = ""
        elif isinstance(item, Const):
            initializers.append(onnx.numpy_helper.from_array(np.asarray(item.array), name))
        else:
            graph_inputs.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(item.dtype), item.shape))
            feeds[name] = item
        names.append(name)
    out_type = helper.np_dtype_to_tensor_dtype(np.dtype(out_dtype or inputs[0].dtype))
    out_names = [f"out{i}" for i in range(outputs)]
    node = helper.make_node(op_type, names, out_names, **(attrs or {}))
    graph = helper.make_graph([node], "single", graph_inputs,
                              [helper.make_tensor_value_info(n, out_type, None) for n in out_names],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def check(kind, arrays, attrs, expected, rtol=RTOL, atol=ATOL, **kwargs):
    """evaluate(kind) equals `expected` (a list of arrays) in shape, dtype and value."""
    got = evaluate(kind, arrays, attrs, **kwargs)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype, (g.shape, g.dtype, e.shape, e.dtype)
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)


def randn(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


X = randn(2, 3, 4, 5)


# --------------------------------------------------------------------------- elementwise
@pytest.mark.parametrize("kind, op_type, attrs, onnx_attrs, opset", [
    ("relu", "Relu", {}, {}, 17),
    ("sigmoid", "Sigmoid", {}, {}, 17),
    ("tanh", "Tanh", {}, {}, 17),
    ("erf", "Erf", {}, {}, 17),
    ("exp", "Exp", {}, {}, 17),
    ("hard_swish", "HardSwish", {}, {}, 17),
    ("leaky_relu", "LeakyRelu", {"alpha": 0.1}, {"alpha": 0.1}, 17),
    ("hard_sigmoid", "HardSigmoid", {"alpha": 0.3, "beta": 0.4}, {"alpha": 0.3, "beta": 0.4}, 17),
    ("gelu", "Gelu", {}, {}, 20),
    ("gelu", "Gelu", {"approximate": "tanh"}, {"approximate": "tanh"}, 20),
    ("identity", "Identity", {}, {}, 17),
])
def test_unary(kind, op_type, attrs, onnx_attrs, opset):
    x = X * 4
    check(kind, [x], attrs, onnx_run(op_type, [x], onnx_attrs, opset=opset))


def test_sqrt():
    x = np.abs(X) + 0.01
    check("sqrt", [x], {}, onnx_run("Sqrt", [x]))


@pytest.mark.parametrize("low, high", [(-0.5, 0.7), (-0.5, None), (None, 0.7)])
def test_clip(low, high):
    bound = lambda v: None if v is None else Const(np.float32(v))  # noqa: E731
    attrs = {k: v for k, v in (("min", low), ("max", high)) if v is not None}
    check("clip", [X], attrs, onnx_run("Clip", [X, bound(low), bound(high)]))


@pytest.mark.parametrize("kind, op_type", [("add", "Add"), ("sub", "Sub"), ("mul", "Mul"), ("div", "Div")])
def test_binary_broadcast(kind, op_type):
    b = randn(3, 1, 5, seed=1) + 3
    check(kind, [X, b], {}, onnx_run(op_type, [X, b]))


def test_pow():
    a, b = np.abs(X) + 0.1, randn(5, seed=1)
    check("pow", [a, b], {}, onnx_run("Pow", [a, b]))


def test_integer_div_truncates_toward_zero():
    a = np.array([7, -7, 7, -7, 0, 5], np.int32)
    b = np.array([2, 2, -2, -2, 3, 5], np.int32)
    check("div", [a, b], {}, onnx_run("Div", [a, b]))


@pytest.mark.parametrize("to, np_type", [("i8", np.int8), ("i32", np.int32), ("f16", np.float16)])
def test_cast_from_float(to, np_type):
    x = X * 20
    onnx_to = helper.np_dtype_to_tensor_dtype(np.dtype(np_type))
    check("cast", [x], {"to": to}, onnx_run("Cast", [x], {"to": onnx_to}, out_dtype=np_type))


def test_cast_from_int():
    x = np.arange(-5, 7, dtype=np.int32).reshape(3, 4)
    check("cast", [x], {"to": "f32"}, onnx_run("Cast", [x], {"to": onnx.TensorProto.FLOAT}, out_dtype=np.float32))


# --------------------------------------------------------------------------- convolutions
def conv_attrs(strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1, **extra):
    return dict(strides=list(strides), pads=list(pads), dilations=list(dilations), groups=groups, **extra)


# name: (input shape, weight shape, attributes, with bias)
CONV_CASES = {
    "groups1_bias": ((2, 3, 9, 10), (4, 3, 3, 3), conv_attrs(pads=(1, 1, 1, 1)), True),
    "groups2_asym_pads": ((1, 4, 8, 8), (6, 2, 3, 3), conv_attrs(pads=(1, 0, 2, 1), groups=2), True),
    "depthwise_stride2": ((1, 5, 9, 9), (5, 1, 3, 3), conv_attrs((2, 2), (1, 1, 1, 1), groups=5), True),
    "depthwise_multiplier2": ((1, 3, 8, 8), (6, 1, 3, 3), conv_attrs(pads=(1, 1, 1, 1), groups=3), False),
    "stride2_asym": ((1, 3, 11, 11), (4, 3, 3, 3), conv_attrs((2, 2), (0, 1, 1, 0)), False),
    "dilation2": ((1, 3, 12, 12), (2, 3, 3, 3), conv_attrs(pads=(2, 2, 2, 2), dilations=(2, 2)), True),
    "pointwise": ((1, 8, 5, 5), (4, 8, 1, 1), conv_attrs(), True),
    "rect_kernel_mixed_strides": ((1, 2, 7, 9), (3, 2, 3, 2), conv_attrs((1, 2), (1, 0, 0, 1), (2, 1)), False),
}


def _onnx_conv_attrs(attrs):
    return {"strides": attrs["strides"], "pads": attrs["pads"], "dilations": attrs["dilations"],
            "group": attrs["groups"]}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv2d(case):
    x_shape, w_shape, attrs, with_bias = CONV_CASES[case]
    x, w = randn(*x_shape, seed=1), randn(*w_shape, seed=2, scale=0.3)
    operands = [x, w] + ([randn(w_shape[0], seed=3)] if with_bias else [])
    check("conv2d", operands, attrs, onnx_run("Conv", operands, _onnx_conv_attrs(attrs)))


CONV_TRANSPOSE_CASES = {
    "stride2_pads_output_padding": ((1, 4, 5, 5), (4, 3, 3, 3),
                                    conv_attrs((2, 2), (1, 1, 1, 1), output_padding=[1, 1]), True),
    "groups2": ((2, 4, 4, 3), (4, 2, 3, 3), conv_attrs((2, 1), (0, 1, 1, 0), groups=2), True),
    "dilation2": ((1, 3, 4, 4), (3, 2, 2, 3), conv_attrs((1, 2), (1, 0, 0, 1), (2, 2), output_padding=[0, 1]), False),
    "upsample_2x2": ((1, 2, 3, 3), (2, 2, 2, 2), conv_attrs((2, 2)), False),
}


@pytest.mark.parametrize("case", sorted(CONV_TRANSPOSE_CASES))
def test_conv_transpose2d(case):
    x_shape, w_shape, attrs, with_bias = CONV_TRANSPOSE_CASES[case]
    x, w = randn(*x_shape, seed=1), randn(*w_shape, seed=2, scale=0.3)
    operands = [x, w] + ([randn(w_shape[1] * attrs["groups"], seed=3)] if with_bias else [])
    onnx_attrs = _onnx_conv_attrs(attrs)
    if "output_padding" in attrs:
        onnx_attrs["output_padding"] = attrs["output_padding"]
    check("conv_transpose2d", operands, attrs, onnx_run("ConvTranspose", operands, onnx_attrs))


def _reference_conv_float64(x, w, strides, pads, dilations, groups):
    """Direct-definition convolution in float64, one output tap at a time (independent of the kernel)."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh = (h - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (wd - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    y = np.zeros((n, o, oh, ow))
    for oc in range(o):
        g = oc // (o // groups)
        for i in range(kh):
            for j in range(kw):
                patch = x[:, g * cg:(g + 1) * cg,
                          i * dilations[0]:i * dilations[0] + strides[0] * (oh - 1) + 1:strides[0],
                          j * dilations[1]:j * dilations[1] + strides[1] * (ow - 1) + 1:strides[1]]
                y[:, oc] += np.einsum("nchw,c->nhw", patch, w[oc, :, i, j].astype(np.float64))
    return y


@pytest.mark.parametrize("groups", [1, 2, 16])
def test_integer_conv_is_exact(groups):
    rng = np.random.default_rng(4)
    # Extreme int8 values: a sum of 144 products of -128 * -128 overflows int16 and any int8 path.
    x = rng.choice(np.array([-128, 127, -1, 3], np.int8), size=(1, 16, 6, 6))
    w = rng.choice(np.array([-128, 127, 5], np.int8), size=(8 if groups < 16 else 16, 16 // groups, 3, 3))
    attrs = conv_attrs((2, 1), (1, 1, 0, 1), (1, 2), groups)
    ref = _reference_conv_float64(x, w, attrs["strides"], attrs["pads"], attrs["dilations"], groups)
    bias = rng.integers(-1000, 1000, w.shape[0]).astype(np.int32)
    for dtype in ("i32", "i64"):
        y, = evaluate("conv2d", [x, w], attrs, types=[TensorType(ref.shape, dtype)])
        np.testing.assert_array_equal(y, ref.astype(np.int64))
        y_bias, = evaluate("conv2d", [x, w, bias], attrs, types=[TensorType(ref.shape, dtype)])
        np.testing.assert_array_equal(y_bias, ref.astype(np.int64) + bias.reshape(1, -1, 1, 1))


def test_integer_dense_and_matmul_are_exact():
    rng = np.random.default_rng(5)
    x = rng.integers(-128, 128, (3, 300)).astype(np.int8)
    w = rng.integers(-128, 128, (4, 300)).astype(np.int8)
    ref = x.astype(np.int64) @ w.astype(np.int64).T
    y, = evaluate("dense", [x, w], {}, types=[TensorType((3, 4), "i32")])
    np.testing.assert_array_equal(y, ref)
    y, = evaluate("matmul", [x, w.T.copy()], {}, types=[TensorType((3, 4), "i32")])
    np.testing.assert_array_equal(y, ref)


def test_dense():
    x, w, b = randn(2, 3, 6, seed=1), randn(4, 6, seed=2), randn(4, seed=3)
    expected = onnx_run("MatMul", [x, np.ascontiguousarray(w.T)])[0] + b
    check("dense", [x, w, b], {}, [expected])
    x2 = x.reshape(6, 6)
    check("dense", [x2, w, b], {}, onnx_run("Gemm", [x2, w, b], {"transB": 1}))


def test_matmul_batched_broadcast():
    a, b = randn(2, 1, 3, 4, seed=1), randn(5, 4, 6, seed=2)
    check("matmul", [a, b], {}, onnx_run("MatMul", [a, b]))


# --------------------------------------------------------------------------- normalization
def test_batch_norm():
    x = randn(2, 4, 3, 3, seed=1)
    scale, bias, mean = randn(4, seed=2), randn(4, seed=3), randn(4, seed=4)
    var = np.abs(randn(4, seed=5)) + 0.1
    operands = [x, scale, bias, mean, var]
    check("batch_norm", operands, {"epsilon": 1e-3}, onnx_run("BatchNormalization", operands, {"epsilon": 1e-3}))


@pytest.mark.parametrize("axis, with_bias", [(2, True), (1, False), (3, True)])
def test_layer_norm(axis, with_bias):
    x = randn(2, 3, 4, 6, seed=1) * 3 + 1
    params = [randn(*x.shape[axis:], seed=2)] + ([randn(*x.shape[axis:], seed=3)] if with_bias else [])
    attrs = {"axis": axis, "epsilon": 1e-5}
    check("layer_norm", [x, *params], attrs, onnx_run("LayerNormalization", [x, *params], attrs))


@pytest.mark.parametrize("axis", [1, 3])
def test_softmax(axis):
    x = X * 30   # large logits: the max subtraction must keep exp finite
    check("softmax", [x], {"axis": axis}, onnx_run("Softmax", [x], {"axis": axis}, opset=13))


# --------------------------------------------------------------------------- pooling / reductions
MAX_POOL_CASES = [
    ((1, 2, 9, 9), dict(kernel=[3, 3], strides=[2, 2], pads=[0, 0, 0, 0])),
    ((1, 2, 10, 10), dict(kernel=[3, 3], strides=[2, 2], pads=[0, 0, 0, 0], ceil_mode=True)),
    ((1, 2, 5, 6), dict(kernel=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=True)),
    ((1, 2, 10, 9), dict(kernel=[3, 2], strides=[2, 1], pads=[1, 0, 0, 1], dilations=[2, 2])),
    ((2, 3, 8, 8), dict(kernel=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])),
]


@pytest.mark.parametrize("x_shape, attrs", MAX_POOL_CASES)
def test_max_pool2d(x_shape, attrs):
    x = randn(*x_shape, seed=1)
    onnx_attrs = {"kernel_shape": attrs["kernel"], "strides": attrs["strides"], "pads": attrs["pads"],
                  "dilations": attrs.get("dilations", [1, 1]), "ceil_mode": int(attrs.get("ceil_mode", False))}
    check("max_pool2d", [x], attrs, onnx_run("MaxPool", [x], onnx_attrs))


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("count_include_pad", [False, True])
@pytest.mark.parametrize("x_shape, kernel, strides, pads", [
    ((1, 2, 7, 7), [3, 3], [2, 2], [1, 1, 1, 1]),
    ((1, 2, 8, 8), [3, 3], [2, 2], [0, 0, 0, 0]),
    ((1, 2, 8, 7), [3, 2], [2, 2], [1, 0, 0, 1]),
    ((2, 3, 5, 5), [5, 5], [1, 1], [0, 0, 0, 0]),
])
def test_avg_pool2d(x_shape, kernel, strides, pads, ceil_mode, count_include_pad):
    x = randn(*x_shape, seed=1)
    attrs = dict(kernel=kernel, strides=strides, pads=pads, ceil_mode=ceil_mode,
                 count_include_pad=count_include_pad)
    onnx_attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads, "ceil_mode": int(ceil_mode),
                  "count_include_pad": int(count_include_pad)}
    check("avg_pool2d", [x], attrs, onnx_run("AveragePool", [x], onnx_attrs))


@pytest.mark.parametrize("axes, keepdims", [([2, 3], True), ([1], False), ([0, 3], True)])
def test_reduce_mean(axes, keepdims):
    check("reduce_mean", [X], {"axes": axes, "keepdims": keepdims},
          onnx_run("ReduceMean", [X], {"axes": axes, "keepdims": int(keepdims)}, opset=13))


def test_integer_reduce_mean_truncates():
    x = np.array([[-3, -4], [3, 4], [1, 1]], np.int32)
    check("reduce_mean", [x], {"axes": [1], "keepdims": False},
          onnx_run("ReduceMean", [x], {"axes": [1], "keepdims": 0}, opset=13))


# --------------------------------------------------------------------------- data movement
def test_reshape_transpose_concat():
    check("reshape", [X], {"shape": [6, 20]}, onnx_run("Reshape", [X, Const(np.array([6, 20]))]))
    check("transpose", [X], {"perm": [0, 2, 3, 1]}, onnx_run("Transpose", [X], {"perm": [0, 2, 3, 1]}))
    y = randn(2, 1, 4, 5, seed=1)
    check("concat", [X, y], {"axis": 1}, onnx_run("Concat", [X, y], {"axis": 1}))


def test_split():
    check("split", [X], {"axis": 3, "sizes": [1, 3, 1]},
          onnx_run("Split", [X, Const(np.array([1, 3, 1]))], {"axis": 3}, outputs=3, opset=13))


@pytest.mark.parametrize("starts, ends, axes, steps", [
    ([1, 0], [3, 4], [1, 3], [1, 2]),
    ([-1], [-100], [2], [-1]),
    ([0, 1], [2**62, -1], [0, 3], [1, 1]),
])
def test_slice(starts, ends, axes, steps):
    attrs = {"starts": starts, "ends": ends, "axes": axes, "steps": steps}
    operands = [X] + [Const(np.array(v, np.int64)) for v in (starts, ends, axes, steps)]
    check("slice", [X], attrs, onnx_run("Slice", operands, opset=13))


def test_gather_negative_indices():
    indices = np.array([[0, -1], [2, 1]], np.int64)
    check("gather", [X, indices], {"axis": 2}, onnx_run("Gather", [X, indices], {"axis": 2}))


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad(mode):
    pads = [0, 1, 2, 0, 0, 2, 1, 3]
    attrs = {"pads": pads, "mode": mode} | ({"value": 1.5} if mode == "constant" else {})
    operands = [X, Const(np.array(pads, np.int64))] + ([Const(np.float32(1.5))] if mode == "constant" else [])
    check("pad", [X], attrs, onnx_run("Pad", operands, {"mode": mode}, opset=13))


def test_negative_pad_crops():
    pads = [0, -1, 1, 0, 0, 0, -1, 2]
    check("pad", [X], {"pads": pads}, onnx_run("Pad", [X, Const(np.array(pads, np.int64))], opset=13))


# --------------------------------------------------------------------------- resize
COORDINATE_MODES = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"]
NEAREST_MODES = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
RESIZE_SHAPES = [((1, 2, 4, 5), (1, 2, 8, 10)),   # 2x up
                 ((1, 2, 10, 9), (1, 2, 7, 5)),   # non-integer down
                 ((1, 2, 6, 1), (1, 2, 1, 3))]    # to and from length 1


def _resize_both(x, sizes, attrs, scales=None):
    scale_input = Const(np.array(scales, np.float32)) if scales else None
    size_input = None if scales else Const(np.array(sizes, np.int64))
    expected = onnx_run("Resize", [x, None, scale_input, size_input], attrs, opset=13)
    check("resize", [x], {"sizes": list(sizes), **attrs} | ({"scales": scales} if scales else {}), expected)


@pytest.mark.parametrize("shapes", RESIZE_SHAPES)
@pytest.mark.parametrize("transform", COORDINATE_MODES)
@pytest.mark.parametrize("nearest_mode", NEAREST_MODES)
def test_resize_nearest(shapes, transform, nearest_mode):
    x = randn(*shapes[0], seed=1)
    _resize_both(x, shapes[1], {"mode": "nearest", "coordinate_transformation_mode": transform,
                                "nearest_mode": nearest_mode})


@pytest.mark.parametrize("shapes", RESIZE_SHAPES)
@pytest.mark.parametrize("transform", COORDINATE_MODES)
def test_resize_linear(shapes, transform):
    x = randn(*shapes[0], seed=1)
    _resize_both(x, shapes[1], {"mode": "linear", "coordinate_transformation_mode": transform})


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("transform", COORDINATE_MODES)
@pytest.mark.parametrize("scales", [[1.0, 1.0, 0.6, 0.7], [1.0, 1.0, 1.5, 2.5]])
def test_resize_with_scales(mode, transform, scales):
    x = randn(1, 2, 10, 9, seed=1)
    sizes = [int(np.floor(d * np.float32(s))) for d, s in zip(x.shape, scales)]
    _resize_both(x, sizes, {"mode": mode, "coordinate_transformation_mode": transform}, scales=scales)


def test_resize_defaults_are_half_pixel_round_prefer_floor():
    x = randn(1, 1, 3, 5, seed=2)
    check("resize", [x], {"sizes": [1, 1, 7, 2], "mode": "nearest"},
          onnx_run("Resize", [x, None, None, Const(np.array([1, 1, 7, 2]))], {"mode": "nearest"}, opset=13))


# --------------------------------------------------------------------------- quantization
QUANT_CASES = {
    "per_tensor_i8": ("i8", np.int8, np.float32(0.05), np.int32(3), None),
    "per_tensor_u8": ("u8", np.uint8, np.float32(0.1), np.int32(128), None),
    "per_channel_i8": ("i8", np.int8, np.array([0.05, 0.02, 0.1], np.float32), np.array([0, -4, 7], np.int32), 1),
    "per_channel_u8": ("u8", np.uint8, np.array([0.05, 0.02, 0.1], np.float32), np.array([10, 128, 250], np.int32), 1),
}


def _quant_input():
    # Exact half steps (ties go to even) and values far outside the range (saturation).
    x = randn(2, 3, 4, 5, seed=7) * 4
    x[0, :, 0, :3] = [[0.025, 0.075, -0.025], [0.01, 0.03, -0.05], [0.05, 0.15, -0.25]]
    x[1, :, 1, 0] = [100.0, -100.0, 1e4]
    return x


@pytest.mark.parametrize("case", sorted(QUANT_CASES))
def test_quantize_dequantize(case):
    dtype, np_type, scale, zero_point, axis = QUANT_CASES[case]
    x = _quant_input()
    quant = QuantParams(scale, zero_point, axis=axis)
    onnx_attrs = {} if axis is None else {"axis": axis}
    zp_const = Const(zero_point.astype(np_type))
    expected_q = onnx_run("QuantizeLinear", [x, Const(scale), zp_const], onnx_attrs, opset=13, out_dtype=np_type)
    check("quantize", [x], {}, expected_q, types=[TensorType(x.shape, dtype, quant)], rtol=0, atol=0)
    q = expected_q[0]
    expected_x = onnx_run("DequantizeLinear", [q, Const(scale), zp_const], onnx_attrs, opset=13, out_dtype=np.float32)
    check("dequantize", [q], {}, expected_x, input_types=[TensorType(q.shape, dtype, quant)])


def test_quantize_narrow_bits_saturates_to_bit_range():
    x = np.array([-100.0, -8.5, -0.5, 0.5, 1.5, 6.6, 100.0], np.float32)
    quant = QuantParams(np.float32(1.0), np.int32(0), bits=4)
    q, = evaluate("quantize", [x], {}, types=[TensorType(x.shape, "i4", quant)])
    np.testing.assert_array_equal(q, np.array([-8, -8, 0, 0, 2, 7, 7], np.int8))


def test_dequantize_without_annotation_is_an_error():
    with pytest.raises(QpassError, match="quantization annotation"):
        evaluate("dequantize", [np.zeros(3, np.int8)], {})


# --------------------------------------------------------------------------- whole graphs
def _small_graph():
    g = Graph("small")
    x = g.add_input("x", TensorType((1, 3, 8, 8), "f32"))
    w = g.add_constant(randn(4, 3, 3, 3, seed=2), "w")
    b = g.add_constant(randn(4, seed=3), "b")
    conv = g.add_op("conv2d", [x, w, b], conv_attrs((2, 2), (1, 1, 1, 1)))
    act = g.add_op("relu", [conv.output])
    pool = g.add_op("avg_pool2d", [act.output], dict(kernel=[4, 4], strides=[1, 1], pads=[0, 0, 0, 0]))
    flat = g.add_op("reshape", [pool.output], {"shape": [1, 4]})
    fc = g.add_op("dense", [flat.output, g.add_constant(randn(5, 4, seed=4), "fc_w")])
    g.set_outputs([g.add_op("softmax", [fc.output], {"axis": 1}).output])
    return g


def test_interpret_small_graph_matches_op_by_op():
    g = _small_graph()
    x = randn(1, 3, 8, 8, seed=1)
    seen = []
    out = interpret(g, {"x": x}, observe=lambda value, array: seen.append(value.name))
    assert seen == [op.name for op in g.ops]
    y = x
    for op in g.ops:
        operands = [y if v.name == op.inputs[0].name else v.data for v in op.inputs]
        y, = evaluate(op.kind, operands, op.attrs)
    np.testing.assert_array_equal(out[g.outputs[0].name], y)
    assert y.shape == (1, 5) and abs(float(y.sum()) - 1) < 1e-6


@pytest.mark.parametrize("bad_input, message", [
    (np.zeros((1, 3, 8, 7), np.float32), r"input %x has shape \[1, 3, 8, 7\]"),
    (np.zeros((1, 3, 8, 8), np.int32), r"input %x is int32 but the graph expects f32"),
])
def test_interpret_names_the_bad_input(bad_input, message):
    with pytest.raises(InterpreterError, match=message):
        interpret(_small_graph(), {"x": bad_input})


def test_interpret_names_missing_input():
    with pytest.raises(InterpreterError, match="missing x"):
        interpret(_small_graph(), {"y": np.zeros(1, np.float32)})
