"""AVX2's exact full-rate kernel (avx2-u8s7): 7-bit weights ([-64, 63]) x u8 activations with
vpmaddubsw + vpmaddwd, no sign trick. quantize{exact-range=true} (--exact-range, exact_range=True)
makes the weights; the target takes the kernel for a graph whose weights all fit it; the compiled
code equals the interpreter bit for bit, also at the worst-case pair sums (255 x -64 twice)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import qpass
from qpass.api import quantization_pipeline
from qpass.ir import load
from qpass.targets.build import build, legalize
from qpass.targets.kernels import conv_plan, gemm_weight_range
from qpass.targets.microkernels import MICRO_KERNELS, choose, for_target
from qpass.targets.registry import resolve_target
from test_backends import assert_bit_exact, conv_graph, dense_graph, quantized, run_host

AVX2 = resolve_target("x86_64-linux-gnu", mcpu="x86-64-v3")
VNNI = resolve_target("x86_64-linux-gnu", mcpu="cascadelake")
REPO = Path(__file__).resolve().parent.parent


def _samples(graph, seed=1, count=4):
    rng = np.random.default_rng(seed)
    x = graph.inputs[0]
    return [{x.name: rng.standard_normal(x.type.shape).astype(np.float32)} for _ in range(count)]


def exact(graph, **options):
    return qpass.quantize(graph, _samples(graph), exact_range=True, quiet=True, **options)


def layers(graph):
    return [op for op in graph.ops if op.kind in ("qconv2d", "qdense")]


def schedules(built, kind):
    return {k["schedule"] for k in built.kernels if k["op"] == kind}


def test_quantize_makes_7_bit_weights():
    graph = exact(conv_graph(0, 8, 16, (6, 6), (3, 3)))
    weight = layers(graph)[0].inputs[1]
    assert weight.type.dtype == "i8" and weight.type.quant.bits == 7
    assert -64 <= weight.data.min() and weight.data.max() <= 63
    assert "exact-range=true" in quantization_pipeline(8, exact_range=True)
    assert "exact-range" not in quantization_pipeline(8)


def test_exact_range_also_narrows_layers_kept_8_bit():
    """keep-int8 layers of a 4-bit graph take 7 bits too, so the whole graph fits the kernel."""
    graph = conv_graph(0, 8, 16, (6, 6), (3, 3))
    four = exact(graph, bits=4, keep_int8=["first"])
    weight = layers(four)[0].inputs[1]
    assert weight.type.quant.bits == 7 and -64 <= weight.data.min() and weight.data.max() <= 63
    plain = qpass.quantize(graph, _samples(graph), bits=4, keep_int8=["first"], quiet=True)
    assert layers(plain)[0].inputs[1].type.quant.bits in (None, 8)


@pytest.mark.parametrize("what", ["conv", "dense"])
def test_7_bit_layers_use_vpmaddubsw_without_the_sign_trick_and_are_bit_exact(what):
    graph = exact(conv_graph(4, 16, 32, (8, 8), (3, 3)) if what == "conv" else dense_graph(5, k=64, n=40, batch=3))
    built = build(graph, AVX2)
    kind = "qconv2d" if what == "conv" else "qdense"
    assert schedules(built, kind) == {"avx2-u8s7"}
    assert built.spec.micro_kernel == "avx2-u8s7"
    assert built.graph.inputs[0].type.dtype == "f32" and layers(built.graph)[0].inputs[0].type.dtype == "u8"
    asm = built.executable.mod.imports[0].inspect_source("asm")
    assert re.search(r"vpmaddubsw\s[^\n]*%ymm", asm) and "vpsignb" not in asm and "vpabsb" not in asm
    assert_bit_exact(built)


def _accumulator_graph(what, patterns):
    """A 7-bit conv/dense whose int32 accumulator is the graph output (no requantization hides an
    error), with weight rows taken from `patterns` (one per output channel)."""
    if what == "conv":
        graph = conv_graph(2, 8, len(patterns), (6, 6), (3, 3), relu=False)
    else:
        graph = dense_graph(3, k=36, n=len(patterns), batch=2)
    pipeline = quantization_pipeline(8, exact_range=True).replace(",fuse-requant", "")
    integer = qpass.quantize(graph, _samples(graph), pipeline=pipeline, quiet=True)
    layer = layers(integer)[0]
    weight = layer.inputs[1]
    rows = [np.resize(np.asarray(p, np.int64), weight.data[0].size).reshape(weight.data[0].shape) for p in patterns]
    weight.data = np.stack(rows).astype(weight.data.dtype)
    weight._digest = None
    integer.set_outputs([layer.output])
    return qpass.run_passes(integer, "eliminate-dead-code").verify(), layer.name


@pytest.mark.parametrize("what", ["conv", "dense"])
def test_worst_case_pair_sums_are_exact(what):
    """Activations 255 everywhere and weights -64 / 63: every vpmaddubsw pair sum at its extreme
    (2 * 255 * -64 = -32640, 2 * 255 * 63 = 32130), and mixed patterns, accumulated exactly."""
    patterns = [[-64], [63], [-64, 63], [63, -64], [-64, -64, 63, 63], [63, 0, -64, 1], [-64, 1, 0, 63],
                [-1], [0], [1], [-64, -64, -64, 0], [63, 63, 63, -64], [-63], [62], [-64, 63, 63, -64], [-2, 3]]
    graph, name = _accumulator_graph(what, patterns)
    built = build(graph, AVX2)
    assert schedules(built, "qconv2d" if what == "conv" else "qdense") == {"avx2-u8s7"}
    x = graph.inputs[0]
    for value in (1e4, -1e4):               # saturates the input quantizer: u8 255 (and 0) everywhere
        inputs = {x.name: np.full(x.type.shape, value, np.float32)}
        got = run_host(built, inputs)[0]
        want = next(iter(qpass.interpret(built.graph, inputs).values()))
        assert got.dtype == np.int32 and np.array_equal(got, want), np.abs(got.astype(np.int64) - want).max()
    rng = np.random.default_rng(0)
    inputs = {x.name: rng.choice([1e4, -1e4, 0.0], x.type.shape).astype(np.float32)}
    got, want = run_host(built, inputs)[0], next(iter(qpass.interpret(built.graph, inputs).values()))
    assert np.array_equal(got, want)


def test_the_all_255_input_really_is_255():
    """The worst-case test's input reaches the kernel as u8 255 (the quantizer saturates)."""
    graph, _ = _accumulator_graph("dense", [[-64]])
    legal = legalize(graph, AVX2.fitted(graph))
    quantize_op = legal.find_ops("quantize")[0]
    assert quantize_op.output.type.dtype == "u8"
    graph_with_q = legal.copy()
    graph_with_q.set_outputs([graph_with_q.find_ops("quantize")[0].output])
    x = graph.inputs[0]
    q = next(iter(qpass.interpret(graph_with_q, {x.name: np.full(x.type.shape, 1e4, np.float32)}).values()))
    assert q.dtype == np.uint8 and np.all(q == 255)


def _set_weights(graph, data):
    weight = layers(graph)[0].inputs[1]
    weight.data, weight._digest = np.asarray(data).astype(weight.data.dtype), None
    return graph


def test_the_target_takes_the_kernel_only_for_weights_that_fit():
    seven = exact(conv_graph(0, 8, 16, (8, 8), (3, 3)))
    eight = quantized(conv_graph(0, 8, 16, (8, 8), (3, 3)))
    assert AVX2.micro_kernel == "avx2" and AVX2.activation_dtype == "i8"       # without a graph: any 8-bit weights
    assert AVX2.fitted(seven).micro_kernel == "avx2-u8s7" and AVX2.fitted(seven).activation_dtype == "u8"
    assert AVX2.fitted(eight).micro_kernel == "avx2" and AVX2.fitted(eight).activation_dtype == "i8"
    assert VNNI.fitted(seven).micro_kernel == "vnni"                             # vpdpbusd needs no narrow weights
    # the weights' values decide, not their type: 8-bit weights that happen to fit take the kernel...
    clipped = np.clip(layers(eight)[0].inputs[1].data, -64, 63)
    fitting = _set_weights(eight.copy(), clipped)
    assert gemm_weight_range(fitting) == (int(clipped.min()), int(clipped.max()))
    built = build(fitting, AVX2)
    assert schedules(built, "qconv2d") == {"avx2-u8s7"}
    assert_bit_exact(built)
    # ...and one weight of 64 sends the graph back to the sign trick, with i8 activations
    clipped.flat[0] = 64
    wide = _set_weights(eight.copy(), clipped)
    assert AVX2.fitted(wide).micro_kernel == "avx2"
    built = build(wide, AVX2)
    assert schedules(built, "qconv2d") == {"avx2"}
    assert_bit_exact(built)


def test_layer_choice_falls_back_by_activation_dtype_and_weight_range():
    kernel = MICRO_KERNELS["avx2-u8s7"]
    fits, wide = np.full((8, 4, 1, 1), -64), np.full((8, 4, 1, 1), 64)
    assert choose("avx2-u8s7", "uint8", fits, 8, 1) is kernel
    assert choose("avx2-u8s7", "int8", fits, 8, 1).name == "avx2"            # i8 activations: the sign trick
    assert choose("avx2-u8s7", "uint8", wide, 8, 1) is None                  # u8 x 8-bit weights: plain loops
    assert for_target("x86", {"avx2"}, (-64, 63)) is kernel
    assert for_target("x86", {"avx2"}, (-65, 63)).name == "avx2"
    assert for_target("x86", {"avx2"}, (-128, 127)).name == "avx2"           # none holds it: the general kernel
    assert for_target("x86", {"avx2"}).name == "avx2"
    seven = exact(conv_graph(0, 8, 16, (8, 8), (3, 3)))
    spec = AVX2.fitted(seven)
    plan = conv_plan(layers(legalize(seven, spec))[0], spec)
    assert (plan.kind, plan.micro_kernel, plan.lanes, plan.reduction) == ("gemm", "avx2-u8s7", 8, 4)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "qpass", *map(str, args)], capture_output=True, text=True)


def test_cli_exact_range(tmp_path):
    from qpass.tools.demo import bundled_test_set
    images, _ = bundled_test_set()
    np.savez(tmp_path / "calib.npz", input=images[:16])
    model = REPO / "qpass" / "data" / "digits_cnn.onnx"
    printed = _cli("compile", model, "--exact-range", "--print-pipeline")
    assert printed.returncode == 0 and "exact-range=true" in printed.stdout, printed.stderr
    assert "exact-range" not in _cli("compile", model, "--print-pipeline").stdout
    out = tmp_path / "q.qir"
    result = _cli("quantize", model, "--calib", tmp_path / "calib.npz", "--exact-range", "-o", out, "--quiet")
    assert result.returncode == 0, result.stderr
    weights = [op.inputs[1].data for op in layers(load(out))]
    assert weights and all(-64 <= w.min() and w.max() <= 63 for w in weights)
    clash = _cli("quantize", model, "--calib", tmp_path / "calib.npz", "--exact-range", "-p", "fold-constants",
                 "-o", tmp_path / "x.qir")
    assert clash.returncode != 0 and "quantize{exact-range=true}" in clash.stderr and "Traceback" not in clash.stderr
    outdir = tmp_path / "artifact"
    compiled = _cli("compile", model, "--calib", tmp_path / "calib.npz", "--exact-range", "-o", outdir, "--json")
    assert compiled.returncode == 0, compiled.stderr
    import json
    report = json.loads(compiled.stdout)
    assert report["micro_kernel"] == "avx2-u8s7"
    assert {k["schedule"] for k in report["kernels"] if k["op"] in ("qconv2d", "qdense")} >= {"avx2-u8s7"}


@pytest.mark.slow
def test_mobilenet_with_7_bit_weights_matches_the_interpreter():
    """The whole of MobileNetV2 (every pointwise and full conv on avx2-u8s7) equals the interpreter."""
    from assets import shared_dir
    from qpass.compiler import check_and_time
    model = shared_dir() / "models" / "mobilenet_v2.onnx"
    rng = np.random.default_rng(0)
    samples = [{"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(2)]
    graph = qpass.quantize(qpass.import_onnx(model), samples, exact_range=True, quiet=True)
    compiled = qpass.compile(graph, "x86_64-linux-gnu", mcpu="x86-64-v3")
    assert compiled.report["micro_kernel"] == "avx2-u8s7"
    assert {k["schedule"] for k in compiled.report["kernels"] if k["op"] in ("qconv2d", "qdense")} == {
        "avx2-u8s7", "depthwise"}
    x = {"input": np.random.default_rng(3).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    run = check_and_time(compiled, x, repeat=2)
    assert run["matches_interpreter"] is True, run
