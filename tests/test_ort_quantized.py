"""Models quantized by ONNX Runtime's own quantizer import, run as ONNX Runtime runs them, and compile.

The models are made here from a seeded tiny float model by `onnxruntime.quantization`:
`quantize_dynamic` writes DynamicQuantizeLinear + ConvInteger/MatMulInteger, `quantize_static`
in QOperator format QLinearConv/QLinearMatMul (and, for the other ops, com.microsoft QGemm,
QLinearAdd, QLinearMul, QLinearSigmoid, ...). Integer results (the u8 codes and zero points of
DynamicQuantizeLinear, the int32 of ConvInteger/MatMulInteger) must equal ONNX Runtime's; float
results match to float rounding; QLinear results, which ONNX Runtime requantizes its own way,
within one quantization step. Compiled for x86, integer results equal the interpreter's bit for bit.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qpass
from qpass.errors import FrontendError

ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")
X_SHAPE = (1, 3, 12, 12)


def float_model(seed=0) -> onnx.ModelProto:
    """conv (stride 2, padded) -> relu -> 1x1 conv -> sigmoid, add, mul, leaky relu, pools, concat, matmul."""
    rng = np.random.default_rng(seed)
    weights = {"w1": rng.standard_normal((8, 3, 3, 3)) * 0.3, "b1": rng.standard_normal(8) * 0.1,
               "w2": rng.standard_normal((8, 8, 1, 1)) * 0.3, "b2": rng.standard_normal(8) * 0.1,
               "m": rng.standard_normal((8, 5)) * 0.3}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    inits.append(numpy_helper.from_array(np.array([1, 8], np.int64), "shape"))
    node = helper.make_node
    nodes = [node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
             node("Relu", ["c1"], ["r1"]),
             node("Conv", ["r1", "w2", "b2"], ["c2"]),
             node("Sigmoid", ["c2"], ["s2"]),
             node("Add", ["r1", "s2"], ["a2"]),
             node("Mul", ["a2", "r1"], ["m2"]),
             node("LeakyRelu", ["m2"], ["l2"], alpha=0.1),
             node("AveragePool", ["l2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
             node("Concat", ["p2", "p2"], ["cat"], axis=1),
             node("GlobalAveragePool", ["l2"], ["g"]),
             node("Reshape", ["g", "shape"], ["f"]),
             node("MatMul", ["f", "m"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, X_SHAPE)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, 5)),
                               helper.make_tensor_value_info("cat", TensorProto.FLOAT, (1, 16, 3, 3))], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def samples(count, seed=0):
    return [{"x": np.random.default_rng(seed + i).standard_normal(X_SHAPE).astype(np.float32)} for i in range(count)]


class Reader(quantization.CalibrationDataReader):
    def __init__(self, calibration=None):
        self._samples = iter(calibration or samples(8))

    def get_next(self):
        return next(self._samples, None)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> path of the float model and of what ONNX Runtime's quantizer makes of it."""
    folder = tmp_path_factory.mktemp("ort_quantized")
    names = ("float", "dynamic", "qoperator", "qoperator_all-QInt8", "qoperator_all-QUInt8")
    paths = {name: folder / f"{name}.onnx" for name in names}
    onnx.save(float_model(), paths["float"])
    quantization.quantize_dynamic(paths["float"], paths["dynamic"], weight_type=quantization.QuantType.QUInt8)
    for name, quantized_ops, activations in (("qoperator", ["Conv", "MatMul"], "QInt8"),
                                             ("qoperator_all-QInt8", None, "QInt8"),
                                             ("qoperator_all-QUInt8", None, "QUInt8")):
        quantization.quantize_static(paths["float"], paths[name], Reader(), per_channel=True,
                                     quant_format=quantization.QuantFormat.QOperator,
                                     op_types_to_quantize=quantized_ops,
                                     activation_type=getattr(quantization.QuantType, activations))
    return paths


def ort_run(model, inputs):
    """ONNX Runtime's outputs (name -> array) of a model (a path or a ModelProto)."""
    proto = onnx.load(model) if not isinstance(model, onnx.ModelProto) else model
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))


def op_types(path):
    return {(n.domain, n.op_type) for n in onnx.load(path).graph.node}


def with_outputs(path, names) -> onnx.ModelProto:
    """The model at `path` that also outputs the values `names` (typed by shape inference)."""
    proto = onnx.shape_inference.infer_shapes(onnx.load(path))
    infos = {v.name: v for v in proto.graph.value_info}
    proto.graph.output.extend(infos[name] for name in names)
    return proto


def outputs_of(path, op_type):
    return [n.output[0] for n in onnx.load(path).graph.node if n.op_type == op_type]


# --------------------------------------------------------------------------- single ops, exact
@pytest.mark.parametrize("low, high", [(-3.0, 5.0), (0.5, 4.0), (-6.0, -1.0), (-1e-3, 2e-3), (0.0, 0.0)])
def test_dynamic_quantize_linear_equals_onnxruntime(low, high):
    graph = helper.make_graph([helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "scale", "zp"])], "dql",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, (4, 257))],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, (4, 257)),
                               helper.make_tensor_value_info("scale", TensorProto.FLOAT, ()),
                               helper.make_tensor_value_info("zp", TensorProto.UINT8, ())])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    g = qpass.import_onnx(proto)
    for seed in range(4):
        x = {"x": np.random.default_rng(seed).uniform(low, high, (4, 257)).astype(np.float32)}   # 0, 0: all zero
        want, got = ort_run(proto, x), qpass.interpret(g, x)
        for name in ("y", "scale", "zp"):
            assert got[name].dtype == want[name].dtype, name
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def integer_model(op_type, x_shape, b, b_zero_point, attrs=None):
    """op_type(a, b, a_zp, b_zp) with a u8 input a, a constant a_zp (the dynamic model's zero points are
    computed at run time) and constant b."""
    graph = helper.make_graph(
        [helper.make_node(op_type, ["a", "b", "a_zp", "b_zp"], ["y"], **(attrs or {}))], "integer",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        [numpy_helper.from_array(b, "b"), numpy_helper.from_array(b_zero_point, "b_zp"),
         numpy_helper.from_array(np.array(97, np.uint8), "a_zp")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


INTEGER_CASES = {  # ONNX Runtime's ConvInteger refuses per-channel zero points: onnx.reference checks those
    "conv-integer-padded-strided-u8": lambda rng: integer_model(
        "ConvInteger", (1, 4, 7, 7), rng.integers(0, 256, (6, 4, 3, 3), dtype=np.uint8), np.array(131, np.uint8),
        {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    "conv-integer-per-channel-i8": lambda rng: integer_model(
        "ConvInteger", (1, 4, 6, 6), rng.integers(-128, 128, (6, 4, 3, 3), dtype=np.int8),
        rng.integers(-5, 5, 6, dtype=np.int8), {"pads": [0, 1, 2, 1]}),
    "matmul-integer-per-column-i8": lambda rng: integer_model(
        "MatMulInteger", (3, 5, 16), rng.integers(-128, 128, (16, 7), dtype=np.int8),
        rng.integers(-3, 3, 7, dtype=np.int8)),
}


@pytest.mark.parametrize("case", sorted(INTEGER_CASES))
def test_integer_ops_equal_onnxruntime_and_compile_bit_exact(case):
    rng = np.random.default_rng(1)
    proto = INTEGER_CASES[case](rng)
    g = qpass.import_onnx(proto)
    shape = g.inputs[0].type.shape
    x = {"a": rng.integers(0, 256, shape, dtype=np.uint8)}
    if case == "conv-integer-per-channel-i8":
        from onnx.reference import ReferenceEvaluator
        (want,) = ReferenceEvaluator(proto).run(None, x)
    else:
        want = ort_run(proto, x)["y"]
    got = qpass.interpret(g, x)["y"]
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)
    compiled = qpass.compile(g, "x86_64-linux-gnu", pipeline="")
    np.testing.assert_array_equal(compiled.artifact().run(x)["y"], got)


# --------------------------------------------------------------------------- whole models
def test_dynamic_model_matches_onnxruntime_and_compiles(models):
    path = models["dynamic"]
    assert {("", "DynamicQuantizeLinear"), ("", "ConvInteger"), ("", "MatMulInteger")} <= op_types(path)
    integers = outputs_of(path, "ConvInteger") + outputs_of(path, "MatMulInteger")
    proto = with_outputs(path, integers)            # the int32 results too, to compare them exactly
    g = qpass.import_onnx(proto)
    x = samples(1, seed=20)[0]
    want, got = ort_run(proto, x), qpass.interpret(g, x)
    for name in integers:
        np.testing.assert_array_equal(got[qpass.frontend.onnx_node.sanitize_name(name)], want[name], err_msg=name)
    for name in ("y", "cat"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)
    compiled = qpass.compile(g, "x86_64-linux-gnu", pipeline="")
    ran = compiled.artifact().run(x)
    for name in integers:
        name = qpass.frontend.onnx_node.sanitize_name(name)
        np.testing.assert_array_equal(ran[name], got[name], err_msg=name)
    for name in ("y", "cat"):
        np.testing.assert_allclose(ran[name], got[name], rtol=1e-5, atol=1e-6, err_msg=name)


def within_one_step(got, want, step, name):
    """QLinear results: ONNX Runtime requantizes with float arithmetic, qpass's interpreter dequantizes,
    computes in float and quantizes: they may differ by one step of the output's scale, rarely."""
    difference = np.abs(got.astype(np.float64) - want.astype(np.float64))
    assert difference.max() <= step * 1.001, (name, difference.max(), step)
    assert (difference <= 1e-6).mean() >= 0.98, (name, (difference > 1e-6).mean())


def output_step(path, name):
    """The scale of the DequantizeLinear producing graph output `name`, or None for a float op's result."""
    proto = onnx.load(path)
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    node = next(n for n in proto.graph.node if n.output[0] == name)
    return float(inits[node.input[1]]) if node.op_type == "DequantizeLinear" else None


def check_qoperator(path, inputs=None):
    graph = qpass.import_onnx(path)
    quantized = qpass.quantize(graph, None)           # QDQ form: nothing to calibrate
    compiled = qpass.compile(quantized, "x86_64-linux-gnu")
    steps = {o.name: output_step(path, o.name) for o in onnx.load(path).graph.output}
    for sample in inputs or samples(3, seed=30):
        want = ort_run(path, sample)
        float_form, integer_form = qpass.interpret(graph, sample), qpass.interpret(quantized, sample)
        ran = compiled.artifact().run(sample)
        for name, step in steps.items():
            if step is None:        # float ops after a dequantize: float rounding
                for got in (float_form[name], integer_form[name], ran[name]):
                    np.testing.assert_allclose(got, want[name], rtol=1e-5, atol=1e-6, err_msg=name)
                continue
            within_one_step(float_form[name], want[name], step, name)
            within_one_step(integer_form[name], want[name], step, name)
            # integer ops, then one dequantize: equal bit for bit
            np.testing.assert_array_equal(ran[name], integer_form[name], err_msg=name)
    return quantized


def test_qlinear_conv_and_matmul(models):
    path = models["qoperator"]
    assert {("", "QLinearConv"), ("", "QLinearMatMul")} <= op_types(path)
    quantized = check_qoperator(path)
    kinds = {op.kind for op in quantized.ops}
    assert {"qconv2d", "qdense"} <= kinds and not {"conv2d", "dense"} & kinds


@pytest.mark.parametrize("activations", ["QInt8", "QUInt8"])
def test_com_microsoft_qlinear_ops(models, activations):
    path = models[f"qoperator_all-{activations}"]
    microsoft = {t for d, t in op_types(path) if d == "com.microsoft"}
    assert {"QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearAveragePool",
            "QLinearGlobalAveragePool", "QLinearConcat"} <= microsoft
    quantized = check_qoperator(path)
    kinds = {op.kind for op in quantized.ops}
    assert {"qconv2d", "qadd", "qmul", "lut", "qreduce_mean", "qdense"} <= kinds


def test_com_microsoft_qgemm(tmp_path):
    """A Gemm (transB, bias) + Relu quantized in QOperator format becomes com.microsoft QGemm."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array((rng.standard_normal((6, 10)) * 0.3).astype(np.float32), "w"),
             numpy_helper.from_array((rng.standard_normal(6) * 0.1).astype(np.float32), "b")]
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1),
                               helper.make_node("Relu", ["h"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 10))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, (2, 6))], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "gemm.onnx")
    vectors = [{"x": np.random.default_rng(i).standard_normal((2, 10)).astype(np.float32)} for i in range(7)]
    quantization.quantize_static(tmp_path / "gemm.onnx", tmp_path / "qgemm.onnx", Reader(vectors[:4]),
                                 quant_format=quantization.QuantFormat.QOperator, per_channel=True)
    assert ("com.microsoft", "QGemm") in op_types(tmp_path / "qgemm.onnx")
    quantized = check_qoperator(tmp_path / "qgemm.onnx", vectors[4:])
    assert [op.kind for op in quantized.ops] == ["quantize", "qdense", "dequantize"]


RAPID_TABLE_DET = "rapid-table-det==0.0.1"


@pytest.mark.slow
def test_rapid_table_det_models():
    """rapid-table-det ships models ONNX Runtime quantized dynamically. The edge detector imports, and its
    first layers (DynamicQuantizeLinear codes, scales, ConvInteger int32) equal ONNX Runtime's; the object
    detector's NonMaxSuppression (a result shape that depends on the data) and TopK are what it still lacks."""
    from onnx.utils import Extractor
    from test_recognize_activations import wheel_member

    from qpass.frontend.onnx_node import sanitize_name
    edge = wheel_member(RAPID_TABLE_DET, "rapid_table_det/models/edge_det_quantized.onnx")
    proto = onnx.shape_inference.infer_shapes(onnx.load(edge))
    integers = outputs_of(edge, "ConvInteger")[:3]
    codes = [n.output[i] for n in proto.graph.node if n.op_type == "DynamicQuantizeLinear" for i in (0, 1)][:6]
    head = Extractor(proto).extract_model(["input"], integers + codes)
    graph = qpass.import_onnx(head, input_shapes={"input": (1, 3, 800, 800)})
    x = {"input": np.random.default_rng(0).uniform(-1, 1, (1, 3, 800, 800)).astype(np.float32)}
    want, got = ort_run(head, x), qpass.interpret(graph, x)
    for name in integers + codes:
        np.testing.assert_array_equal(got[sanitize_name(name)], want[name], err_msg=name)
    assert qpass.import_onnx(edge, input_shapes={"input": (1, 3, 800, 800)}).verify()
    objects = wheel_member(RAPID_TABLE_DET, "rapid_table_det/models/obj_det_quantized.onnx")
    with pytest.raises(FrontendError) as refused:
        qpass.import_onnx(objects)
    assert "NonMaxSuppression" in str(refused.value)


def test_refusals_name_the_node():
    """A QLinear node qpass cannot express says which node and why (here a run-time input scale)."""
    inits = [numpy_helper.from_array(np.array(0, np.uint8), "zp"), numpy_helper.from_array(np.float32(0.1), "s")]
    graph = helper.make_graph(
        [helper.make_node("Abs", ["scale_in"], ["x_scale"]),
         helper.make_node("QLinearMatMul", ["a", "x_scale", "zp", "a", "s", "zp", "s", "zp"], ["y"], name="mm")],
        "refused", [helper.make_tensor_value_info("a", TensorProto.UINT8, (4, 4)),
                    helper.make_tensor_value_info("scale_in", TensorProto.FLOAT, ())],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, (4, 4))], inits)
    with pytest.raises(FrontendError, match=r"node 'mm' \(QLinearMatMul\) \(its DequantizeLinear part\): its scale "
                                            r"'x_scale' is computed at run time"):
        qpass.import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def test_conv_integer_of_run_time_weights_and_zero_points():
    """Every operand at run time, the weight's zero point per output channel (onnx.reference checks it:
    ONNX Runtime refuses per-channel zero points)."""
    from onnx.reference import ReferenceEvaluator
    info = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("ConvInteger", ["x", "w", "x_zp", "w_zp"], ["y"], pads=[1, 1, 1, 1])], "runtime",
        [info("x", TensorProto.UINT8, (1, 2, 4, 4)), info("w", TensorProto.UINT8, (3, 2, 2, 2)),
         info("x_zp", TensorProto.UINT8, ()), info("w_zp", TensorProto.UINT8, (3,))],
        [info("y", TensorProto.INT32, None)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    rng = np.random.default_rng(5)
    x = {"x": rng.integers(0, 256, (1, 2, 4, 4), dtype=np.uint8),
         "w": rng.integers(0, 256, (3, 2, 2, 2), dtype=np.uint8),
         "x_zp": np.array(3, np.uint8), "w_zp": np.array([0, 128, 255], np.uint8)}
    (want,) = ReferenceEvaluator(proto).run(None, x)
    np.testing.assert_array_equal(qpass.interpret(qpass.import_onnx(proto), x)["y"], want)
