"""Accuracy tools: cross-layer equalization, bias correction, AdaRound, the debugger and its charts."""

import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import qpass
from qpass import REGISTRY, Graph, PassContext, TensorType, interpret, parse_graph, print_graph, run_passes
from qpass.tools.cli import main
from qpass.tools.debug import debug_model
from qpass.errors import PassError, QpassError
from qpass.tools.plot import bar_chart_svg

from assets import PPOCR_MODELS, ppocr_model, shared_dir, text_image

CONV = dict(strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], groups=1)
POINTWISE = dict(strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], groups=1)


def relative_difference(a: dict, b: dict) -> float:
    x = np.concatenate([v.ravel() for v in a.values()]).astype(np.float64)
    y = np.concatenate([v.ravel() for v in b.values()]).astype(np.float64)
    return float(np.linalg.norm(x - y) / np.linalg.norm(x))


def unbalanced_net(activation: str = "relu", seed: int = 0, depthwise_bias: float = 0.0) -> Graph:
    """conv -> act -> depthwise conv -> act -> 1x1 conv -> act -> mean -> flatten -> dense, with
    channel ranges spread over three orders of magnitude (what CLE is for)."""
    rng = np.random.default_rng(seed)
    g = Graph("unbalanced")
    x = g.add_input("x", TensorType((1, 3, 8, 8), "f32"))

    def act(value, name):
        if activation == "relu6":
            return g.add_op("clip", [value], {"min": 0.0, "max": 6.0}, names=[name]).output
        return g.add_op("relu", [value], names=[name]).output

    spread = np.logspace(-1.5, 1.5, 8).astype(np.float32)
    w0 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * spread[:, None, None, None]
    v = g.add_op("conv2d", [x, g.add_constant(w0, "w0"), g.add_constant(rng.random(8).astype(np.float32) + 0.5,
                                                                          "b0")], CONV, names=["conv0"]).output
    v = act(v, "act0")
    w1 = rng.standard_normal((8, 1, 3, 3)).astype(np.float32) / spread[:, None, None, None]
    b1 = (rng.random(8) + depthwise_bias).astype(np.float32)
    v = g.add_op("conv2d", [v, g.add_constant(w1, "w1"), g.add_constant(b1, "b1")],
                 dict(CONV, groups=8), names=["depthwise"]).output
    v = act(v, "act1")
    w2 = rng.standard_normal((16, 8, 1, 1)).astype(np.float32) * spread[None, :, None, None]
    v = g.add_op("conv2d", [v, g.add_constant(w2, "w2"), g.add_constant(rng.random(16).astype(np.float32), "b2")],
                 POINTWISE, names=["pointwise"]).output
    v = act(v, "act2")
    v = g.add_op("reduce_mean", [v], {"axes": [2, 3], "keepdims": True}, names=["pool"]).output
    v = g.add_op("reshape", [v], {"shape": [1, 16]}, names=["flatten"]).output
    w3 = rng.standard_normal((10, 16)).astype(np.float32)
    g.set_outputs([g.add_op("dense", [v, g.add_constant(w3, "w3")], names=["logits"]).output])
    return g.verify()


def samples_for(graph: Graph, count: int, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{v.name: rng.standard_normal(v.type.shape).astype(np.float32) for v in graph.inputs}
            for _ in range(count)]


def equalize(graph: Graph, pipeline: str = "equalize-cross-layer", samples=None) -> Graph:
    with PassContext(calibration=samples, quiet=True, verify_each=True) as ctx:
        return run_passes(graph.copy(), pipeline, ctx)


def weight_of(graph: Graph, name: str) -> np.ndarray:
    return graph.producer(graph.value(name)).inputs[1].data


# =========================================================================== cross-layer equalization
BEFORE_CLE = """graph @main(%x: f32[1,2]) {
  %w1 = const f32[2,2] [4.0, -2.0, 0.5, 1.0]
  %b1 = const f32[2] [2.0, 1.0]
  %w2 = const f32[3,2] [1.0, 8.0, -0.5, 16.0, 0.25, -4.0]
  %h = dense(%x, %w1, %b1) : f32[1,2]
  %r = relu(%h) : f32[1,2]
  %y = dense(%r, %w2) : f32[1,3]
  %z = clip(%y) {max=6.0, min=0.0} : f32[1,3]
  %w3 = const f32[1,3] [1.0, 2.0, 3.0]
  %out = dense(%z, %w3) : f32[1,1]
  return %out
}
"""
# r1 = [4, 1], r2 = [1, 16]: s = sqrt(r1 / r2) = [2, 0.25]; the ReLU6 pair (y, out) stays as it is.
AFTER_CLE = """graph @main(%x: f32[1,2]) {
  %w3 = const f32[1,3] [1.0, 2.0, 3.0]
  %w1.equalized = const f32[2,2] [2.0, -1.0, 2.0, 4.0]
  %h.bias_equalized = const f32[2] [1.0, 4.0]
  %w2.equalized = const f32[3,2] [2.0, 2.0, -1.0, 4.0, 0.5, -1.0]
  %h = dense(%x, %w1.equalized, %h.bias_equalized) : f32[1,2]
  %r = relu(%h) : f32[1,2]
  %y = dense(%r, %w2.equalized) : f32[1,3]
  %z = clip(%y) {max=6.0, min=0.0} : f32[1,3]
  %out = dense(%z, %w3) : f32[1,1]
  return %out
}
"""


def test_cle_text():
    graph = parse_graph(BEFORE_CLE)
    assert print_graph(equalize(graph)) == AFTER_CLE
    with PassContext() as ctx:
        again = REGISTRY.get("equalize-cross-layer")().run(parse_graph(AFTER_CLE), ctx)
    assert not again.changed and print_graph(again.graph) == AFTER_CLE          # a fixed point


def test_cle_preserves_the_function_and_equalizes_ranges():
    g = unbalanced_net()
    e = equalize(g)
    for sample in samples_for(g, 4):
        assert relative_difference(interpret(g, sample), interpret(e, sample)) < 1e-5
    # after convergence both sides of every pair have the same per-channel range
    r1 = np.abs(weight_of(e, "conv0")).reshape(8, -1).max(axis=1)
    r2 = np.abs(weight_of(e, "depthwise")).reshape(8, -1).max(axis=1)
    assert np.allclose(r1, r2, rtol=1e-3)
    before = np.abs(weight_of(g, "pointwise")).max(axis=(0, 2, 3))
    after = np.abs(weight_of(e, "pointwise")).max(axis=(0, 2, 3))
    assert before.max() / before.min() > 100 and after.max() / after.min() < before.max() / before.min() / 10
    assert not np.array_equal(weight_of(g, "logits"), weight_of(e, "logits"))     # conv -> mean -> flatten -> dense


def test_cle_relu6_pairs_skipped_calibrated_or_replaced():
    g = unbalanced_net("relu6")
    kept = equalize(g)
    assert np.array_equal(weight_of(kept, "conv0"), weight_of(g, "conv0"))
    assert [op.kind for op in kept.ops].count("clip") == 3
    replaced = equalize(g, "equalize-cross-layer{relu6=replace}")
    assert [op.kind for op in replaced.ops].count("clip") == 0
    assert not np.array_equal(weight_of(replaced, "conv0"), weight_of(g, "conv0"))
    # calibrated: channels that reach 6 on the data keep their scale, the others stay below 6 on it
    samples = samples_for(g, 6)
    calibrated = equalize(g, "equalize-cross-layer{relu6=calibrated,absorb-bias=false}", samples)
    scales = np.abs(weight_of(g, "conv0")).reshape(8, -1).max(1) / np.abs(weight_of(calibrated, "conv0")).reshape(
        8, -1).max(1)
    peaks = []

    def observe(value, array):
        if value.name == "conv0":
            peaks.append(array.max(axis=(0, 2, 3)))
    for sample in samples:
        interpret(g, sample, observe=observe)
    saturated = np.max(peaks, axis=0) >= 6
    assert saturated.any() and (~saturated).any()
    assert np.allclose(scales[saturated], 1) and not np.allclose(scales[~saturated], 1)
    assert [op.kind for op in calibrated.ops].count("clip") == 3
    for sample in samples:
        assert relative_difference(interpret(g, sample), interpret(calibrated, sample)) < 1e-5
    with pytest.raises(PassError, match="relu6=calibrated"):
        equalize(g, "equalize-cross-layer{relu6=calibrated}")


def test_bias_absorption_moves_high_biases_and_keeps_the_function_on_its_data():
    g = unbalanced_net(depthwise_bias=40.0)              # the depthwise layer's ReLU never clips
    samples = samples_for(g, 6)
    plain, absorbed = equalize(g, "equalize-cross-layer{absorb-bias=false}", samples), equalize(g, samples=samples)

    def bias(graph, name):
        return graph.producer(graph.value(name)).inputs[2].data
    lowered = bias(plain, "depthwise") - bias(absorbed, "depthwise")
    assert np.all(lowered >= 0) and np.count_nonzero(lowered) >= 4     # absorbed into the 1x1 conv after it
    assert np.array_equal(bias(plain, "conv0"), bias(absorbed, "conv0"))    # the depthwise conv pads: no absorption
    for sample in samples:
        assert relative_difference(interpret(g, sample), interpret(absorbed, sample)) < 1e-5


@pytest.mark.parametrize("model", ["mobilenet_v2", "ppocr_cls"])
def test_cle_preserves_real_models(model):
    if model == "mobilenet_v2":
        graph, feed = qpass.import_onnx(str(shared_dir() / "models" / "mobilenet_v2.onnx")), "input"
        shape, mean, std = (1, 3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    else:
        shape, mean, std, feed = (1, 3, 48, 192), 0.5, 0.5, "x"
        graph = qpass.import_onnx(str(ppocr_model(PPOCR_MODELS[2])), {feed: shape})
    g = run_passes(graph, qpass.api.CANONICALIZE)
    calibration, unseen = [{feed: text_image(shape, seed=i, mean=mean, std=std)} for i in range(2)]
    exact = equalize(g, "equalize-cross-layer{absorb-bias=false}")             # exact for every input
    absorbed = equalize(g, samples=[calibration])                              # exact on its calibration data
    assert exact != g and absorbed != exact
    for sample in (calibration, unseen):
        assert relative_difference(interpret(g, sample), interpret(exact, sample)) < 1e-5
    assert relative_difference(interpret(g, calibration), interpret(absorbed, calibration)) < 1e-5


# =========================================================================== bias correction
def single_conv(seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    g = Graph("layer")
    x = g.add_input("x", TensorType((1, 8, 10, 10), "f32"))
    w = g.add_constant((rng.standard_normal((16, 8, 3, 3)) * 0.2 + 0.03).astype(np.float32), "w")
    b = g.add_constant(np.zeros(16, np.float32), "b")
    g.set_outputs([g.add_op("conv2d", [x, w, b], CONV, names=["y"]).output])
    return g


def conv_inputs(count: int, seed: int) -> list[dict]:
    """Inputs with per-channel offsets and scales, so rounding errors do not average out."""
    rng = np.random.default_rng(seed)
    return [{"x": (rng.standard_normal((1, 8, 10, 10)) * np.linspace(0.2, 2, 8)[None, :, None, None]
                   + 0.5).astype(np.float32)} for _ in range(count)]


def weight_only(graph: Graph, pipeline: str, samples: list[dict]) -> Graph:
    """Run `pipeline` after fake-quantizing only the weights (the error under test is theirs)."""
    ctx = PassContext(calibration=samples, quiet=True, verify_each=True)
    ctx.analyses.ranges = {}
    with ctx:
        return run_passes(graph.copy(), pipeline, ctx)


def test_bias_correction_removes_the_mean_output_error_of_a_conv():
    g, samples = single_conv(), conv_inputs(32, seed=2)
    fake = weight_only(g, "quantize{weight-bits=4,weight-clip=max}", samples)
    corrected = weight_only(fake, "correct-bias{samples=32}", samples)

    def mean_error(graph):
        return np.mean([(interpret(graph, s)["y"] - interpret(g, s)["y"]).mean(axis=(0, 2, 3)) for s in samples],
                       axis=0)
    before, after = np.abs(mean_error(fake)).max(), np.abs(mean_error(corrected)).max()
    assert before > 1e-2 and after < before / 10, (before, after)


# =========================================================================== AdaRound
def output_error(graph: Graph, reference: Graph, samples: list[dict]) -> float:
    return float(np.mean([np.sum((interpret(graph, s)["y"] - interpret(reference, s)["y"]) ** 2) for s in samples]))


def test_adaround_beats_nearest_rounding_on_a_4bit_conv():
    g = single_conv()
    calibration, held_out = conv_inputs(16, seed=3), conv_inputs(32, seed=4)
    nearest = weight_only(g, "quantize{weight-bits=4,weight-clip=max}", calibration)
    ctx = PassContext(calibration=calibration, quiet=True, verify_each=True)
    with ctx:
        learned = run_passes(nearest.copy(), "adaround{correct-bias=false}", ctx)
    figures = ctx.analyses.adaround["y"]
    assert figures["error"] < 0.9 * figures["nearest_error"]
    assert output_error(learned, g, held_out) < 0.95 * output_error(nearest, g, held_out)
    # the weights stay quantize(float) -> dequantize on the same grid, so folding works unchanged
    q = learned.find_ops("quantize")[0]
    assert q.output.type == nearest.find_ops("quantize")[0].output.type
    levels = q.inputs[0].data / q.output.type.quant.broadcast(q.inputs[0].type.shape)[0]
    assert np.abs(levels - np.rint(levels)).max() < 1e-4
    original = nearest.find_ops("quantize")[0].inputs[0].data / q.output.type.quant.broadcast(levels.shape)[0]
    assert np.all(np.abs(levels - original) < 1 + 1e-4)                  # only ever rounded up or down
    integer = qpass.quantize(g, calibration, bits=4, adaround=True, quiet=True)
    assert [op.inputs[1].type.dtype for op in integer.find_ops("qconv2d")] == ["i4"]


def test_adaround_needs_calibration_data():
    fake = weight_only(single_conv(), "quantize{weight-bits=4}", conv_inputs(2, seed=0))
    with pytest.raises(PassError, match="calibration data"):
        run_passes(fake, "adaround", PassContext())


# =========================================================================== quantize keep-int8, api
def test_keep_int8_first_and_last_under_4_bits():
    g = unbalanced_net()
    q = qpass.quantize(g, samples_for(g, 4), bits=4, keep_int8=["first", "last"], quiet=True)
    dtypes = [op.inputs[1].type.dtype for op in q.ops if op.kind in ("qconv2d", "qdense")]
    assert dtypes == ["i8", "i4", "i4", "i8"]


def test_pipeline_places_cle_and_adaround():
    steps = [s.split("{")[0] for s in qpass.quantization_pipeline(4, cle=True, adaround=True).split(",")]
    assert steps.index("fold-batchnorm") < steps.index("equalize-cross-layer") < steps.index("range-analysis")
    assert steps.index("quantize") < steps.index("adaround") < steps.index("correct-bias") \
        < steps.index("fold-fake-quant")
    assert "equalize-cross-layer" not in qpass.quantization_pipeline(8)


# =========================================================================== debugger and charts
def net_with_a_bad_layer() -> Graph:
    """conv0 -> conv1 -> 1x1 conv2, each with ReLU. conv1's last channel carries a bias of 500 that
    conv2 ignores, so the activation range of conv1's output leaves its other channels a step or two."""
    rng = np.random.default_rng(0)
    g = Graph("net")
    v = g.add_input("x", TensorType((1, 3, 8, 8), "f32"))
    for i, (cin, cout, attrs) in enumerate([(3, 8, CONV), (8, 8, CONV), (8, 8, POINTWISE)]):
        w = rng.standard_normal((cout, cin) + ((3, 3) if attrs is CONV else (1, 1))).astype(np.float32) * 0.3
        b = rng.standard_normal(cout).astype(np.float32) * 0.1
        if i == 1:
            b[7] = 500.0
        if i == 2:
            w[:, 7] = 0.0
        conv = g.add_op("conv2d", [v, g.add_constant(w, f"w{i}"), g.add_constant(b, f"b{i}")], attrs,
                        names=[f"conv{i}"])
        v = g.add_op("relu", [conv.output], names=[f"relu{i}"]).output
    g.set_outputs([v])
    return g


def test_debug_names_the_bad_layer_and_the_fix_works():
    g = net_with_a_bad_layer()
    calibration = samples_for(g, 8)
    report = debug_model(g, calibration, bits=8, samples=4)
    assert report["worst"][0] == "conv1"
    layers = {layer["name"]: layer for layer in report["layers"]}
    assert layers["conv1"]["sensitivity_db"] < min(layers["conv0"]["sensitivity_db"],
                                                   layers["conv2"]["sensitivity_db"]) - 10
    assert layers["conv1"]["weight_sensitivity_db"] > layers["conv1"]["sensitivity_db"] + 10
    assert all(layer["bits"] == 8 for layer in layers.values())
    assert len(report["suggestions"]) == 1 and report["suggestions"][0].startswith("conv1")
    assert "activation" in report["suggestions"][0] and "equalize-cross-layer" in report["suggestions"][0]
    # the suggested fix: bias absorption moves the offset into conv2's bias
    fixed = debug_model(g, calibration, samples=4, pipeline=qpass.quantization_pipeline(8, cle=True))
    assert {layer["name"]: layer for layer in fixed["layers"]}["conv1"]["sensitivity_db"] > \
        layers["conv1"]["sensitivity_db"] + 10


def test_debug_cli_writes_json_and_svg(tmp_path, capsys):
    g = net_with_a_bad_layer()
    qpass.save(g, tmp_path / "net.qir")
    np.savez(tmp_path / "calib.npz", x=np.stack([s["x"] for s in samples_for(g, 6)]))
    out = tmp_path / "debug"
    assert main(["debug", str(tmp_path / "net.qir"), "--calib", str(tmp_path / "calib.npz"), "--bits", "4",
                 "--samples", "3", "-o", str(out)]) == 0
    report = json.loads((out / "debug.json").read_text())
    assert report["bits"] == 4 and report["worst"][0] == "conv1"
    assert {layer["bits"] for layer in report["layers"]} == {4}
    for chart in ("sqnr.svg", "bits.svg"):
        root = ET.fromstring((out / chart).read_text())
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert "conv1" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--calib", "missing.npz"], "does not exist"),
    (["--calib", "calib.npz", "--samples", "0"], "at least one sample"),
])
def test_debug_cli_errors_leave_no_files(tmp_path, capsys, args, message):
    g = net_with_a_bad_layer()
    qpass.save(g, tmp_path / "net.qir")
    np.savez(tmp_path / "calib.npz", x=np.stack([s["x"] for s in samples_for(g, 2)]))
    args = [str(tmp_path / a) if a.endswith(".npz") else a for a in args]
    assert main(["debug", str(tmp_path / "net.qir"), *args, "-o", str(tmp_path / "out")]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_debug_without_layers_is_a_clear_error():
    g = Graph("plain")
    x = g.add_input("x", TensorType((1, 4), "f32"))
    g.set_outputs([g.add_op("relu", [x], names=["y"]).output])
    with pytest.raises(QpassError, match="no conv2d/dense layer"):
        debug_model(g, samples_for(g, 2))


def bias_less_net() -> Graph:
    """conv (no bias) -> relu -> conv (no bias) -> dense (no bias): correct-bias gives the fake-quant
    layers a bias that the float layers do not have (PP-OCR's cls model crashed `qpass debug` so)."""
    rng = np.random.default_rng(2)
    g = Graph("bias_less")
    v = g.add_input("x", TensorType((1, 3, 8, 8), "f32"))
    for i, cin in enumerate((3, 4)):
        w = g.add_constant(rng.standard_normal((4, cin, 3, 3)).astype(np.float32) * 0.3, f"w{i}")
        v = g.add_op("relu", [g.add_op("conv2d", [v, w], CONV, names=[f"conv{i}"]).output], names=[f"relu{i}"]).output
    v = g.add_op("reshape", [g.add_op("reduce_mean", [v], {"axes": [2, 3], "keepdims": True}, names=["pool"]).output],
                 {"shape": [1, 4]}, names=["flatten"]).output
    g.set_outputs([g.add_op("dense", [v, g.add_constant(rng.standard_normal((3, 4)).astype(np.float32), "w2")],
                            names=["logits"]).output])
    return g.verify()


@pytest.mark.parametrize("bits", [8, "mixed"])
def test_debug_layers_without_bias(bits):
    g = bias_less_net()
    report = debug_model(g, samples_for(g, 6), bits=bits, samples=3)
    assert [layer["name"] for layer in report["layers"]] == ["conv0", "conv1", "logits"]
    assert all(layer["sensitivity_db"] is not None and layer["weight_sensitivity_db"] is not None
               for layer in report["layers"])


def whole_model_sensitivities(graph: Graph, calibration, bits, samples: int) -> dict:
    """What the debugger reports, measured the slow way: each what-if model run whole on every sample."""
    from qpass.quant.report import sqnr_db
    from qpass.tools import debug
    from qpass.quant import is_float_layer, quantized_weight
    passes = qpass.passmgr.pipeline.parse_pipeline(qpass.quantization_pipeline(bits))
    names = [p.name for p in passes]
    with PassContext(calibration=calibration, quiet=True) as ctx:
        reference = run_passes(graph.copy(), passes[:names.index("range-analysis")], ctx)
        fake = run_passes(reference.copy(), passes[names.index("range-analysis"):names.index("fold-fake-quant")], ctx)

    def outputs(g):
        return np.concatenate([np.concatenate([a.reshape(-1) for a in interpret(g, s).values()])
                               for s in calibration[:samples]])
    float_out = outputs(reference)
    found = {}
    for op in fake.ops:
        if is_float_layer(op) and quantized_weight(fake, op) is not None:
            for activation, key in ((True, "sensitivity_db"), (False, "weight_sensitivity_db")):
                what_if, _ = debug._with_layer_quantized(reference, fake, op, activation)
                found[debug._float_name(op.name), key] = debug._finite(sqnr_db(float_out, outputs(what_if)))
    return found


@pytest.mark.parametrize("net, bits", [(net_with_a_bad_layer, 8), (net_with_a_bad_layer, "mixed"),
                                       (bias_less_net, 4), (unbalanced_net, 8)])
def test_debug_what_ifs_equal_whole_model_runs(net, bits):
    """The debugger runs each what-if from its layer on the float model's values: bit for bit what a
    whole-model run gives, so the report is the one it was before that speed-up."""
    g = net()
    calibration = samples_for(g, 6)
    report = debug_model(g, calibration, bits=bits, samples=3)
    slow = whole_model_sensitivities(g, calibration, bits, 3)
    fast = {(layer["name"], key): layer[key] for layer in report["layers"]
            for key in ("sensitivity_db", "weight_sensitivity_db")}
    assert fast == slow


def test_bar_chart_svg_is_valid_and_escapes_labels():
    svg = bar_chart_svg(["conv<1>", "a" * 80, "dense&co"], {"weights": [30.0, float("inf"), -4.0],
                                                             "activations": [20.0, 12.5, float("nan")]},
                        "SQNR <per> layer", "dB")
    root = ET.fromstring(svg)
    bars = [e for e in root.iter("{http://www.w3.org/2000/svg}rect") if e.find(
        "{http://www.w3.org/2000/svg}title") is not None]
    assert len(bars) == 4                                  # the two non-finite values draw nothing
    assert "conv&lt;1&gt;" in svg and "…" in svg and svg == bar_chart_svg(
        ["conv<1>", "a" * 80, "dense&co"], {"weights": [30.0, float("inf"), -4.0],
                                           "activations": [20.0, 12.5, float("nan")]}, "SQNR <per> layer", "dB")
    with pytest.raises(ValueError, match="2 values for 3 labels"):
        bar_chart_svg(["a", "b", "c"], {"s": [1.0, 2.0]}, "t", "y")


def test_adaround_gives_the_same_weights_however_busy_the_machine_is():
    """The run is a fixed number of optimizer steps: a second run while every core is busy gives
    the very same integer weights as a run on a quiet machine."""
    import multiprocessing
    g, calibration = single_conv(), conv_inputs(16, seed=3)
    quiet = qpass.quantize(g, calibration, bits=4, adaround=True, quiet=True)
    hogs = [multiprocessing.Process(target=_spin, args=(3.0,)) for _ in range(2 * (os.cpu_count() or 1))]
    for hog in hogs:
        hog.start()
    try:
        busy = qpass.quantize(g, calibration, bits=4, adaround=True, quiet=True)
    finally:
        for hog in hogs:
            hog.join()
    weights = [[op.inputs[1].data for op in graph.find_ops("qconv2d")] for graph in (quiet, busy)]
    assert len(weights[0]) == 1 and all(np.array_equal(a, b) for a, b in zip(*weights))
    assert print_graph(quiet) == print_graph(busy)


def _spin(seconds: float) -> None:
    """Keep one core busy for a while (a bounded loop: it stops by itself)."""
    import time
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sum(range(1000))
