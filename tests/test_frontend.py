"""The ONNX frontend: real models and one small model per converter family, each run through the
reference interpreter and compared with ONNX Runtime; and the errors a user sees."""

from __future__ import annotations

import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from assets import PPOCR_MODELS, ppocr_model, shared_dir, text_image
from qpass.errors import FrontendError
from qpass.frontend import import_onnx
from qpass.interpreter import interpret
from qpass.ir import Graph

FLOAT = TensorProto.FLOAT


def relative_difference(actual: np.ndarray, expected: np.ndarray) -> float:
    """max|a - b| / max|b|: the measure every comparison below uses."""
    return float(np.max(np.abs(actual.astype(np.float64) - expected)) / max(np.max(np.abs(expected)), 1e-30))


def onnxruntime_outputs(model, feeds: dict) -> list[np.ndarray]:
    """ONNX Runtime's outputs, op by op: its graph fusions (e.g. DequantizeLinear + MatMul into an
    int8-activation MatMulNBits) approximate the ONNX semantics the interpreter implements."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model if isinstance(model, str) else model.SerializeToString()
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_matches_onnxruntime(graph: Graph, model, feeds: dict, tolerance: float = 1e-4) -> list[float]:
    """The interpreter's outputs equal ONNX Runtime's, in ONNX output order; returns the differences."""
    ours = interpret(graph, feeds)
    theirs = onnxruntime_outputs(model, feeds)
    assert len(ours) == len(theirs)
    differences = []
    for (name, actual), expected in zip(ours.items(), theirs):
        assert actual.shape == expected.shape, f"{name}: shape {actual.shape} vs {expected.shape}"
        differences.append(relative_difference(actual, expected))
        assert differences[-1] <= tolerance, f"{name}: relative difference {differences[-1]:.3g}"
    return differences


# =========================================================================== real models
REAL_MODELS = {
    # name: (path getter, input name, input shape, normalization mean, std)
    "mobilenet_v2": (lambda: str(shared_dir() / "models" / "mobilenet_v2.onnx"), "input", (1, 3, 224, 224),
                     (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "ppocr_det": (lambda: str(ppocr_model(PPOCR_MODELS[0])), "x", (1, 3, 320, 320),
                  (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "ppocr_rec": (lambda: str(ppocr_model(PPOCR_MODELS[1])), "x", (1, 3, 48, 320), 0.5, 0.5),
    "ppocr_cls": (lambda: str(ppocr_model(PPOCR_MODELS[2])), "x", (1, 3, 48, 192), 0.5, 0.5),
}


@pytest.fixture(scope="module", params=sorted(REAL_MODELS))
def real_model(request):
    """(name, path, graph, feeds, seconds the import took), imported once per module."""
    path_of, input_name, shape, mean, std = REAL_MODELS[request.param]
    path = path_of()
    start = time.perf_counter()
    graph = import_onnx(path, {input_name: shape})
    seconds = time.perf_counter() - start
    feeds = {input_name: text_image(shape, seed=0, mean=mean, std=std)}
    return request.param, path, graph, feeds, seconds


def test_real_model_matches_onnxruntime(real_model):
    name, path, graph, feeds, seconds = real_model
    differences = assert_matches_onnxruntime(graph, path, feeds)
    print(f"{name}: import {seconds:.2f}s, max relative difference {max(differences):.2e}")


def test_real_model_structure(real_model):
    name, path, graph, feeds, _ = real_model
    onnx_graph = onnx.load(path).graph
    assert [v.name for v in graph.inputs] == list(feeds)             # input names kept as they are
    assert [v.name for v in graph.outputs] == [o.name.replace("/", ".") for o in onnx_graph.output]
    kinds = {op.kind for op in graph.ops}
    assert not kinds & {"cast", "gather"}                 # the models' shape arithmetic folded away
    assert all(v.name.count("/") == 0 for v in graph.values())
    assert graph == graph.copy()


def test_real_model_names_are_readable_and_deterministic():
    path = str(shared_dir() / "models" / "mobilenet_v2.onnx")
    first, second = import_onnx(path), import_onnx(path)
    assert str(first) == str(second)
    names = {op.name for op in first.ops}
    assert "features.features.0.features.0.0.Conv" in names and "logits" in names
    assert first.find_ops("dense")[0].inputs[1].name == "classifier.1.weight"


# =========================================================================== synthetic models
RNG = np.random.default_rng(1234)


def weight(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def make_model(nodes, inputs: dict, outputs=("y",), opset: int = 13, initializers: dict | None = None,
               output_type: int = FLOAT) -> onnx.ModelProto:
    """A model of `nodes`; inputs name -> shape (or (shape, elem_type)), outputs of unknown shape."""
    def info(name, spec):
        shape, elem = (spec, FLOAT) if not isinstance(spec, tuple) else spec
        return helper.make_tensor_value_info(name, elem, shape)
    graph = helper.make_graph(
        nodes, "test", [info(n, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(o, output_type, None) for o in outputs],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in (initializers or {}).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8 if opset < 21 else 10)


def node(op_type, inputs, outputs="y", **attrs):
    """An ONNX node; `inputs` given as a string are one-letter names ("xw" is x, w), `outputs` as a
    string is one name."""
    return helper.make_node(op_type, list(inputs), [outputs] if isinstance(outputs, str) else list(outputs),
                            **attrs)


X = {"x": [1, 4, 9, 9]}
I64_MAX, I64_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min

# id: (nodes, inputs, opset, initializers)
CASES = {
    # ------------------------------------------------------------------ convolutions
    "conv_pads_strides": ([node("Conv", "xwb", pads=[1, 0, 2, 1], strides=[2, 1])], X, 13,
                          {"w": weight(6, 4, 3, 3), "b": weight(6)}),
    "conv_dilated_no_bias": ([node("Conv", "xw", dilations=[2, 2])], X, 11, {"w": weight(5, 4, 3, 3)}),
    "conv_depthwise_same_upper": ([node("Conv", "xw", group=4, auto_pad="SAME_UPPER", strides=[2, 2])], X, 13,
                                  {"w": weight(4, 1, 3, 3)}),
    "conv_grouped_same_lower": ([node("Conv", "xw", group=2, auto_pad="SAME_LOWER", strides=[2, 2])], X, 13,
                                {"w": weight(6, 2, 2, 2)}),
    "conv_valid_runtime_weight": ([node("Conv", "xw", auto_pad="VALID", strides=[2, 2])],
                                  dict(X, w=[3, 4, 3, 3]), 13, {}),
    "conv_transpose_stride": ([node("ConvTranspose", "xw", strides=[2, 2])], X, 13, {"w": weight(4, 3, 2, 2)}),
    "conv_transpose_group_pads_output_padding": (
        [node("ConvTranspose", "xwb", group=2, strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 0])], X, 13,
        {"w": weight(4, 2, 3, 3), "b": weight(4)}),
    "conv_transpose_output_shape": ([node("ConvTranspose", "xw", strides=[2, 2], output_shape=[18, 17])], X, 13,
                                    {"w": weight(4, 3, 3, 3)}),
    "conv_transpose_same_upper": ([node("ConvTranspose", "xw", strides=[2, 2], auto_pad="SAME_UPPER")], X, 13,
                                  {"w": weight(4, 3, 3, 3)}),
    # ------------------------------------------------------------------ matrix products
    "gemm_transB_bias": ([node("Gemm", "abc", transB=1)], {"a": [3, 5]}, 13, {"b": weight(4, 5), "c": weight(4)}),
    "gemm_transA_alpha_beta": ([node("Gemm", "abc", transA=1, alpha=0.5, beta=2.0)], {"a": [5, 3]}, 11,
                               {"b": weight(5, 4), "c": weight(1, 4)}),
    "gemm_matrix_c": ([node("Gemm", "abc", beta=0.7)], {"a": [3, 5]}, 13, {"b": weight(5, 4), "c": weight(3, 4)}),
    "gemm_scalar_c": ([node("Gemm", "abc")], {"a": [3, 5]}, 13, {"b": weight(5, 4), "c": np.float32(0.25)}),
    "gemm_runtime_b": ([node("Gemm", "abc", transA=1, transB=1, alpha=1.5, beta=0.5)], {"a": [5, 3], "b": [4, 5]},
                       13, {"c": weight(4)}),
    "matmul_constant_weight": ([node("MatMul", "xw")], {"x": [2, 3, 5]}, 13, {"w": weight(5, 4)}),
    "matmul_vector": ([node("MatMul", "xw")], {"x": [5]}, 13, {"w": weight(5, 4)}),
    "matmul_batched": ([node("MatMul", "ab")], {"a": [2, 3, 5], "b": [2, 5, 4]}, 13, {}),
    "matmul_constant_3d": ([node("MatMul", "xw")], {"x": [2, 3, 5]}, 13, {"w": weight(2, 5, 4)}),
    # ------------------------------------------------------------------ elementwise
    "add_broadcast": ([node("Add", "xc")], {"x": [2, 3, 4]}, 13, {"c": weight(4)}),
    "sub_constant_first": ([node("Sub", "cx")], {"x": [2, 3, 4]}, 13, {"c": weight(3, 1)}),
    "mul_two_inputs": ([node("Mul", "ab")], {"a": [2, 3, 4], "b": [1, 3, 1]}, 13, {}),
    "div_scalar": ([node("Div", "xc")], {"x": [2, 3]}, 13, {"c": np.float32(2.5)}),
    "pow_integer_exponent": ([node("Pow", "xc")], {"x": [2, 3]}, 13, {"c": np.int64(2)}),
    "unary_chain": ([node("Tanh", "x", "a"), node("Erf", "a", "b"), node("Exp", "b", "c"),
                     node("Sigmoid", "c", "d"), node("Sqrt", "d", "e"), node("Relu", "e")], {"x": [2, 7]}, 13, {}),
    "leaky_relu_hard_sigmoid_hard_swish": (
        [node("LeakyRelu", "x", "a", alpha=0.1), node("HardSigmoid", "a", "y", alpha=0.3, beta=0.4),
         node("HardSwish", "x", "z")], {"x": [3, 8]}, 14, {}),
    "gelu_opset20": ([node("Gelu", "x", "y"), node("Gelu", "x", "z", approximate="tanh")], {"x": [3, 8]}, 20, {}),
    "clip_opset11_min_only": ([node("Clip", ["x", "lo", ""])], {"x": [3, 8]}, 11, {"lo": np.float32(-0.3)}),
    "clip_opset13_bounds": ([node("Clip", ["x", "lo", "hi"])], {"x": [3, 8]}, 13,
                            {"lo": np.float32(-0.3), "hi": np.float32(0.6)}),
    "clip_opset9_attributes": ([node("Clip", "x", min=-0.5, max=0.25)], {"x": [3, 8]}, 9, {}),
    "identity": ([node("Identity", "x")], {"x": [3, 8]}, 13, {}),
    # ------------------------------------------------------------------ normalization
    "softmax_axis1_opset11": ([node("Softmax", "x", axis=1)], {"x": [2, 3, 4]}, 11, {}),
    "softmax_axis1_opset13": ([node("Softmax", "x", axis=1)], {"x": [2, 3, 4]}, 13, {}),
    "layer_norm": ([node("LayerNormalization", "xsb", "y", epsilon=1e-3),
                    node("LayerNormalization", ["x", "t"], "z", axis=1)], {"x": [2, 5, 6]}, 17,
                   {"s": weight(6), "b": weight(6), "t": weight(5, 6)}),
    "batch_norm": ([node("BatchNormalization", "xsbmv", epsilon=1e-3)], X, 15,
                   {"s": weight(4), "b": weight(4), "m": weight(4), "v": np.abs(weight(4)) + 0.1}),
    # ------------------------------------------------------------------ pooling and reductions
    "max_pool_ceil_dilations": ([node("MaxPool", "x", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 0, 0],
                                      ceil_mode=1, dilations=[1, 2])], X, 12, {}),
    "max_pool_same_upper": ([node("MaxPool", "x", kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER")],
                            X, 13, {}),
    "average_pool_count_include_pad": ([node("AveragePool", "x", kernel_shape=[3, 3], strides=[2, 2],
                                             pads=[1, 1, 1, 1], count_include_pad=1)], X, 13, {}),
    "average_pool_ceil": ([node("AveragePool", "x", kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 0],
                                ceil_mode=1)], X, 13, {}),
    "global_average_pool": ([node("GlobalAveragePool", "x")], X, 13, {}),
    "reduce_mean_opset11": ([node("ReduceMean", "x", axes=[-1])], {"x": [2, 3, 4]}, 11, {}),
    "reduce_mean_opset18_no_keepdims": ([node("ReduceMean", "xa", keepdims=0)], {"x": [2, 3, 4]}, 18,
                                        {"a": np.array([1, -1])}),
    "reduce_mean_opset18_all_axes": ([node("ReduceMean", "x")], {"x": [2, 3, 4]}, 18, {}),
    # ------------------------------------------------------------------ data movement
    "flatten_axis2": ([node("Flatten", "x", axis=2)], X, 13, {}),
    "flatten_negative_axis": ([node("Flatten", "x", axis=-1)], X, 13, {}),
    "reshape_zero_and_minus_one": ([node("Reshape", "xs")], X, 13, {"s": np.array([0, -1, 3])}),
    "reshape_allowzero": ([node("Reshape", "xs", allowzero=1)], X, 14, {"s": np.array([4, -1])}),
    "squeeze_unsqueeze_opset11": ([node("Squeeze", "x", "a", axes=[1]), node("Unsqueeze", "a", axes=[0, -1])],
                                  {"x": [2, 1, 3]}, 11, {}),
    "squeeze_unsqueeze_opset13": ([node("Squeeze", "xa", "b"), node("Unsqueeze", "bu")], {"x": [2, 1, 3]}, 13,
                                  {"a": np.array([-2]), "u": np.array([3, 0])}),
    "squeeze_all": ([node("Squeeze", "x")], {"x": [1, 3, 1, 2]}, 13, {}),
    "transpose_default_perm": ([node("Transpose", "x")], {"x": [2, 3, 4]}, 13, {}),
    "transpose_perm": ([node("Transpose", "x", perm=[0, 2, 3, 1])], X, 13, {}),
    "concat_with_constant": ([node("Concat", "xc", axis=-1)], {"x": [2, 3]}, 13, {"c": weight(2, 4)}),
    "split_opset11_attribute": ([node("Split", "x", ["y", "z"], axis=1, split=[1, 3])], X, 11, {}),
    "split_opset13_input": ([node("Split", "xs", ["y", "z"], axis=-1)], X, 13, {"s": np.array([5, 4])}),
    "split_opset13_equal": ([node("Split", "x", ["y", "z", "w"], axis=2)], X, 13, {}),
    "split_opset18_num_outputs": ([node("Split", "x", ["y", "z", "w"], axis=3, num_outputs=3)],
                                  {"x": [1, 2, 3, 7]}, 18, {}),
    "slice_negative_steps": ([node("Slice", "xseat")], X, 13,
                             {"s": np.array([-1, 8]), "e": np.array([-100, 1]), "a": np.array([1, -1]),
                              "t": np.array([-1, -3])}),
    "slice_full_reverse": ([node("Slice", "xseat")], X, 13,
                           {"s": np.array([I64_MAX]), "e": np.array([I64_MIN]), "a": np.array([2]),
                            "t": np.array([-1])}),
    "slice_clamped_ends": ([node("Slice", "xse")], {"x": [5, 6]}, 13, {"s": np.array([1, -4]),
                                                                       "e": np.array([1000, -1])}),
    "slice_opset9_attributes": ([node("Slice", "x", starts=[1, -3], ends=[3, 100], axes=[0, 1])], {"x": [5, 6]},
                                9, {}),
    "gather_negative_indices": ([node("Gather", "xi", axis=1)], {"x": [3, 5]}, 13, {"i": np.array([[0, -1], [2, 1]])}),
    "gather_scalar_index": ([node("Gather", "xi")], {"x": [3, 5]}, 13, {"i": np.array(-2)}),
    "pad_constant_opset11": ([node("Pad", "xpv")], X, 11,
                             {"p": np.array([0, 0, 1, 2, 0, 0, 2, 1]), "v": np.float32(1.5)}),
    "pad_reflect_opset18_axes": ([node("Pad", ["x", "p", "", "a"], mode="reflect")], X, 18,
                                 {"p": np.array([1, 2, 2, 1]), "a": np.array([2, -1])}),
    "pad_edge_negative": ([node("Pad", "xp", mode="edge")], X, 13, {"p": np.array([0, 0, -1, 2, 0, 0, 2, -2])}),
    "pad_opset9_attributes": ([node("Pad", "x", pads=[0, 1, 1, 0, 0, 0, 2, 3], value=-1.0)], X, 9, {}),
    # ------------------------------------------------------------------ resizing
    "resize_nearest_scales_asymmetric": ([node("Resize", ["x", "", "s"], mode="nearest", nearest_mode="floor",
                                               coordinate_transformation_mode="asymmetric")], X, 13,
                                         {"s": np.array([1, 1, 2, 2], np.float32)}),
    "resize_nearest_sizes_half_pixel": ([node("Resize", ["x", "", "", "s"])], X, 13,
                                        {"s": np.array([1, 4, 13, 5])}),
    "resize_nearest_opset11_roi": ([node("Resize", ["x", "r", "s"], nearest_mode="round_prefer_ceil")], X, 11,
                                   {"r": np.zeros(0, np.float32), "s": np.array([1, 1, 1.5, 0.75], np.float32)}),
    "resize_linear_scales": ([node("Resize", ["x", "", "s"], mode="linear")], X, 13,
                             {"s": np.array([1, 1, 1.5, 2.25], np.float32)}),
    "resize_linear_align_corners": ([node("Resize", ["x", "", "", "s"], mode="linear",
                                          coordinate_transformation_mode="align_corners")], X, 13,
                                    {"s": np.array([1, 4, 5, 14])}),
    "resize_linear_pytorch_half_pixel": ([node("Resize", ["x", "", "", "s"], mode="linear",
                                               coordinate_transformation_mode="pytorch_half_pixel")], X, 13,
                                         {"s": np.array([1, 4, 1, 20])}),
    "resize_opset18_axes": ([node("Resize", ["x", "", "", "s"], axes=[3, 2])], X, 18, {"s": np.array([5, 12])}),
    "upsample_opset9": ([node("Upsample", "xs")], X, 9, {"s": np.array([1, 1, 2, 3], np.float32)}),
    "resize_opset10": ([node("Resize", "xs")], X, 10, {"s": np.array([1, 1, 3, 2], np.float32)}),
    # ------------------------------------------------------------------ constants and shape arithmetic
    "shape_arithmetic_folds": (
        [node("Shape", "x", "shape"), node("Gather", ["shape", "zero"], "batch"),
         node("Unsqueeze", ["batch", "zero1"], "batch1"), node("Constant", [], "minus1", value_ints=[-1]),
         node("Concat", ["batch1", "minus1"], "target", axis=0), node("Reshape", ["x", "target"], "flat"),
         node("Shape", "x", "hw", start=2), node("Cast", ["hw"], "hwf", to=FLOAT),
         node("ReduceMean", ["hwf"], "mean", keepdims=1, axes=[0]),
         node("Constant", [], "half", value_float=0.5), node("Mul", ["mean", "half"], "scaled"),
         node("ConstantOfShape", ["shape"], "ones", value=numpy_helper.from_array(np.ones(1, np.float32))),
         node("Add", ["x", "ones"], "shifted"), node("ReduceMean", ["shifted"], "pooled", axes=[2, 3], keepdims=0),
         node("Mul", ["flat", "scaled"], "y"), node("Identity", ["pooled"], "z")],
        {"x": ["N", 4, "H", "W"]}, 17, {"zero": np.array(0), "zero1": np.array([0])}),
    "cast_round_trip": ([node("Cast", "x", "i", to=TensorProto.INT32), node("Cast", "i", to=FLOAT)],
                        {"x": [3, 8]}, 13, {}),
}
CASE_INPUT_SHAPES = {"shape_arithmetic_folds": {"x": (2, 4, 5, 6)}}


def random_feeds(model: onnx.ModelProto, input_shapes: dict, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {}
    for info in model.graph.input:
        shape = input_shapes.get(info.name) or [d.dim_value for d in info.type.tensor_type.shape.dim]
        feeds[info.name] = (rng.standard_normal(shape) * 2).astype(np.float32)
    return feeds


@pytest.mark.parametrize("case", sorted(CASES))
def test_converter_matches_onnxruntime(case):
    nodes, inputs, opset, initializers = CASES[case]
    outputs = [o for n in nodes for o in n.output if o in ("y", "z", "w")]
    model = make_model(nodes, inputs, outputs, opset, initializers)
    input_shapes = CASE_INPUT_SHAPES.get(case, {})
    graph = import_onnx(model, input_shapes)
    assert_matches_onnxruntime(graph, model, random_feeds(model, input_shapes), tolerance=1e-5)


def test_constant_output_and_folded_graph():
    """A graph output that folds to a constant becomes a named constant; nothing else is emitted."""
    model = make_model([node("Shape", "x", "s"), node("Cast", "s", "y", to=FLOAT)], {"x": [2, 3]}, ["y"])
    graph = import_onnx(model)
    assert graph.ops == [] and graph.outputs[0].name == "y"
    assert graph.outputs[0].data.tolist() == [2.0, 3.0]


def test_dense_and_softmax_structure():
    gemm = make_model(*CASES["gemm_transA_alpha_beta"][:1], {"a": [5, 3]}, opset=11,
                      initializers=CASES["gemm_transA_alpha_beta"][3])
    graph = import_onnx(gemm)
    assert [op.kind for op in graph.ops] == ["transpose", "dense"]
    assert len(graph.find_ops("dense")[0].inputs) == 3       # alpha and beta folded into weight and bias
    softmax = import_onnx(make_model(*CASES["softmax_axis1_opset11"][:2], opset=11))
    assert [op.kind for op in softmax.ops] == ["reshape", "softmax", "reshape"]
    assert softmax.ops[0].attrs["shape"] == [2, 12]


# =========================================================================== QDQ models
def qdq_conv_model(opset: int = 13) -> onnx.ModelProto:
    """x -> Q/DQ (u8) -> Conv with per-channel i8 weights and i32 bias -> Q/DQ (i8 per tensor)."""
    w = np.random.default_rng(5).integers(-127, 128, (6, 4, 3, 3)).astype(np.int8)
    w_scale = np.linspace(0.002, 0.01, 6).astype(np.float32)
    x_scale = np.float32(0.03)
    nodes = [node("QuantizeLinear", ["x", "xs", "xz"], "xq"), node("DequantizeLinear", ["xq", "xs", "xz"], "xd"),
             node("DequantizeLinear", ["w", "ws", "wz"], "wd", axis=0),
             node("DequantizeLinear", ["b", "bs"], "bd", axis=0),
             node("Conv", ["xd", "wd", "bd"], "c", pads=[1, 1, 1, 1]),
             node("QuantizeLinear", ["c", "ys"], "yq"), node("DequantizeLinear", ["yq", "ys"], "y")]
    inits = {"xs": x_scale, "xz": np.uint8(128), "w": w, "ws": w_scale, "wz": np.zeros(6, np.int8),
             "b": np.arange(-3, 3, dtype=np.int32) * 50, "bs": w_scale * x_scale, "ys": np.float32(0.05)}
    return make_model(nodes, X, ["y"], opset, inits)


def test_qdq_conv_matches_onnxruntime_and_carries_quant_params():
    model = qdq_conv_model()
    graph = import_onnx(model)
    assert_matches_onnxruntime(graph, model, random_feeds(model, {}), tolerance=1e-6)
    quantize = graph.find_ops("quantize")
    assert [op.output.type.dtype for op in quantize] == ["u8", "u8"]
    assert quantize[0].output.type.quant.zero_point == 128
    assert quantize[1].output.type.quant.axis is None and quantize[1].output.type.quant.zero_point == 0
    conv = graph.find_ops("conv2d")[0]
    weight = graph.producer(conv.inputs[1]).inputs[0]
    assert weight.is_constant and weight.type.dtype == "i8" and weight.type.quant.axis == 0
    assert weight.type.quant.scale.shape == (6,)
    bias = graph.producer(conv.inputs[2]).inputs[0]
    assert bias.type.dtype == "i32" and bias.type.quant.axis == 0


def int4_tensor(name: str, values: np.ndarray) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.INT4, values.shape, values.reshape(-1).tolist())


def test_qdq_blocked_and_int4_weights_opset21():
    """DequantizeLinear of constant weights: blocked int8 (block_size) and per-axis int4 with zero points."""
    rng = np.random.default_rng(6)
    nodes = [node("DequantizeLinear", ["w", "s"], "wd", axis=0, block_size=2), node("MatMul", ["x", "wd"], "y"),
             node("DequantizeLinear", ["v", "t", "vz"], "vd", axis=1), node("MatMul", ["x", "vd"], "z")]
    model = make_model(nodes, {"x": [3, 8]}, ["y", "z"], 21,
                       {"w": rng.integers(-8, 8, (8, 6)).astype(np.int8),
                        "s": rng.uniform(0.01, 0.02, (4, 6)).astype(np.float32),
                        "t": rng.uniform(0.01, 0.02, 5).astype(np.float32)})
    model.graph.initializer.extend([int4_tensor("v", rng.integers(-8, 8, (8, 5))),
                                    int4_tensor("vz", np.array([1, -1, 0, 2, -8]))])
    graph = import_onnx(model)
    assert_matches_onnxruntime(graph, model, random_feeds(model, {}), tolerance=1e-6)
    blocked, int4 = (op.inputs[0].type for op in graph.find_ops("dequantize"))
    assert (blocked.quant.axis, blocked.quant.group_size, blocked.dtype) == (0, 2, "i8")
    # the per-axis weight of MatMul becomes a dense weight: transposed, its axis 1 now axis 0
    assert (int4.quant.axis, int4.dtype, int4.quant.zero_point.tolist()) == (0, "i4", [1, -1, 0, 2, -8])
    assert [op.kind for op in graph.ops if op.kind in ("dense", "matmul")] == ["matmul", "dense"]


def test_qdq_integer_graph_input():
    """An integer graph input read by DequantizeLinear takes the node's quantization parameters."""
    model = make_model([node("DequantizeLinear", ["x", "s", "z"])], {"x": ([2, 3], TensorProto.UINT8)}, ["y"], 13,
                       {"s": np.float32(0.5), "z": np.uint8(10)})
    graph = import_onnx(model)
    assert graph.inputs[0].type.quant.zero_point == 10
    assert_matches_onnxruntime(graph, model, {"x": np.arange(6, dtype=np.uint8).reshape(2, 3) * 20}, tolerance=0)


def test_qdq_mismatched_parameters_are_an_error():
    nodes = [node("QuantizeLinear", ["x", "s1"], "q"), node("DequantizeLinear", ["q", "s2"], "y")]
    model = make_model(nodes, {"x": [4]}, ["y"], 13, {"s1": np.float32(0.1), "s2": np.float32(0.2)})
    with pytest.raises(FrontendError, match=r"node 'y' \(DequantizeLinear\).*same scale"):
        import_onnx(model)


def test_qdq_runtime_scale_is_an_error():
    model = make_model([node("QuantizeLinear", ["x", "s"], "y")], {"x": [4], "s": []}, ["y"], 13,
                       output_type=TensorProto.UINT8)
    with pytest.raises(FrontendError, match=r"\(QuantizeLinear\).*scale 's' is computed at run time"):
        import_onnx(model)


# =========================================================================== errors
def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"this is not an onnx model\x00\xff\xfe" * 10)
    with pytest.raises(FrontendError, match="garbage.onnx' is not a readable ONNX model") as error:
        import_onnx(path)
    assert error.value.__cause__ is None and error.value.__suppress_context__


def test_truncated_file(tmp_path):
    path = tmp_path / "truncated.onnx"
    data = make_model(*CASES["conv_pads_strides"][:2], initializers=CASES["conv_pads_strides"][3]).SerializeToString()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FrontendError, match="truncated.onnx' is not a readable ONNX model"):
        import_onnx(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(FrontendError, match="does not exist"):
        import_onnx(tmp_path / "absent.onnx")


def test_model_without_graph_or_inputs():
    with pytest.raises(FrontendError, match="not a readable ONNX model: it holds no graph"):
        import_onnx(onnx.ModelProto())
    constant_only = make_model([node("Constant", [], "y", value_float=1.0)], {})
    with pytest.raises(FrontendError, match="has no inputs"):
        import_onnx(constant_only)


def test_unsupported_ops_are_listed_together():
    body = helper.make_graph([], "body", [], [])
    nodes = [node("Relu", "x", "a"), node("SequenceConstruct", ["a"], ["s"], name="seq_1"),
             node("SequenceConstruct", ["a"], ["t"], name="seq_2"),
             node("Scan", ["a"], ["y"], name="scan_0", body=body, num_scan_inputs=1),
             helper.make_node("FusedConv", ["x"], ["z"], name="fused", domain="com.microsoft")]
    model = make_model(nodes, {"x": [1, 4, 8]}, ["y"])
    with pytest.raises(FrontendError) as error:
        import_onnx(model)
    message = str(error.value)
    assert "SequenceConstruct (the IR has no sequence, optional or string values; nodes: seq_1, seq_2)" in message
    assert "Scan (control flow with a body graph" in message and "node: scan_0" in message
    assert "com.microsoft.FusedConv (no converter for domain 'com.microsoft'; node: fused)" in message
    assert "qpass converts" in message and "onnx.reference" in message


@pytest.mark.parametrize("op_type", ["Conv", "ConvTranspose", "MaxPool", "AveragePool"])
def test_one_d_windows_are_2d_ops_and_three_d_ones_onnx_nodes(op_type):
    """A 1-D convolution or pool is qpass's 2-D op over a unit height (so it quantizes); a 3-D one,
    which qpass has no op for, imports as an onnx_node. Both match ONNX Runtime."""
    for rank, kind in ((1, {"Conv": "conv2d", "ConvTranspose": "conv_transpose2d", "MaxPool": "max_pool2d",
                             "AveragePool": "avg_pool2d"}[op_type]), (3, "onnx_node")):
        spatial = [7] * rank
        window = dict(pads=[1] * 2 * rank, strides=[2] * rank)
        if op_type in ("Conv", "ConvTranspose"):
            shape = (3, 2, *[3] * rank) if op_type == "Conv" else (2, 3, *[3] * rank)
            model = make_model([node(op_type, "xwb", **window)], {"x": [1, 2, *spatial]},
                               initializers={"w": weight(*shape), "b": weight(3)})
        else:
            model = make_model([node(op_type, "x", kernel_shape=[3] * rank, **window)], {"x": [1, 2, *spatial]})
        graph = import_onnx(model)
        assert kind in {op.kind for op in graph.ops}
        x = RNG.standard_normal((1, 2, *spatial)).astype(np.float32)
        expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x})[0]
        np.testing.assert_allclose(interpret(graph, {"x": x})["y"], expected, rtol=1e-5, atol=1e-5)


def test_ops_without_converter_import_through_the_libraries():
    """LSTM unrolls into dense and gate ops; Hardmax has no qpass op and imports as an onnx_node run
    by onnx.reference; Swish expands into its ONNX function body; an If whose condition folds
    becomes the branch it takes."""
    rng = np.random.default_rng(0)
    w, r = rng.standard_normal((1, 12, 4), np.float32), rng.standard_normal((1, 12, 3), np.float32)
    then = helper.make_graph([node("Swish", ["hb"], "y_then", alpha=2.0)], "then", [],
                             [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, None)])
    other = helper.make_graph([node("Neg", "b", "y_else")], "else", [],
                              [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, None)])
    nodes = [node("LSTM", ["x", "w", "r"], ["b"], hidden_size=3), node("Hardmax", ["b"], "hb"),
             node("Constant", [], "cond", value=
             helper.make_tensor("c", TensorProto.BOOL, [], [True])),
             node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    model = make_model(nodes, {"x": [2, 1, 4]}, ["y"], initializers={"w": w, "r": r}, opset=24)
    graph = import_onnx(model)
    kinds = [op.kind for op in graph.ops]
    assert kinds.count("onnx_node") == 1 and "dense" in kinds and "neg" not in kinds
    assert kinds[-3:] == ["mul", "sigmoid", "mul"]
    x = rng.standard_normal((2, 1, 4), np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})[0]
    np.testing.assert_allclose(interpret(graph, {"x": x})["y"], expected, rtol=1e-5, atol=1e-6)


def test_dynamic_input_needs_input_shapes():
    model = make_model([node("Relu", "x")], {"x": ["p2o.DynamicDimension.0", 3, "?", "?"]})
    with pytest.raises(FrontendError) as error:
        import_onnx(model)
    message = str(error.value)
    assert "input 'x' has shape ['p2o.DynamicDimension.0', 3, '?', '?']" in message
    assert "--input-shape x=1x3x640x640" in message and "input_shapes={'x': (1, 3, 640, 640)}" in message
    graph = import_onnx(model, {"x": (2, 3, 5, 7)})
    assert graph.inputs[0].type.shape == (2, 3, 5, 7)


def test_input_shapes_errors():
    model = make_model([node("Relu", "x")], {"x": ["N", 3, 8]})
    with pytest.raises(FrontendError, match=r"input_shapes names 'image'.*inputs of .* are 'x'"):
        import_onnx(model, {"image": (1, 3, 8)})
    with pytest.raises(FrontendError, match="contradicts the model"):
        import_onnx(model, {"x": (1, 4, 8)})
    with pytest.raises(FrontendError, match="contradicts the model"):
        import_onnx(model, {"x": (1, 3, 8, 1)})


def test_runtime_shape_parameter_is_an_error():
    model = make_model([node("Reshape", "xs", name="reshape_0")], {"x": [2, 6], "s": ([2], TensorProto.INT64)})
    with pytest.raises(FrontendError, match=r"node 'reshape_0' \(Reshape\): its shape input 's' .*static shapes"):
        import_onnx(model)


def test_converter_errors_name_the_node():
    unknown_type = make_model([node("Cast", "x", name="to_double", to=TensorProto.DOUBLE)], {"x": [2, 3]})
    with pytest.raises(FrontendError, match=r"node 'to_double' \(Cast\): casting a run-time value to DOUBLE"):
        import_onnx(unknown_type)
    gather = make_model([node("Gather", "xi", name="lookup")], {"x": [5, 3]},
                        initializers={"i": np.array([1, 5], np.int64)})
    with pytest.raises(FrontendError, match=r"node 'lookup' \(Gather\): indices \[1, 5\] are out of range"):
        import_onnx(gather)


def test_old_opsets_are_upgraded_by_onnx_version_converter(monkeypatch):
    """Opset 8 and older: onnx's version converter brings the model to opset 9 first (Upsample at
    opset 7 becomes Resize), and what it cannot convert is refused naming the converter."""
    model = make_model([node("Upsample", "x", scales=[1.0, 1.0, 2.0, 2.0], mode="nearest")], {"x": [1, 1, 2, 2]},
                       opset=7)
    x = RNG.standard_normal((1, 1, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(interpret(import_onnx(model), {"x": x})["y"], x.repeat(2, 2).repeat(2, 3))
    def refuse(model, version):
        raise RuntimeError("No adapter for Upsample from 7 to 9")
    monkeypatch.setattr(onnx.version_converter, "convert_version", refuse)
    with pytest.raises(FrontendError, match="opset 7; .*onnx's version converter cannot bring it to 9 "
                                            r"\(No adapter for Upsample"):
        import_onnx(model)


# =========================================================================== float16 models and output names
HALF = TensorProto.FLOAT16


def half_model() -> onnx.ModelProto:
    """conv + relu + gemm entirely in float16 (weights, input and output), as an f16 export gives."""
    rng = np.random.default_rng(16)
    half = {name: (rng.standard_normal(shape) * 0.3).astype(np.float16)
            for name, shape in (("w", (4, 3, 3, 3)), ("b", (4,)), ("gw", (5, 144)), ("gb", (5,)))}
    nodes = [node("Conv", ["x", "w", "b"], "c", pads=[1, 1, 1, 1]), node("Relu", ["c"], "r"),
             node("Flatten", ["r"], "f"), node("Gemm", ["f", "gw", "gb"], "y", transB=1)]
    return make_model(nodes, {"x": ([1, 3, 6, 6], HALF)}, initializers=half, output_type=HALF)


def test_float16_model_computes_in_f32_behind_an_f16_interface():
    graph = import_onnx(half_model())
    (x,), (y,) = graph.inputs, graph.outputs
    assert (x.name, x.type.dtype, y.name, y.type.dtype) == ("x", "f16", "y", "f16")
    assert {v.type.dtype for v in graph.constants()} == {"f32"}
    kinds = [op.kind for op in graph.ops]
    assert kinds[0] == kinds[-1] == "cast" and "f16" not in {v.type.dtype for op in graph.ops[1:-1] for v in op.outputs}
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 6, 6)).astype(np.float16)}
    ours = interpret(graph, feeds)["y"]
    assert ours.dtype == np.float16
    # ONNX Runtime computes in f16, qpass in f32 rounded once at the output: equal within f16 rounding.
    assert relative_difference(ours, onnxruntime_outputs(half_model(), feeds)[0]) <= 4e-3


def test_cast_to_float16_inside_a_model_computes_in_f32():
    model = make_model([node("Cast", ["x"], "h", to=HALF), node("Relu", ["h"], "r"), node("Cast", ["r"], "y", to=FLOAT)],
                       {"x": [1, 8]})
    graph = import_onnx(model)
    assert [op.kind for op in graph.ops] == ["relu"] and graph.outputs[0].name == "y"
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)}
    # f32 throughout where ONNX rounds to f16 once: equal within f16 rounding.
    assert_matches_onnxruntime(graph, model, feeds, tolerance=1e-3)


def test_output_after_identity_keeps_the_onnx_output_name():
    """PP-OCR's last node is Identity(softmax) -> 'save_infer_model/scale_0.tmp_1'; the op that computes
    the value carries the output's name, so removing pass-through ops cannot rename the output."""
    model = make_model([node("Softmax", ["x"], "softmax_0.tmp_0", axis=1),
                        node("Identity", ["softmax_0.tmp_0"], "save_infer_model/scale_0.tmp_1")],
                       {"x": [1, 8]}, outputs=("save_infer_model/scale_0.tmp_1",))
    graph = import_onnx(model)
    assert [(op.kind, op.name) for op in graph.ops] == [("softmax", "save_infer_model.scale_0.tmp_1")]
    assert [v.name for v in graph.outputs] == ["save_infer_model.scale_0.tmp_1"]


def test_graph_input_passed_to_two_outputs_keeps_both_names():
    model = make_model([node("Identity", ["x"], "a"), node("Relu", ["x"], "r"), node("Identity", ["r"], "b"),
                        node("Identity", ["r"], "c")], {"x": [1, 4]}, outputs=("a", "b", "c"))
    graph = import_onnx(model)
    assert [v.name for v in graph.outputs] == ["a", "b", "c"]
    feeds = {"x": np.arange(-2, 2, dtype=np.float32).reshape(1, 4)}
    assert list(interpret(graph, feeds)) == ["a", "b", "c"]
    assert_matches_onnxruntime(graph, model, feeds, tolerance=0)


# =========================================================================== opsets after 21
def newest_opset_model(**dequantize_attrs):
    """Conv -> Relu -> QuantizeLinear -> DequantizeLinear -> Cast -> Reshape at the newest opset."""
    rng = np.random.default_rng(0)
    nodes = [node("Conv", ["x", "w"], "c", pads=[1, 1, 1, 1]), node("Relu", "c", "r"),
             node("QuantizeLinear", ["r", "s", "z"], "q"),
             node("DequantizeLinear", ["q", "s", "z"], "d", **dequantize_attrs),
             node("Cast", "d", "f", to=TensorProto.FLOAT), node("Reshape", ["f", "shape"], "y")]
    inits = {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "s": np.float32(0.05),
             "z": np.uint8(3), "shape": np.array([1, -1], np.int64)}
    return make_model(nodes, {"x": [1, 3, 6, 6]}, opset=onnx.defs.onnx_opset_version(), initializers=inits)


def test_models_at_the_newest_opset_import_and_match_the_reference():
    model = newest_opset_model()
    x = np.random.default_rng(1).standard_normal((1, 3, 6, 6)).astype(np.float32)
    got = interpret(import_onnx(model), {"x": x})["y"]
    from onnx.reference import ReferenceEvaluator
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_newest_opset_attributes_qpass_cannot_honour_are_refused_by_name():
    with pytest.raises(FrontendError, match="output_dtype BFLOAT16 is not supported"):
        import_onnx(newest_opset_model(output_dtype=TensorProto.BFLOAT16))


def test_an_opset_newer_than_onnx_knows_is_refused():
    model = newest_opset_model()
    model.opset_import[0].version = onnx.defs.onnx_opset_version() + 1
    with pytest.raises(FrontendError, match=f"qpass imports opsets 9 to {onnx.defs.onnx_opset_version()}"):
        import_onnx(model)


def test_gather_with_run_time_indices_is_an_embedding_lookup():
    """Gather whose indices are a graph input (a token embedding) imports as gather over the run-time
    indices (it was refused); negative indices count from the end, as in ONNX. Exact: no arithmetic."""
    table = weight(10, 4)
    model = make_model([node("Gather", "ti", axis=0)], {"i": ([2, 3], onnx.TensorProto.INT64)},
                       initializers={"t": table})
    g = import_onnx(model)
    assert [op.kind for op in g.ops] == ["gather"]
    indices = np.array([[0, 9, -1], [3, -10, 5]], np.int64)
    np.testing.assert_array_equal(interpret(g, {"i": indices})["y"], np.take(table, indices, axis=0))


def _if_model():
    """y = If(sr == 16000, x * 2, -x): a sample-rate input decides the branch."""
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    then = helper.make_graph([node("Mul", ["x", "two"], "y_then")], "then", [],
                             [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, None)], [two])
    other = helper.make_graph([node("Neg", ["x"], "y_else")], "else", [],
                              [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, None)])
    nodes = [node("Equal", ["sr", "rate"], "cond"), node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    return make_model(nodes, {"x": [2, 3], "sr": ([], TensorProto.INT64)}, ["y"],
                      initializers={"rate": np.array(16000, np.int64)})


def test_run_time_if_selects_between_both_branches():
    model = _if_model()
    graph = import_onnx(model)
    assert {"where", "mul", "neg"} <= {op.kind for op in graph.ops}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    for sr in (16000, 8000):
        feeds = {"x": x, "sr": np.array(sr, np.int64)}
        np.testing.assert_array_equal(interpret(graph, feeds)["y"], session.run(None, feeds)[0])


def test_constants_fix_configuration_inputs():
    model = _if_model()
    graph = import_onnx(model, constants={"sr": 8000})
    assert [v.name for v in graph.inputs] == ["x"] and [op.kind for op in graph.ops] == ["neg"]
    with pytest.raises(FrontendError, match="constants names 'rate_hz', but the inputs of .* are 'x', 'sr'"):
        import_onnx(model, constants={"rate_hz": 8000})
    with pytest.raises(FrontendError, match=r"constants\['sr'\] has shape \[2\]"):
        import_onnx(model, constants={"sr": [1, 2]})
