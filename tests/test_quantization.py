"""Quantization passes end to end on the bundled digits model, plus their parts."""

import numpy as np
import pytest

import qpass
from qpass import PassContext, interpret, run_passes
from qpass.tools.demo import bundled_model_path, bundled_test_set
from qpass.errors import PassError, QpassError
from qpass.quant.calibration import CalibrationError
from qpass.quant.observers import OBSERVERS
from qpass.quant.params import activation_params, dequantize_array, quantize_array, weight_params

INTEGER_KINDS = {"qconv2d", "qdense", "qadd", "qmul", "qreduce_mean", "lut", "requantize", "reshape", "max_pool2d",
                 "concat", "transpose", "slice"}


@pytest.fixture(scope="module")
def digits():
    graph = qpass.import_onnx(str(bundled_model_path()))
    images, labels = bundled_test_set()
    return graph, {"input": images[:48]}, images[48:], labels[48:]


def accuracy(graph, images, labels):
    return np.mean([np.argmax(interpret(graph, {"input": x[None]})["logits"]) == y for x, y in zip(images, labels)])


@pytest.mark.parametrize("method", sorted(OBSERVERS))
def test_int8_keeps_accuracy_and_is_integer_only(digits, method):
    graph, calib, images, labels = digits
    q = qpass.quantize(graph, calib, bits=8, method=method, quiet=True)
    kinds = [op.kind for op in q.ops]
    assert kinds[0] == "quantize" and kinds[-1] == "dequantize"
    assert set(kinds[1:-1]) <= INTEGER_KINDS, kinds
    assert accuracy(q, images, labels) >= accuracy(graph, images, labels) - 0.02


def test_integer_graph_within_one_step_of_fake_quant_graph(digits):
    graph, calib, images, _ = digits
    with PassContext(calibration=[{"input": x[None]} for x in calib["input"]], quiet=True) as ctx:
        fake = run_passes(graph.copy(), qpass.api.CANONICALIZE + ",range-analysis,quantize", ctx)
        integer = run_passes(fake.copy(), "fold-fake-quant", ctx)
    quantized = {op.output.name: op.output for op in fake.find_ops("quantize") if not op.inputs[0].is_constant}
    shared = [name for name in quantized if integer.has_value(name) and integer.value(name).type.quant]
    assert len(shared) >= 6
    probe_fake, probe_int = {}, {}
    for x in images[:20]:
        interpret(fake, {"input": x[None]}, observe=lambda v, a: probe_fake.setdefault(v.name, []).append(a))
        interpret(integer, {"input": x[None]}, observe=lambda v, a: probe_int.setdefault(v.name, []).append(a))
    for name in shared:
        diff = np.abs(np.concatenate(probe_fake[name]).astype(np.int64) - np.concatenate(probe_int[name]))
        assert diff.max() <= 1, f"%{name} differs by {diff.max()} steps"


def test_fuse_requant_is_bit_exact(digits):
    graph, calib, images, _ = digits
    pipeline = qpass.quantization_pipeline(8).replace(",fuse-requant", "")
    unfused = qpass.quantize(graph, calib, pipeline=pipeline, quiet=True)
    with PassContext(verify_each=True) as ctx:
        fused = run_passes(unfused.copy(), "fuse-requant", ctx)
    assert len(fused.find_ops("requantize")) < len(unfused.find_ops("requantize"))
    assert all("multiplier" in op.attrs for op in fused.find_ops("qconv2d"))
    for x in images[:30]:
        a, b = interpret(unfused, {"input": x[None]}), interpret(fused, {"input": x[None]})
        assert np.array_equal(a["logits"], b["logits"])


def test_mixed_meets_the_budget_and_honours_overrides(digits):
    graph, calib, images, labels = digits
    with PassContext(verify_each=True) as ctx:
        q = qpass.quantize(graph, calib, pipeline=qpass.quantization_pipeline("mixed").replace(
            "assign-bitwidth{budget=0.6}", "assign-bitwidth{budget=0.7,keep-int8=[stem.*]}"), ctx=ctx, quiet=True)
    report = ctx.analyses.bitwidth
    int8_bytes = sum(layer["weights"] for layer in report.values())
    size = sum(layer["weights"] * layer["bits"] / 8 for layer in report.values())
    assert size <= 0.7 * int8_bytes
    assert any(layer["bits"] == 4 for layer in report.values())
    assert all(layer["bits"] == 8 for name, layer in report.items() if name.startswith("stem."))
    assert accuracy(q, images, labels) >= 0.9


def test_infeasible_budget_is_a_clear_error(digits):
    graph, calib, _, _ = digits
    with pytest.raises(PassError, match="below the smallest reachable size"):
        qpass.quantize(graph, calib, bits="mixed", budget=0.3, quiet=True)


@pytest.mark.parametrize("calibration, message", [
    ({"input": np.zeros((4, 1, 1, 9, 9), np.float32)}, "shape"),
    ({"input": np.zeros((4, 1, 1, 8, 8), np.int32)}, "dtype"),
    ({"input": np.full((2, 1, 1, 8, 8), np.nan, np.float32)}, "NaN or Inf"),
    ({"image": np.zeros((2, 1, 1, 8, 8), np.float32)}, "missing input(s) input"),
    ([], "empty"),
])
def test_bad_calibration_data(digits, calibration, message):
    graph = digits[0]
    with pytest.raises(CalibrationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        qpass.quantize(graph, calibration, quiet=True)


def test_calibration_files(digits, tmp_path):
    graph, calib, _, _ = digits
    np.savez(tmp_path / "calib.npz", input=calib["input"][:8])
    assert qpass.quantize(graph, tmp_path / "calib.npz", quiet=True).find_ops("qconv2d")
    folder = tmp_path / "samples"
    folder.mkdir()
    for i, x in enumerate(calib["input"][:4]):
        np.save(folder / f"{i}.npy", x[None])
    assert qpass.quantize(graph, folder, quiet=True).find_ops("qconv2d")
    with pytest.raises(CalibrationError, match="holds no .npy"):
        qpass.quantize(graph, tmp_path / "nothing_here" if (tmp_path / "nothing_here").mkdir() is None else None)


def test_constant_input_gets_the_documented_fallback(digits):
    graph = digits[0]
    q = qpass.quantize(graph, {"input": np.zeros((4, 1, 1, 8, 8), np.float32)}, quiet=True)
    assert np.all(np.isfinite(interpret(q, {"input": np.zeros((1, 1, 8, 8), np.float32)})["logits"]))
    params = activation_params(0.0, 0.0)
    assert float(params.scale) == 1.0
    assert dequantize_array(quantize_array(np.zeros(3), params, "i8"), params).tolist() == [0.0, 0.0, 0.0]


def test_activation_params_represent_zero_exactly():
    for lo, hi in [(-1.3, 2.7), (0.2, 5.0), (-4.0, -0.5)]:
        p = activation_params(lo, hi, "i8")
        assert -128 <= int(p.zero_point) <= 127
        assert float(p.scale) * (0 - int(p.zero_point)) + float(p.scale) * int(p.zero_point) == 0
        assert np.rint(0 / float(p.scale)) + int(p.zero_point) == int(p.zero_point)


def test_weight_params_granularities():
    w = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    assert weight_params(w, granularity="per-tensor").scale.shape == ()
    assert weight_params(w, granularity="per-channel").scale.shape == (4,)
    group = weight_params(w, "i4", granularity="per-group", axis=1, group_size=16)
    assert group.scale.shape == (4, 4) and group.group_size == 16
    assert group.check(w.shape, "i4") is None


def test_observers():
    rng = np.random.default_rng(0)
    data = [rng.standard_normal(20000).astype(np.float32) for _ in range(4)]
    data[0][0] = 1000.0                                  # one outlier
    ranges = {}
    for name, cls in OBSERVERS.items():
        observer = cls()
        for d in data:
            observer.observe(d)
        ranges[name] = observer.range(8)
    assert ranges["minmax"][1] == 1000.0
    for name in ("percentile", "entropy"):
        assert ranges[name][1] < 100, (name, ranges[name])
        assert ranges[name][0] < -2 and ranges[name][1] > 2, (name, ranges[name])
    # MSE weighs one far outlier's clipping error against everyone's rounding error: on heavy
    # tails (Laplace) it clips, and its error is no worse than min-max's.
    laplace = rng.laplace(size=200000).astype(np.float32)
    mse, minmax = OBSERVERS["mse"](), OBSERVERS["minmax"]()
    mse.observe(laplace)
    minmax.observe(laplace)
    lo, hi = mse.range(8)
    assert laplace.min() < lo < -3 and 3 < hi < laplace.max()

    def error(lo, hi):
        step = (hi - lo) / 255
        return np.mean((np.clip(np.rint((laplace - lo) / step), 0, 255) * step + lo - laplace) ** 2)
    assert error(lo, hi) < error(*minmax.range(8))


def test_range_analysis_needs_data(digits):
    with pytest.raises(QpassError, match="needs calibration data"):
        run_passes(digits[0].copy(), "range-analysis")


def test_bias_correction_removes_the_mean_output_error():
    """A synthetic dense layer whose int4 rounding shifts every output: correct-bias cancels the mean shift."""
    from qpass import Graph, TensorType
    rng = np.random.default_rng(3)
    g = Graph("layer")
    x = g.add_input("x", TensorType((1, 64), "f32"))
    w = g.add_constant((rng.standard_normal((8, 64)) * 0.1 + 0.02).astype(np.float32), "w")
    g.set_outputs([g.add_op("dense", [x, w], names=["y"]).output])
    samples = [{"x": (rng.standard_normal((1, 64)) + 1.0).astype(np.float32)} for _ in range(64)]
    ctx = PassContext(calibration=samples, quiet=True)
    ctx.analyses.ranges = {}                      # weights only: the error under test is theirs
    with ctx:
        fake = run_passes(g.copy(), "quantize{weight-bits=4,weight-clip=max}", ctx)
        corrected = run_passes(fake.copy(), "correct-bias{samples=64}", ctx)

    def mean_error(graph):
        return np.mean([interpret(graph, s)["y"] - interpret(g, s)["y"] for s in samples], axis=0)
    before, after = np.abs(mean_error(fake)).max(), np.abs(mean_error(corrected)).max()
    assert before > 1e-3 and after < before / 20, (before, after)


def test_ops_without_integer_form_stay_float_and_are_reported():
    from qpass import Graph, TensorType
    g = Graph("softmaxed")
    x = g.add_input("x", TensorType((1, 8), "f32"))
    w = g.add_constant(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32), "w")
    d = g.add_op("dense", [x, w], names=["d"])
    g.set_outputs([g.add_op("softmax", [d.output], {"axis": 1}, names=["p"]).output])
    samples = [{"x": np.random.default_rng(i).standard_normal((1, 8)).astype(np.float32)} for i in range(8)]
    ctx = PassContext()
    q = qpass.quantize(g, samples, ctx=ctx, quiet=True)
    assert ctx.analyses.float_ops == {"p": "softmax: has no integer form"}
    kinds = [op.kind for op in q.ops]
    assert "qdense" in kinds and kinds[kinds.index("softmax") - 1] == "dequantize"
    assert np.allclose(interpret(q, samples[0])["p"], interpret(g, samples[0])["p"], atol=0.02)


def test_float16_model_quantizes_and_compiles_bit_exact(tmp_path):
    """An f16 model computes in f32 inside (its interface stays f16): it quantizes to integer ops, and the
    x86 build equals the interpreter bit for bit."""
    from test_frontend import half_model
    import onnx
    path = tmp_path / "half.onnx"
    onnx.save(half_model(), str(path))
    rng = np.random.default_rng(0)
    calibration = {"x": rng.standard_normal((8, 1, 3, 6, 6)).astype(np.float16)}
    compiled = qpass.compile(str(path), "x86_64-linux-gnu", calibration=calibration)
    graph = compiled.graph
    kinds = [op.kind for op in graph.ops]
    assert {"qconv2d", "qdense"} <= set(kinds) and kinds.count("quantize") == 1, kinds
    assert [(v.name, v.type.dtype) for v in graph.inputs + graph.outputs] == [("x", "f16"), ("y", "f16")]
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float16)
    got, want = compiled.run({"x": x}), interpret(graph, {"x": x})
    assert got["y"].dtype == np.float16 and np.array_equal(got["y"], want["y"])
    float_y = interpret(qpass.import_onnx(str(path)), {"x": x})["y"].astype(np.float32)
    assert np.abs(want["y"] - float_y).max() < 0.05 * np.abs(float_y).max()


def identity_output_graph():
    """dense -> softmax -> Identity as the graph output, the ending of PP-OCR's cls model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((8, 4)).astype(np.float32), "fc.w")
    nodes = [helper.make_node("MatMul", ["x", "fc.w"], ["linear_0.tmp_0"]),
             helper.make_node("Softmax", ["linear_0.tmp_0"], ["softmax_0.tmp_0"], axis=1),
             helper.make_node("Identity", ["softmax_0.tmp_0"], ["save_infer_model/scale_0.tmp_1"])]
    graph = helper.make_graph(nodes, "cls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("save_infer_model/scale_0.tmp_1", TensorProto.FLOAT,
                                                             [1, 4])], [w])
    return qpass.import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def test_integer_graph_keeps_the_output_names():
    g = identity_output_graph()
    samples = [{"x": np.random.default_rng(i).standard_normal((1, 8)).astype(np.float32)} for i in range(8)]
    q = qpass.quantize(g, samples, quiet=True)
    assert [v.name for v in q.outputs] == [v.name for v in g.outputs] == ["save_infer_model.scale_0.tmp_1"]
    assert list(interpret(q, samples[0])) == list(interpret(g, samples[0]))


def test_ppocr_cls_integer_graph_keeps_the_output_name():
    from assets import PPOCR_MODELS, ppocr_model, text_image
    g = qpass.import_onnx(str(ppocr_model(PPOCR_MODELS[2])), {"x": (1, 3, 48, 192)})
    q = qpass.quantize(g, {"x": np.stack([text_image((1, 3, 48, 192), seed=i) for i in range(2)])}, quiet=True)
    assert [v.name for v in q.outputs] == [v.name for v in g.outputs] == ["save_infer_model.scale_0.tmp_1"]
