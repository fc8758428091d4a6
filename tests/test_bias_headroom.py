"""A channel whose weights are all but zero keeps its bias through quantization and compiles."""

import numpy as np

import qpass
from qpass.backends import backend
from qpass.compiler import compare_outputs
from qpass.ir import Graph, TensorType

CONV = dict(strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], groups=3)


def test_dead_channel_keeps_its_bias_and_compiles():
    rng = np.random.default_rng(0)
    g = Graph("m")
    x = g.add_input("x", TensorType((1, 3, 6, 6), "f32"))
    w = rng.standard_normal((3, 1, 3, 3)).astype(np.float32)
    w[1] *= 1e-9                                   # a depthwise channel training left dead
    b = np.array([0.1, 0.5, -0.2], np.float32)
    y = g.add_op("conv2d", [x, g.add_constant(w, "w"), g.add_constant(b, "b")], CONV, names=["y"]).output
    g.set_outputs([y])
    calibration = [{"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)} for _ in range(4)]
    q = qpass.quantize(g, calibration, quiet=True)
    sample = {"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)}
    out = qpass.interpret(q, sample)["y"]
    np.testing.assert_allclose(out[0, 1], 0.5, atol=0.03)       # the bias within an output step, not ~0
    b_ = backend()
    built = b_.build(q, b_.resolve_target("x86_64-linux-gnu"))   # refused before: the bias overflowed int32
    import tvm
    from tvm import relax
    main = relax.VirtualMachine(built.executable, tvm.cpu())["main"]
    got = main(tvm.runtime.tensor(sample["x"]))
    got = got[0].numpy() if hasattr(got, "__len__") else got.numpy()
    assert compare_outputs({"y": got}, qpass.interpret(built.graph, sample))["matches_interpreter"]
