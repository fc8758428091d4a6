"""The quantization and compile reports: ops left in float grouped with a hint, SQNR per graph
output, the report page's sections, and the build's progress bar.

Float figures (SQNR) are compared with the same numpy computation, so they are equal exactly.
"""

import io
import json
import sys

import numpy as np
import pytest

import qpass
from qpass import Graph, PassContext, TensorType, interpret, run_passes
from qpass.api import CANONICALIZE
from qpass.quant.report import (float_op_groups, format_float_op_groups, format_report, quantization_report,
                                sqnr_db)
from qpass.tools.report_html import format_compile_report, render_report_html

CONV = dict(strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], groups=1)


def paddle_like_net() -> Graph:
    """What Paddle exports: conv without bias + a separate bias add (x2), a hard-swish-like
    x * clip(x + 3, 0, 6) / 7 (x2: the divisor keeps recognize-activations from fusing it, so the
    chain stays float), and a float softmax at the end."""
    rng = np.random.default_rng(3)
    g = Graph("paddle_like")
    v = g.add_input("x", TensorType((1, 3, 6, 6), "f32"))
    for i in range(2):
        w = g.add_constant(rng.standard_normal((4, 3 if i == 0 else 4, 3, 3)).astype(np.float32) * 0.3, f"w{i}")
        conv = g.add_op("conv2d", [v, w], CONV, names=[f"conv{i}"]).output
        bias = g.add_constant(rng.standard_normal((1, 4, 1, 1)).astype(np.float32), f"b{i}")
        biased = g.add_op("add", [conv, bias], names=[f"conv{i}.biased"]).output
        plus3 = g.add_op("add", [biased, g.add_constant(np.float32(3.0), f"three{i}")], names=[f"plus3_{i}"]).output
        clip = g.add_op("clip", [plus3], {"min": 0.0, "max": 6.0}, names=[f"clip{i}"]).output
        mul = g.add_op("mul", [biased, clip], names=[f"mul{i}"]).output
        v = g.add_op("div", [mul, g.add_constant(np.float32(7.0), f"seven{i}")], names=[f"hardswish{i}"]).output
    v = g.add_op("reduce_mean", [v], {"axes": [2, 3], "keepdims": False}, names=["pool"]).output
    g.set_outputs([g.add_op("softmax", [v], {"axis": 1}, names=["probs"]).output])
    return g.verify()


def samples(graph: Graph, count: int, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{v.name: rng.standard_normal(v.type.shape).astype(np.float32) for v in graph.inputs}
            for _ in range(count)]


@pytest.fixture(scope="module")
def paddle_like():
    g = paddle_like_net()
    calibration = samples(g, 6)
    ctx = PassContext()
    quantized = qpass.quantize(g, calibration, bits=8, ctx=ctx, quiet=True)
    return g, calibration, quantized, ctx.analyses.float_ops


def test_float_ops_are_grouped_by_reason_with_what_would_fold_them(paddle_like):
    _, _, quantized, float_ops = paddle_like
    groups = float_op_groups(float_ops, quantized)
    assert sum(g["count"] for g in groups) == len(float_ops)
    assert sorted(n for g in groups for n in g["ops"]) == sorted(float_ops)
    assert [g["count"] for g in groups] == sorted((g["count"] for g in groups), reverse=True)
    by_op = {name: g for g in groups for name in g["ops"]}
    assert "%<" in by_op["plus3_0"]["reason"] or "has no integer form" in by_op["plus3_0"]["reason"]
    assert "hard_swish" in by_op["plus3_0"]["hint"] and by_op["plus3_0"] is by_op["plus3_1"]
    assert "conv0.biased" not in by_op and "conv1.biased" not in by_op     # fold-bias-add made them conv biases
    assert "reciprocal" in by_op["hardswish0"]["hint"]
    assert "no integer softmax" in by_op["probs"]["hint"]
    for group in groups:
        assert group["examples"] == group["ops"][:3] and not any("%" + n in group["reason"] for n in group["ops"])
    lines = format_float_op_groups(groups)
    assert len(lines) == 2 * len(groups)
    assert lines[0].startswith(f"left in float: {groups[0]['count']} ops: ")
    assert all(line.startswith("  what would fold them: ") for line in lines[1::2])


def test_grouping_without_a_graph_and_many_ops():
    float_ops = {f"Add_{i}": "add: has no integer form" for i in range(27)} | {"p": "softmax: has no integer form"}
    groups = float_op_groups(float_ops)
    assert [(g["kind"], g["count"]) for g in groups] == [("add", 27), ("softmax", 1)]
    assert groups[0]["examples"] == ["Add_0", "Add_1", "Add_10"]
    assert format_float_op_groups(groups)[0] == ("left in float: 27 ops: add: has no integer form "
                                                 "(e.g. %Add_0, %Add_1, %Add_10, ... (24 more))")
    assert float_op_groups({}) == []


def test_quantize_report_json_and_text_have_the_groups(paddle_like):
    g, calibration, quantized, float_ops = paddle_like
    report = quantization_report(run_passes(g.copy(), CANONICALIZE), quantized, calibration, float_ops)
    assert report["float_op_groups"] == float_op_groups(float_ops, quantized)
    assert json.loads(json.dumps(report))["float_op_groups"][0]["hint"]
    text = format_report(report)
    assert text.count("what would fold them") == len(report["float_op_groups"])
    assert "left in float: plus3_0" not in text                       # no line per op any more


def two_output_net() -> Graph:
    """A detector head: boxes in 0..320 and sigmoid scores in 0..1 from one conv."""
    rng = np.random.default_rng(0)
    g = Graph("detector")
    x = g.add_input("x", TensorType((1, 3, 6, 6), "f32"))
    w = g.add_constant(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    features = g.add_op("conv2d", [x, w, g.add_constant(np.zeros(4, np.float32), "b")], CONV,
                        names=["features"]).output
    boxes = g.add_op("mul", [g.add_op("sigmoid", [features], names=["unit"]).output,
                             g.add_constant(np.float32(320.0), "size")], names=["boxes"]).output
    scores = g.add_op("sigmoid", [g.add_op("mul", [features, g.add_constant(np.float32(4.0), "sharp")],
                                            names=["sharpened"]).output], names=["scores"]).output
    g.set_outputs([boxes, scores])
    return g.verify()


def test_sqnr_per_graph_output():
    g = two_output_net()
    calibration = samples(g, 4)
    quantized = qpass.quantize(g, calibration, bits=8, quiet=True)
    float_graph = run_passes(g.copy(), CANONICALIZE)
    summary = quantization_report(float_graph, quantized, calibration)["summary"]
    assert [o["name"] for o in summary["outputs"]] == ["boxes", "scores"]
    for figures in summary["outputs"]:
        name = figures["name"]
        ref = np.concatenate([interpret(float_graph, s)[name].reshape(-1) for s in calibration])
        got = np.concatenate([interpret(quantized, s)[name].reshape(-1) for s in calibration])
        assert figures["sqnr_db"] == round(sqnr_db(ref, got), 2)
        assert figures["float_range"] == [float(ref.min()), float(ref.max())]
    assert summary["outputs"][0]["sqnr_db"] == summary["output_sqnr_db"]   # the headline is the first output's
    assert summary["outputs"][1]["float_range"][1] <= 1.0 < summary["outputs"][0]["float_range"][1]
    text = format_report({"summary": summary, "layers": [], "float_ops": {}})
    assert f"output scores: SQNR {summary['outputs'][1]['sqnr_db']} dB" in text


def compile_report(**extra) -> dict:
    """A compile report as qpass.compile writes it (hand-made: no TVM build)."""
    report = {"model": {"name": "paddle_like", "kind": "float", "inputs": [], "ops": 20, "integer_ops": 9},
              "target": "x86_64-linux-gnu --mcpu x86-64-v3", "micro_kernel": "avx2",
              "size": {"float_weight_bytes": 2048, "weight_bytes": 512},
              "passes": [{"pass": "quantize", "ms": 1.5, "changed": True}],
              "kernels": [{"kernel": "qconv2d_0", "op": "conv0", "schedule": "avx2"}],
              "warnings": ["a warning that is not about float ops"],
              "run": {"runs_here": True, "how": "host x86_64", "matches_interpreter": True,
                      "latency": {"median_ms": 0.25, "p10_ms": 0.2, "p90_ms": 0.3}},
              "compile_seconds": {"total": 3.0, "passes": 1.0, "build": 2.0}}
    report.update(extra)
    return report


def test_compile_summary_prints_groups_and_outputs(paddle_like):
    _, _, quantized, float_ops = paddle_like
    groups = float_op_groups(float_ops, quantized)
    summary = {"output": "boxes", "samples": 4, "output_sqnr_db": 30.0, "top1_agreement": 1.0,
               "outputs": [{"name": "boxes", "sqnr_db": 30.0, "float_range": [0.0, 320.0]},
                           {"name": "scores", "sqnr_db": 12.5, "float_range": [0.0, 1.0]}]}
    text = format_compile_report(compile_report(float_op_groups=groups,
                                                quantization={"summary": summary, "layers": []}))
    assert "output scores: SQNR 12.5 dB" in text and text.count("what would fold them") == len(groups)
    assert "warning: a warning that is not about float ops" in text


def test_report_page_has_its_sections(paddle_like):
    _, _, quantized, float_ops = paddle_like
    groups = float_op_groups(float_ops, quantized)
    layers = [{"name": "conv0.q", "op": "qconv2d", "dtype": "i8", "scale": 0.1, "zero_point": 0, "weight_dtype": "i8",
               "weight_granularity": "per-channel", "sqnr_db": 31.0}]
    summary = {"output": "probs", "samples": 4, "output_sqnr_db": 30.0, "top1_agreement": 1.0,
               "outputs": [{"name": "probs", "sqnr_db": 30.0, "float_range": [0.0, 1.0]},
                           {"name": "scores", "sqnr_db": 12.5, "float_range": [0.0, 1.0]}]}
    page = render_report_html(compile_report(float_op_groups=groups, quantization={"summary": summary,
                                                                                   "layers": layers}), quantized)
    for anchor in ("summary", "outputs", "layers", "graph", "float-ops", "warnings", "files", "passes"):
        assert f"id='{anchor}'" in page, anchor
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    assert "<a href='model.qir'>model.qir</a>" in page and 'class="qpass-graph"' in page
    assert f"Left in float: {len(float_ops)} ops in {len(groups)} groups" in page
    assert "bit-exact" in page and "2.0 KiB &rarr; 0.5 KiB" in page and "25.0% of float (4.0x smaller)" in page
    assert page.count("What would fold them") == len(groups)
    assert render_report_html(compile_report()).startswith("<!DOCTYPE html>")    # no graph, no quantization


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_build_progress_is_silent_when_quiet_or_not_a_terminal(monkeypatch):
    from qpass.targets.build import progress
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = progress(3, "scheduling", quiet=False)
    bar.set_description_str("scheduling qconv2d_0")
    bar.update()
    bar.close()
    assert "scheduling qconv2d_0" in terminal.getvalue()
    for quiet, stream in ((True, _Terminal()), (False, io.StringIO())):
        monkeypatch.setattr(sys, "stderr", stream)
        bar = progress(3, "scheduling", quiet=quiet)
        bar.update()
        bar.close()
        assert stream.getvalue() == ""
    monkeypatch.setattr(sys, "stderr", terminal := _Terminal())
    with PassContext(quiet=True):                         # quiet=None: the current context's setting
        progress(1, "scheduling").close()
    assert terminal.getvalue() == ""


def test_report_reads_multi_result_ops():
    """A split (two results) among the layers: the per-layer figures skip it, nothing breaks."""
    g = Graph("split_net")
    x = g.add_input("x", TensorType((1, 3, 6, 6), "f32"))
    w = g.add_constant(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    y = g.add_op("conv2d", [x, w], CONV, names=["conv"]).output
    halves = g.add_op("split", [y], {"axis": 1, "sizes": [2, 2]}, names=["a", "b"]).outputs
    g.set_outputs([g.add_op("relu", [halves[0]], names=["ra"]).output, halves[1]])
    g.verify()
    calibration = samples(g, 4)
    ctx = PassContext()
    quantized = qpass.quantize(g, calibration, ctx=ctx, quiet=True)
    report = quantization_report(run_passes(g.copy(), CANONICALIZE), quantized, calibration, ctx.analyses.float_ops)
    assert "qconv2d" in [layer["op"] for layer in report["layers"]]
    assert float_op_groups(ctx.analyses.float_ops, quantized) is not None
