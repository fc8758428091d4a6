"""range-analysis{method=layer-mse}: activation ranges chosen by the error they cause in the layer's output."""

import numpy as np
import pytest

from qpass import Graph, PassContext, TensorType, interpret, run_passes

POINTWISE = dict(strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], groups=1)
WIDE = 40.0                                     # channel 1's values span +-WIDE, channel 0's are N(0, 1)


def pointwise_conv(wide_channel_weight: float) -> Graph:
    """x [1, 2, 8, 8] -> 1x1 conv (4 outputs). Channel 1 of x is wide; the conv reads it with
    `wide_channel_weight` against weights of about 1 for channel 0."""
    rng = np.random.default_rng(0)
    g = Graph("pointwise")
    x = g.add_input("x", TensorType((1, 2, 8, 8), "f32"))
    w = rng.uniform(0.5, 1.5, (4, 2, 1, 1)).astype(np.float32)
    w[:, 1] = wide_channel_weight
    conv = g.add_op("conv2d", [x, g.add_constant(w, "w"), g.add_constant(np.zeros(4, np.float32), "b")],
                    POINTWISE, names=["conv"])
    g.set_outputs([conv.output])
    return g


def samples(count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        x = np.empty((1, 2, 8, 8), np.float32)
        x[0, 0] = rng.standard_normal((8, 8))
        x[0, 1] = rng.uniform(-WIDE, WIDE, (8, 8))
        out.append({"x": x})
    return out


def calibrate(graph: Graph, method: str):
    """(ranges, fake-quant graph) after range-analysis{method} and quantize on 16 calibration samples."""
    with PassContext(calibration=samples(16, seed=1), quiet=True) as ctx:
        fake = run_passes(graph.copy(), f"range-analysis{{method={method}}},quantize", ctx)
    return ctx.analyses.ranges, fake


def output_error(graph: Graph, fake: Graph) -> float:
    """Relative squared error of the fake-quant graph's conv output on 16 samples not used to calibrate."""
    noise = power = 0.0
    for sample in samples(16, seed=2):
        exact, approx = interpret(graph, sample)["conv"], interpret(fake, sample)["conv"]
        noise, power = noise + float(np.sum((approx - exact) ** 2)), power + float(np.sum(exact ** 2))
    return noise / power


def test_layer_mse_clips_an_input_range_the_layer_barely_reads():
    """Min/max spends int8 steps on channel 1's +-40, which the conv weighs by 0.001; the searched
    range clips it, so channel 0 (what the conv reads) gets finer steps and the output error falls.
    The tensor-level mse observer cannot see this: on the tensor alone, clipping +-40 costs more."""
    graph = pointwise_conv(1e-3)
    minmax_ranges, minmax_fake = calibrate(graph, "minmax")
    assert calibrate(graph, "mse")[0]["x"][1] > 0.95 * WIDE
    searched_ranges, searched_fake = calibrate(graph, "layer-mse")
    assert minmax_ranges["x"][1] > 0.95 * WIDE
    assert searched_ranges["x"][1] < 0.5 * minmax_ranges["x"][1]
    assert output_error(graph, searched_fake) < 0.25 * output_error(graph, minmax_fake)


def test_layer_mse_keeps_the_range_when_the_layer_reads_it():
    """With channel 1 weighed like channel 0, clipping it costs more than the finer steps gain: the
    search keeps (nearly) the min/max range and the output error is no worse than min/max's."""
    graph = pointwise_conv(1.0)
    minmax_ranges, minmax_fake = calibrate(graph, "minmax")
    searched_ranges, searched_fake = calibrate(graph, "layer-mse")
    assert searched_ranges["x"][1] >= 0.9 * minmax_ranges["x"][1]
    assert output_error(graph, searched_fake) <= 1.05 * output_error(graph, minmax_fake)


def test_layer_mse_is_an_analysis_and_searches_only_weighted_inputs():
    """The graph is unchanged; a value no weighted op reads (the conv's output) gets the mse
    observer's range, the same as method=mse gives it."""
    graph = pointwise_conv(1e-3)
    before = str(graph)
    with PassContext(calibration=samples(16, seed=1), quiet=True) as ctx:
        result = run_passes(graph, "range-analysis{method=layer-mse,search-steps=8,min-clip=0.2}", ctx)
    assert str(result) == before
    mse_ranges, _ = calibrate(graph, "mse")
    assert ctx.analyses.ranges["conv"] == pytest.approx(mse_ranges["conv"])
    assert ctx.analyses.range_method == "layer-mse"
