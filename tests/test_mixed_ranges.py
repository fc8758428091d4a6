"""quantize keeps a concat or add float when its inputs' ranges differ by orders of magnitude (a detector
head joining box coordinates 0..320 with sigmoid scores 0..1), so the small inputs survive."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import qpass
from qpass import PassContext, interpret

RNG = np.random.default_rng(7)


def detector(join: str = "Concat", after: str = "") -> qpass.Graph:
    """conv -> relu -> [boxes = 320 * sigmoid(conv), scores = sigmoid(conv)] -> join (-> `after`)."""
    weights = {"w": (8, 3, 3, 3), "wb": (3, 8, 1, 1), "ws": (3, 8, 1, 1)}
    inits = [numpy_helper.from_array((RNG.standard_normal(s) * 0.5).astype(np.float32), n) for n, s in weights.items()]
    inits.append(numpy_helper.from_array(np.array(320, np.float32), "size"))
    attrs = {"axis": 1} if join == "Concat" else {}
    joined = "y" if not after else "joined"
    nodes = [helper.make_node("Conv", ["x", "w"], ["feat"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["feat"], ["act"]),
             helper.make_node("Conv", ["act", "wb"], ["raw_boxes"]),
             helper.make_node("Sigmoid", ["raw_boxes"], ["unit"]),
             helper.make_node("Mul", ["unit", "size"], ["boxes"]),
             helper.make_node("Conv", ["act", "ws"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["scores"]),
             helper.make_node(join, ["boxes", "scores"], [joined], **attrs)]
    if after == "Transpose":
        nodes.append(helper.make_node("Transpose", ["joined"], ["y"], perm=[0, 2, 3, 1]))
    graph = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return qpass.import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


CALIBRATION = {"x": RNG.standard_normal((16, 1, 3, 8, 8)).astype(np.float32)}
SAMPLE = {"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)}


def sqnr(reference: np.ndarray, approximation: np.ndarray) -> float:
    """Signal to quantization noise in dB."""
    noise = np.sum((reference.astype(np.float64) - approximation) ** 2)
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / max(noise, 1e-30)))


def quantized(graph, ratio=None):
    """The integer graph and its context; `ratio` sets quantize's max-range-ratio."""
    ctx = PassContext()
    pipeline = None
    if ratio is not None:
        pipeline = qpass.quantization_pipeline().replace("quantize{", f"quantize{{max-range-ratio={ratio},")
    return qpass.quantize(graph, CALIBRATION, ctx=ctx, quiet=True, pipeline=pipeline), ctx


def test_scores_concatenated_with_boxes_survive():
    graph = detector()
    q, ctx = quantized(graph)
    want, got = interpret(graph, SAMPLE)["y"], interpret(q, SAMPLE)["y"]
    assert np.abs(got[:, 3:]).max() > 0.5
    assert sqnr(want[:, 3:], got[:, 3:]) > 30 and sqnr(want[:, :3], got[:, :3]) > 30
    # Each input is quantized at its own scale; the concat itself stays float, between dequantizes.
    concat = q.producer(q.outputs[0])
    assert concat.kind == "concat" and {q.producer(v).kind for v in concat.inputs} == {"dequantize"}
    assert {"lut", "qconv2d"} <= {op.kind for op in q.ops}
    why = ctx.analyses.custom["quantize"]["float_ops"]["y"]
    assert why.startswith("concat: its inputs' calibrated ranges differ") and "%boxes up to 3" in why
    assert "max-range-ratio=64" in why and "y" in ctx.analyses.float_ops


def test_one_scale_concat_loses_the_scores_when_the_check_is_off():
    """What the check prevents: at the boxes' scale (320/255) every score rounds to 0 or 1.25."""
    graph = detector()
    q, ctx = quantized(graph, ratio=0)
    want, got = interpret(graph, SAMPLE)["y"], interpret(q, SAMPLE)["y"]
    assert sqnr(want[:, 3:], got[:, 3:]) < 10
    assert ctx.analyses.custom["quantize"]["float_ops"] == {}
    assert q.producer(q.outputs[0]).kind == "dequantize"


def test_a_large_enough_ratio_quantizes_the_concat():
    q, ctx = quantized(detector(), ratio=1000)
    assert ctx.analyses.custom["quantize"]["float_ops"] == {}
    assert q.producer(q.producer(q.outputs[0]).inputs[0]).kind == "concat"     # integer concat, then dequantize


def test_data_movement_after_a_mixed_concat_stays_float_too():
    graph = detector(after="Transpose")
    q, ctx = quantized(graph)
    want, got = interpret(graph, SAMPLE)["y"], interpret(q, SAMPLE)["y"]
    assert sqnr(want[..., 3:], got[..., 3:]) > 30
    assert set(ctx.analyses.custom["quantize"]["float_ops"]) == {"joined", "y"}
    assert q.producer(q.outputs[0]).kind == "transpose"


def test_add_of_mixed_ranges_stays_float():
    graph = detector(join="Add")
    q, ctx = quantized(graph)
    assert ctx.analyses.custom["quantize"]["float_ops"]["y"].startswith("add: its inputs' calibrated ranges")
    add = q.producer(q.outputs[0])
    assert add.kind == "add" and {q.producer(v).kind for v in add.inputs} == {"dequantize"}


def test_a_negative_ratio_also_turns_the_check_off():
    q, ctx = quantized(detector(), ratio=-1)
    assert ctx.analyses.custom["quantize"]["float_ops"] == {}


def test_a_bad_max_range_ratio_is_a_clear_error():
    with pytest.raises(qpass.QpassError, match="max-range-ratio"):
        quantized(detector(), ratio="abc")
