"""Math and logic ops (qpass.ops.math, qpass.ops.logic) from ONNX to compiled code.

Each case is a one-node ONNX model (bool operands come from a Greater in front, since qpass
takes no bool graph inputs). It is imported, run in the interpreter and compared with ONNX
Runtime: integer and bool results exactly, float results within float32 rounding (rtol 1e-5,
atol 1e-6: the kernels follow the ONNX formulas, ONNX Runtime may order the arithmetic
differently). Then every case's node goes into one model that is compiled once for the host and
compared with the interpreter: integer and bool results bit for bit, float results within float
rounding (TVM may contract multiply-adds and order sums differently).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qpass
from qpass.errors import FrontendError, IRError, ParseError
from qpass.ir import Graph, TensorType, parse_graph

F, I64, I32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32
SHAPE = (2, 3, 4)


def _x(*shape, low=-3.0, high=3.0, seed=0):
    return ("x", shape, F, low, high, seed)


# case: (op_type, [graph inputs (name, shape, elem type, low, high, seed) | ("bool", name, shape)],
#        attrs, {initializer name: array}, opset, the node's input names (None: the inputs in order))
def _case(op, inputs, attrs=None, constants=None, opset=17, names=None):
    return (op, inputs, attrs or {}, constants or {}, opset, names)


def _in(name, shape=SHAPE, elem=F, low=-3.0, high=3.0, seed=0):
    return (name, shape, elem, low, high, seed)


def _bool(name, shape=SHAPE, seed=0):
    return ("bool", name, shape, seed)


A, B = _in("a", seed=1), _in("b", (3, 4), seed=2)
IA, IB = _in("a", elem=I32, low=-5, high=5, seed=3), _in("b", (4,), elem=I32, low=-5, high=5, seed=4)
POS = _in("a", low=0.1, high=4.0, seed=5)
# Values at and between halves, so round's ties to even are exercised.
# 2^23 + 1 and + 3: odd whole numbers where x + 0.5 is not a float32 any more.
HALVES = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, 0.49, -0.51, 8388609.0, -8388611.0, 0.0],
                  np.float32).reshape(3, 4)

CASES = {
    **{op: _case(op, [A, B]) for op in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual")},
    "Equal-int": _case("Equal", [IA, IB]),
    "Less-int-constant": _case("Less", [IA], constants={"k": np.array([0, 1, -2, 3], np.int32)}, names=["a", "k"]),
    "Not": _case("Not", [_bool("p")]),
    **{op: _case(op, [_bool("p", seed=1), _bool("q", (3, 4), seed=2)]) for op in ("And", "Or", "Xor")},
    "Where": _case("Where", [_bool("c", (3, 4), seed=1), A, _in("b", (2, 1, 4), seed=2)], names=["c", "a", "b"]),
    "Where-int-constant": _case("Where", [_bool("c", seed=1), IA], constants={"k": np.array(7, np.int32)},
                                names=["c", "a", "k"]),
    "Max": _case("Max", [A, B, _in("c", (4,), seed=3)]),
    "Min": _case("Min", [A, B]),
    "Sum": _case("Sum", [A, B, _in("c", (1, 3, 1), seed=3)]),
    "Sum-one": _case("Sum", [A]),
    "Mean": _case("Mean", [A, B, _in("c", (4,), seed=3)]),
    "Max-int": _case("Max", [IA, IB]),
    **{op: _case(op, [A]) for op in ("Neg", "Abs", "Sign", "Floor", "Ceil", "Sin", "Cos", "Softplus")},
    "Mish": _case("Mish", [A], opset=18),
    "Softplus-wide": _case("Softplus", [_in("a", low=-40.0, high=40.0, seed=6)]),
    "Neg-int": _case("Neg", [IA]),
    "Abs-int": _case("Abs", [IA]),
    "Sign-int": _case("Sign", [IA]),
    "Reciprocal": _case("Reciprocal", [POS]),
    "Log": _case("Log", [POS]),
    "Round": _case("Round", [_in("a", (3, 4))]),
    "Elu": _case("Elu", [A], {"alpha": 0.7}),
    "Selu": _case("Selu", [A]),
    "Celu": _case("Celu", [A], {"alpha": 1.5}),
    "ThresholdedRelu": _case("ThresholdedRelu", [A], {"alpha": 0.5}),
    "PRelu": _case("PRelu", [_in("a", (2, 3, 4, 4))], constants={"s": np.array([0.1, -0.2, 0.3], np.float32)
                                                                  .reshape(3, 1, 1)}, names=["a", "s"]),
    "Expand": _case("Expand", [_in("a", (3, 1))], constants={"s": np.array([2, 1, 4], np.int64)}, names=["a", "s"]),
    "Expand-int": _case("Expand", [_in("a", (1, 4), elem=I32, low=-9, high=9)],
                        constants={"s": np.array([3, 1], np.int64)}, names=["a", "s"]),
    "Tile": _case("Tile", [_in("a", (2, 3))], constants={"r": np.array([2, 3], np.int64)}, names=["a", "r"]),
    "Range-float": _case("Range", [], constants={"s": np.array(0.5, np.float32), "l": np.array(3.0, np.float32),
                                                 "d": np.array(0.75, np.float32)}, names=["s", "l", "d"]),
    "Range-int": _case("Range", [], constants={"s": np.array(10, np.int32), "l": np.array(-3, np.int32),
                                               "d": np.array(-4, np.int32)}, names=["s", "l", "d"]),
    "Range-int64": _case("Range", [], constants={"s": np.array(1, np.int64), "l": np.array(9, np.int64),
                                                 "d": np.array(3, np.int64)}, names=["s", "l", "d"]),
    "ArgMax": _case("ArgMax", [A], {"axis": 1}),
    "ArgMin-no-keepdims": _case("ArgMin", [A], {"axis": -1, "keepdims": 0}),
    "ArgMax-last-index": _case("ArgMax", [_in("a", SHAPE, elem=I32, low=0, high=3)], {"axis": 2,
                                                                                     "select_last_index": 1}),
    "ArgMin-last-index": _case("ArgMin", [_in("a", SHAPE, elem=I32, low=0, high=3)], {"axis": 0, "keepdims": 0,
                                                                                     "select_last_index": 1}),
}
_REDUCE_FLOAT = ("ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceSumSquare",
                 "ReduceLogSumExp")
for _op in _REDUCE_FLOAT:
    CASES[f"{_op}-attr"] = _case(_op, [A], {"axes": [0, -1], "keepdims": 0}, opset=12 if _op == "ReduceSum" else 17)
    CASES[f"{_op}-input-axes"] = _case(_op, [A], {"keepdims": 1}, {"axes": np.array([1], np.int64)}, opset=18,
                                       names=["a", "axes"])
    CASES[f"{_op}-all"] = _case(_op, [A], {}, opset=18)
CASES["ReduceSum-int"] = _case("ReduceSum", [IA], {"keepdims": 0}, {"axes": np.array([-2], np.int64)}, opset=13,
                               names=["a", "axes"])
CASES["ReduceProd-int"] = _case("ReduceProd", [IA], {"axes": [2]}, opset=17)
# Cases the compile test leaves out, and why (the interpreter test still runs them).
NOT_COMPILED = {
    "Range-int64": "targets/lower.py Lowering.get makes an i64 constant with relax.const(array), which TVM "
                   "narrows to int32 when no dtype is given, so the add with an i64 input fails to build",
}
CASES["ReduceMax-noop"] = _case("ReduceMax", [A], {"noop_with_empty_axes": 1}, opset=18)


def _feeds_and_nodes(key, case, prefix=""):
    """Graph inputs, feeds, initializers and the nodes of one case (names prefixed for the shared model)."""
    op, inputs, attrs, constants, opset, names = case
    infos, feeds, nodes, node_inputs = [], {}, [], []
    for spec in inputs:
        if spec[0] == "bool":
            _, name, shape, seed = spec
            raw = f"{prefix}{name}_raw"
            infos.append(helper.make_tensor_value_info(raw, F, shape))
            feeds[raw] = np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)
            zero = numpy_helper.from_array(np.array(0, np.float32), f"{prefix}{name}_zero")
            nodes.append(helper.make_node("Greater", [raw, zero.name], [prefix + name]))
            constants = {**constants, f"{name}_zero": zero}
        else:
            name, shape, elem, low, high, seed = spec
            infos.append(helper.make_tensor_value_info(prefix + name, elem, shape))
            rng = np.random.default_rng(seed)
            feeds[prefix + name] = (rng.uniform(low, high, shape).astype(np.float32) if elem == F
                                    else rng.integers(low, high, shape).astype(helper.tensor_dtype_to_np_dtype(elem)))
        node_inputs.append(prefix + name)
    if key == "Round":
        feeds[prefix + "a"] = HALVES
    initializers = [c if isinstance(c, onnx.TensorProto) else numpy_helper.from_array(c, prefix + n)
                    for n, c in constants.items()]
    node_inputs = node_inputs if names is None else [prefix + n for n in names]
    out = prefix + "y"
    nodes.append(helper.make_node(op, node_inputs, [out], **attrs))
    if not inputs:   # Range folds to a constant; a model needs an input, so add it to one
        infos.append(helper.make_tensor_value_info(prefix + "x", onnx.helper.np_dtype_to_tensor_dtype(
            constants["s"].dtype), [1]))
        feeds[prefix + "x"] = np.ones(1, constants["s"].dtype)
        nodes.append(helper.make_node("Add", [out, prefix + "x"], [prefix + "z"]))
        out = prefix + "z"
    return infos, feeds, initializers, nodes, out


def _model(parts, opset):
    infos, feeds, inits, nodes, outs = [], {}, [], [], []
    for i, f, init, n, out in parts:
        infos += i
        feeds.update(f)
        inits += init
        nodes += n
        outs.append(helper.make_tensor_value_info(out, TensorProto.UNDEFINED, None))
    graph = helper.make_graph(nodes, "math", infos, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    return model, feeds


def _onnxruntime(model, feeds):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def _assert_same(got, want, what):
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    if want.dtype.kind == "f":
        assert got.dtype == np.float32, what
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=what)
    else:
        assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
        np.testing.assert_array_equal(got, want, err_msg=what)


@pytest.mark.parametrize("key", sorted(CASES))
def test_interpreter_matches_onnxruntime(key):
    case = CASES[key]
    part = _feeds_and_nodes(key, case)
    model, feeds = _model([part], case[4])
    graph = qpass.import_onnx(model)
    ours = qpass.interpret(graph, feeds)
    theirs = _onnxruntime(model, feeds)
    assert [v.name for v in graph.outputs] == list(theirs)
    for name, want in theirs.items():
        _assert_same(ours[name], want, f"{key}: {name}")


@pytest.fixture(scope="module")
def compiled():
    """Every case in one model per opset group, each built once for the host."""
    import tvm
    from tvm import relax

    from qpass.backends import backend
    b = backend()
    spec = b.resolve_target("x86_64-linux-gnu")
    results = {}
    for opsets in ((12, 13), (17,), (18,)):
        keys = [k for k in sorted(CASES) if CASES[k][4] in opsets and k not in NOT_COMPILED]
        parts = [_feeds_and_nodes(k, CASES[k], prefix=f"c{i}_") for i, k in enumerate(keys)]
        model, feeds = _model(parts, max(opsets))
        graph = qpass.import_onnx(model)
        want = qpass.interpret(graph, feeds)
        main = relax.VirtualMachine(b.build(graph, spec).executable, tvm.cpu())["main"]
        got = main(*[tvm.runtime.tensor(feeds[v.name]) for v in graph.inputs])
        for i, key in enumerate(keys):
            index = [v.name for v in graph.outputs].index(parts[i][4])
            results[key] = (got[index].numpy(), want[parts[i][4]])
    return results


@pytest.mark.parametrize("key", sorted(CASES))
def test_compiled_matches_interpreter(compiled, key):
    if key in NOT_COMPILED:
        pytest.xfail(NOT_COMPILED[key])
    got, want = compiled[key]
    _assert_same(got, want, key)


# --------------------------------------------------------------------------- types, traits, errors
def test_bool_dtype_round_trips_through_the_text_form():
    g = Graph("b")
    x = g.add_input("x", TensorType((3,), "f32"))
    mask = g.add_op("greater", [x, g.add_constant(np.zeros(3, np.float32), "zero")], names=["m"]).output
    keep = g.add_constant(np.array([True, False, True]), "keep")
    g.set_outputs(g.add_op("logical_and", [mask, keep], names=["y"]).outputs)
    g.verify()
    text = str(g)
    assert "bool[3]" in text and "[1, 0, 1]" in text
    again = parse_graph(text)
    assert str(again) == text
    out = qpass.interpret(again, {"x": np.array([1, 2, -1], np.float32)})["y"]
    np.testing.assert_array_equal(out, [True, False, False])


def test_text_form_refuses_a_bool_constant_other_than_0_or_1():
    text = "graph @g(%x: f32[2]) {\n  %k = const bool[2] [1, 2]\n  %y = where(%k, %x, %x) : f32[2]\n  return %y\n}\n"
    with pytest.raises(ParseError, match="bool value must be 0 or 1"):
        parse_graph(text)


def test_where_refuses_a_non_bool_condition():
    with pytest.raises(IRError, match="where takes a bool condition, got f32"):
        qpass.ir.infer_types("where", [TensorType((2,), "f32")] * 3, {})


def test_logic_op_refuses_a_run_time_non_bool_operand():
    model, feeds = _model([_feeds_and_nodes("And", _case("And", [A, _bool("q", seed=2)]))], 17)
    with pytest.raises(FrontendError, match=r"And takes bool operands, but 'a' is f32"):
        qpass.import_onnx(model)


def test_range_with_zero_delta_is_refused():
    case = _case("Range", [], constants={"s": np.array(0, np.int64), "l": np.array(3, np.int64),
                                         "d": np.array(0, np.int64)}, names=["s", "l", "d"])
    model, _ = _model([_feeds_and_nodes("Range-int", case)], 17)
    with pytest.raises(FrontendError, match="delta is 0"):
        qpass.import_onnx(model)


def test_reduce_with_run_time_axes_names_the_input():
    nodes = [helper.make_node("ReduceMax", ["a", "axes"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", F, SHAPE),
                                           helper.make_tensor_value_info("axes", I64, [1])],
                              [helper.make_tensor_value_info("y", F, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(FrontendError, match=r"ReduceMax.*axes input 'axes' is computed at run time"):
        qpass.import_onnx(model)


def test_shape_only_range_and_comparisons_fold_at_import():
    """Range -> Equal -> Where over constants folds away: only the Add of the input remains."""
    consts = {"s": np.array(0, np.int64), "l": np.array(4, np.int64), "d": np.array(1, np.int64),
              "two": np.array(2, np.int64)}
    nodes = [helper.make_node("Range", ["s", "l", "d"], ["r"]), helper.make_node("Equal", ["r", "two"], ["e"]),
             helper.make_node("Where", ["e", "two", "r"], ["w"]), helper.make_node("Add", ["x", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", I64, [4])],
                              [helper.make_tensor_value_info("y", I64, [4])],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    g = qpass.import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [op.kind for op in g.ops] == ["add"]
    np.testing.assert_array_equal(qpass.interpret(g, {"x": np.zeros(4, np.int64)})["y"], [0, 1, 2, 3])


def test_traits():
    from qpass.ir.opdef import Trait, op_def
    for kind in ("neg", "abs", "elu", "selu", "celu", "softplus", "mish", "round", "sin"):
        assert op_def(kind).has(Trait.TABLE) and op_def(kind).has(Trait.INTEGER_FORM), kind
    for kind in ("reciprocal", "log", "equal", "where", "max", "sum", "reduce_sum", "argmax", "prelu"):
        assert not op_def(kind).has(Trait.INTEGER_FORM), kind
    assert op_def("expand").has(Trait.DATA_MOVEMENT) and op_def("tile").has(Trait.DATA_MOVEMENT)
