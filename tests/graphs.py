"""Small graphs built by hand, and a hypothesis strategy for random graphs."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from qpass.ir import Graph, QuantParams, TensorType

CONV = dict(strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], groups=1)


def conv_relu(seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    g = Graph("conv_relu")
    x = g.add_input("x", TensorType((1, 3, 8, 8), "f32"))
    w = g.add_constant(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = g.add_constant(rng.standard_normal(4).astype(np.float32), "b")
    conv = g.add_op("conv2d", [x, w, b], CONV, names=["conv"])
    relu = g.add_op("relu", [conv.output], names=["relu"])
    g.set_outputs([relu.output])
    return g


_f32 = st.floats(width=32, allow_nan=False) | st.sampled_from([np.nan, -np.nan, np.inf, -np.inf, -0.0, 1e-45])


@st.composite
def random_graphs(draw) -> Graph:
    """Chains and branches of elementwise, shape and quantization ops over random constants."""
    g = Graph(draw(st.sampled_from(["main", "net", "m.1"])))
    rank = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank)))
    live = [g.add_input(draw(st.sampled_from(["x", "input", "in.0"])), TensorType(shape, "f32"))]
    for step in range(draw(st.integers(1, 8))):
        x = draw(st.sampled_from(live))
        kind = draw(st.sampled_from(["unary", "binary", "reshape", "transpose", "split", "quant", "concat",
                                     "clip", "int_const"]))
        name = draw(st.sampled_from(["v", "conv", "a.b", "x_1", "relu"]))
        s = x.type.shape
        if kind == "unary":
            op = g.add_op(draw(st.sampled_from(["relu", "sigmoid", "tanh", "identity"])), [x], names=[name])
        elif kind == "binary":
            size = draw(st.sampled_from([1, int(np.prod(s)), 20]))
            cshape = (1,) if size == 1 else s
            data = np.array(draw(st.lists(_f32, min_size=int(np.prod(cshape)), max_size=int(np.prod(cshape)))),
                            dtype=np.float32).reshape(cshape)
            c = g.add_constant(data, draw(st.sampled_from(["w", "bias", "c"])))
            op = g.add_op(draw(st.sampled_from(["add", "mul", "sub"])), [x, c], names=[name])
        elif kind == "reshape":
            op = g.add_op("reshape", [x], {"shape": [int(np.prod(s))]}, names=[name])
        elif kind == "transpose":
            perm = draw(st.permutations(list(range(len(s)))))
            op = g.add_op("transpose", [x], {"perm": list(perm)}, names=[name])
        elif kind == "split" and s[-1] >= 2:
            op = g.add_op("split", [x], {"axis": len(s) - 1, "sizes": [1, s[-1] - 1]}, names=[name, name])
        elif kind == "concat":
            op = g.add_op("concat", [x, x], {"axis": 0}, names=[name])
        elif kind == "clip":
            lo = draw(st.floats(-10, 0, width=32))
            op = g.add_op("clip", [x], {"min": float(lo), "max": float(draw(st.floats(0.5, 10)))}, names=[name])
        elif kind == "int_const":
            n = draw(st.integers(1, 40))
            data = np.array(draw(st.lists(st.integers(-128, 127), min_size=n, max_size=n)), dtype=np.int8)
            axis_q = draw(st.booleans())
            scale = np.array(draw(st.lists(st.floats(0.0009765625, 10, width=32), min_size=n if axis_q else 1,
                                           max_size=n if axis_q else 1)), dtype=np.float32)
            quant = QuantParams(scale, np.zeros_like(scale, dtype=np.int32), axis=0) if axis_q else \
                QuantParams(scale[0], draw(st.integers(-128, 127)))
            c = g.add_constant(data, "qw", quant=quant)
            op = g.add_op("dequantize", [c], names=[name])
        else:
            bits = draw(st.sampled_from([None, 4, 7]))
            dtype = draw(st.sampled_from(["i8", "u8"]))
            zp = draw(st.integers(0, 7))
            quant = QuantParams(np.float32(draw(st.floats(0.0009765625, 100, width=32))), zp, bits=bits)
            q = g.add_op("quantize", [x], types=[TensorType(s, dtype, quant)], names=[name])
            op = g.add_op("dequantize", [q.output], names=[name])
        live.extend(op.outputs)
    outputs = draw(st.lists(st.sampled_from(live[1:] or live), min_size=1, max_size=3, unique_by=id))
    g.set_outputs(outputs)
    return g
