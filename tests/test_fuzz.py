"""Fuzzing the readers: mutated .qir text and mutated ONNX models give a graph or a clean QpassError.

Any other exception is a bug in the parser, the verifier or the ONNX frontend. Hypothesis runs
derandomized with bounded examples, so the file is quick and CI sees the same cases every run.
"""

import copy
import functools
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import qpass
from graphs import conv_relu
from qpass.errors import QpassError
from qpass.ir import parse_graph
from qpass.ir.text import print_with_blobs

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "qpass" / "data" / "digits_cnn.onnx"
FUZZ = settings(max_examples=500, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# =========================================================================== .qir text
@functools.cache
def printed_graphs() -> list[tuple[str, dict]]:
    """Real graphs in text form with their blobs: hand-built, float and mixed int8/int4 models, pass cases."""
    from qpass.tools.demo import bundled_test_set
    images, _ = bundled_test_set()
    digits = qpass.import_onnx(DIGITS)
    quantized = qpass.quantize(digits, {"input": images[:4]}, bits="mixed", quiet=True)
    cases = [path.read_text().split("# ----- EXPECTED -----")[0]
             for path in sorted((REPO / "tests" / "pass_cases").glob("*.qir"))]
    return [print_with_blobs(g) for g in (conv_relu(), digits, quantized)] + [(text, {}) for text in cases]


FRAGMENTS = ["%", "@", "{", "}", "[", "]", "(", ")", "<", ">", ",", ":", "=", "-", ".", "0", "7", "\n", " ", "#",
             '"', "\\", '"\x01"', "nan", "-inf", "1e39", "1e400", "99999999999999999999", "-1", "0.5", "i4", "u8",
             "f16", "i64", "axis=", "axis=9", "bits=64", "group_size=0", "scale=", "zp=", "blob<", "blob<00>",
             "const", "return", "graph", "%x", "relu", "é"]
MUTATIONS = ("delete", "duplicate", "insert", "truncate", "swap-lines", "copy-token")


def mutate_text(text: str, edits: list[tuple[str, int, int, str]]) -> str:
    """Apply (kind, position, length, fragment) edits; positions wrap around the current text."""
    for kind, position, length, fragment in edits:
        if not text:
            break
        i = position % len(text)
        if kind == "delete":
            text = text[:i] + text[i + length:]
        elif kind == "duplicate":
            text = text[:i] + text[i:i + length] + text[i:]
        elif kind == "insert":
            text = text[:i] + fragment + text[i:]
        elif kind == "truncate":
            text = text[:i]
        elif kind == "swap-lines":
            lines = text.split("\n")
            a, b = i % len(lines), (i + length) % len(lines)
            lines[a], lines[b] = lines[b], lines[a]
            text = "\n".join(lines)
        else:                                   # copy one token over another: type confusion
            tokens = re.findall(r"[A-Za-z0-9_.%@+\-]+|\s+|.", text)
            tokens[i % len(tokens)] = tokens[(i + length) % len(tokens)]
            text = "".join(tokens)
    return text


text_edits = st.lists(st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 1 << 20), st.integers(1, 24),
                                st.sampled_from(FRAGMENTS)), min_size=1, max_size=4)


def check_parses_cleanly(text: str, blobs) -> None:
    """A graph that verifies and prints back to the same text, or a QpassError: nothing else."""
    try:
        graph = parse_graph(text, blobs)
        graph.verify()
    except QpassError:
        return
    printed, new_blobs = print_with_blobs(graph)
    again = parse_graph(printed, None if blobs is None else new_blobs)
    assert print_with_blobs(again)[0] == printed


@FUZZ
@given(base=st.integers(0, 100), edits=text_edits, with_blobs=st.booleans())
def test_mutated_qir_text_parses_or_fails_cleanly(base, edits, with_blobs):
    bases = printed_graphs()
    text, blobs = bases[base % len(bases)]
    check_parses_cleanly(mutate_text(text, edits), blobs if with_blobs else None)


@pytest.mark.parametrize("text", [
    'graph @m(%x: f32[2]) {\n  %y = clip(%x) {max="\x01"} : f32[2]\n  return %y\n}',        # not a JSON string
    "graph @m(%x: i8[2]{scale=1.0, zp=99999999999999999999}) {\n  return %x\n}",           # zp beyond int32
    "graph @m(%x: i8[4]{axis=0, group_size=0, scale=[1.0], zp=[0]}) {\n  return %x\n}",  # empty groups
    "graph @m(%x: i8[4]{axis=0, bits=99999999999999999999999, scale=[1.0, 1.0, 1.0, 1.0], zp=[0, 0, 0, 0]}) {\n"
    "  return %x\n}",
    "graph @m(%x: f32[2]) {\n  %c = const f32[2] [1e39, 2.0]\n  %y = add(%x, %c) : f32[2]\n  return %y\n}",
    "graph @m(%x: f32[99999999999999999999999]) {\n  return %x\n}",
    "graph @m(%x: f32[4294967296,4294967296]) {\n  %c = const f32[4294967296,4294967296] []\n  return %c\n}",
    "graph @m(%x: f32[2]) {\n  %y = batch_norm(%x, %x, %x, %x, %x) {epsilon=0.001} : f32[2]\n  return %y\n}",
    "graph @m(%x: f32[1,2,4,4], %w: f32[2,2,1,1]) {\n  %y = conv2d(%x, %w) {dilations=[1, 1], groups=1, "
    'pads=[0, 0, 0, 0], strides=[nan, 1]} : f32[1,2,4,4]\n  return %y\n}',                   # float in a shape
])
def test_parser_regressions_found_by_fuzzing(text):
    with pytest.raises(QpassError):
        parse_graph(text).verify()


def test_mixed_blob_and_inline_quant_params_print_back():
    text = "graph @m(%x: i8[2]{scale=0.5, zp=blob<0123456789abcdef>}) {\n  return %x\n}\n"
    check_parses_cleanly(text, None)


# =========================================================================== ONNX models
def _tensor(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def conv_model() -> onnx.ModelProto:
    """Conv, pooling, a shape computation that folds, Gemm and Softmax."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Shape", ["p"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
             helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="unsqueeze"),
             helper.make_node("Concat", ["n1", "minus1"], ["target"], name="concat", axis=0),
             helper.make_node("Reshape", ["p", "target"], ["flat"], name="reshape"),
             helper.make_node("Gemm", ["flat", "fw", "fb"], ["logits"], name="fc", transB=1),
             helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=-1)]
    weights = [_tensor("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
               _tensor("b", rng.standard_normal(4).astype(np.float32)), _tensor("zero", np.int64(0)),
               _tensor("axes0", np.array([0], np.int64)), _tensor("minus1", np.array([-1], np.int64)),
               _tensor("fw", rng.standard_normal((5, 64)).astype(np.float32)),
               _tensor("fb", rng.standard_normal(5).astype(np.float32))]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def data_movement_model() -> onnx.ModelProto:
    """Transpose, Split, Slice, Pad, Resize, Cast, ReduceMean, Squeeze, Clip, Flatten and a Q/DQ pair."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="transpose", perm=[0, 1, 3, 2]),
             helper.make_node("Split", ["t", "sizes"], ["a", "b"], name="split", axis=1),
             helper.make_node("Slice", ["a", "starts", "ends", "axes", "steps"], ["sl"], name="slice"),
             helper.make_node("Pad", ["sl", "pads", "pad_value"], ["pd"], name="pad", mode="constant"),
             helper.make_node("Resize", ["b", "", "scales"], ["rs"], name="resize", mode="nearest"),
             helper.make_node("Cast", ["rs"], ["rh"], name="cast", to=TensorProto.FLOAT16),
             helper.make_node("Cast", ["rh"], ["rf"], name="cast_back", to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["rf"], ["m"], name="mean", axes=[2, 3], keepdims=1),
             helper.make_node("Squeeze", ["m", "spatial"], ["sq"], name="squeeze"),
             helper.make_node("Clip", ["pd", "lo", "hi"], ["cl"], name="clip"),
             helper.make_node("Flatten", ["cl"], ["fl"], name="flatten", axis=1),
             helper.make_node("QuantizeLinear", ["fl", "q_scale", "q_zero"], ["q"], name="quantize"),
             helper.make_node("DequantizeLinear", ["q", "q_scale", "q_zero"], ["dq"], name="dequantize"),
             helper.make_node("Mul", ["sq", "two"], ["y2"], name="mul"),
             helper.make_node("HardSigmoid", ["dq"], ["y1"], name="hard_sigmoid", alpha=0.2, beta=0.5)]
    constants = [_tensor("sizes", np.array([1, 1], np.int64)), _tensor("starts", np.array([0, 1], np.int64)),
                 _tensor("ends", np.array([4, 4], np.int64)), _tensor("axes", np.array([2, 3], np.int64)),
                 _tensor("steps", np.array([1, 1], np.int64)),
                 _tensor("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)),
                 _tensor("pad_value", np.float32(0.5)), _tensor("scales", np.array([1, 1, 2, 2], np.float32)),
                 _tensor("spatial", np.array([2, 3], np.int64)), _tensor("lo", np.float32(-1)),
                 _tensor("hi", np.float32(1)), _tensor("q_scale", np.float32(0.05)), _tensor("q_zero", np.uint8(3)),
                 _tensor("two", np.array([2.0], np.float32))]
    graph = helper.make_graph(nodes, "moves", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y1", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("y2", TensorProto.FLOAT, None)], constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@functools.cache
def onnx_models() -> list[bytes]:
    models = [onnx.load(DIGITS), conv_model(), data_movement_model()]
    for model in models:
        qpass.import_onnx(model)                        # the unmutated models import
    return [model.SerializeToString() for model in models]


def check_imports_cleanly(model) -> None:
    try:
        qpass.import_onnx(model)
    except QpassError:
        pass


OP_TYPES = ["Conv", "Relu", "Gemm", "MatMul", "Add", "Pow", "Reshape", "Concat", "Split", "Slice", "Resize",
            "Pad", "Gather", "Transpose", "Squeeze", "Unsqueeze", "Cast", "Shape", "Constant", "ConstantOfShape",
            "QuantizeLinear", "DequantizeLinear", "Softmax", "MaxPool", "AveragePool", "BatchNormalization",
            "Clip", "Flatten", "ReduceMean", "LayerNormalization", "ConvTranspose", "GlobalAveragePool", "Gelu",
            "NoSuchOp"]
ATTRIBUTE_NAMES = ["axis", "axes", "pads", "strides", "kernel_shape", "dilations", "group", "perm", "to", "mode",
                   "auto_pad", "value", "keepdims", "transA", "transB", "alpha", "beta", "block_size",
                   "output_dtype", "split", "num_outputs", "scales", "allowzero", "ceil_mode", "start", "end"]
NAMES = ["x", "dangling", "", "w", "zero", "sizes", "q_scale", "y"]


def attribute_values():
    """Attribute values of every ONNX kind, often the wrong one for the attribute."""
    return st.one_of(st.integers(-3, 9), st.sampled_from([0.0, -1.5, math.nan, math.inf, 1e30]),
                     st.sampled_from(["", "SAME_UPPER", "VALID", "linear", "bogus"]),
                     st.lists(st.integers(-3, 9), min_size=1, max_size=6),
                     st.lists(st.floats(-2, 2), min_size=1, max_size=4),
                     st.sampled_from([np.arange(3, dtype=np.int64), np.zeros((2, 0), np.float32),
                                      np.array(["s"], dtype=object)]).map(lambda a: numpy_helper.from_array(a)),
                     st.just([b"a", b"b"]))


def _pick(data, sequence):
    return data.draw(st.sampled_from(list(sequence))) if len(sequence) else None


def drop_input(model, data):
    node = _pick(data, model.graph.node)
    if node is not None and node.input:
        del node.input[data.draw(st.integers(0, len(node.input) - 1))]


def rename_input(model, data):
    node = _pick(data, model.graph.node)
    if node is not None and node.input:
        node.input[data.draw(st.integers(0, len(node.input) - 1))] = data.draw(st.sampled_from(NAMES))


def add_input(model, data):
    node = _pick(data, model.graph.node)
    if node is not None:
        node.input.append(data.draw(st.sampled_from(NAMES)))


def change_outputs(model, data):
    node = _pick(data, model.graph.node)
    if node is not None and node.output and data.draw(st.booleans()):
        del node.output[data.draw(st.integers(0, len(node.output) - 1))]
    elif node is not None:
        node.output.append(data.draw(st.sampled_from(["extra", *node.output])))


def drop_node(model, data):
    nodes = model.graph.node
    if nodes:
        del nodes[data.draw(st.integers(0, len(nodes) - 1))]


def swap_nodes(model, data):
    nodes = model.graph.node
    if len(nodes) > 1:
        i, j = (data.draw(st.integers(0, len(nodes) - 1)) for _ in range(2))
        first, second = copy.deepcopy(nodes[i]), copy.deepcopy(nodes[j])
        nodes[i].CopyFrom(second)
        nodes[j].CopyFrom(first)


def change_op_type(model, data):
    node = _pick(data, model.graph.node)
    if node is not None:
        node.op_type = data.draw(st.sampled_from(OP_TYPES))


def set_attribute(model, data):
    """Replace or add an attribute, usually with a value of the wrong type."""
    node = _pick(data, model.graph.node)
    if node is None:
        return
    name = data.draw(st.sampled_from([a.name for a in node.attribute] + ATTRIBUTE_NAMES))
    for attribute in [a for a in node.attribute if a.name == name]:
        node.attribute.remove(attribute)
    if data.draw(st.integers(0, 9)) == 0:                 # a declared type without a value, or none at all
        node.attribute.append(onnx.AttributeProto(name=name, type=data.draw(st.integers(0, 14))))
    else:
        node.attribute.append(helper.make_attribute(name, data.draw(attribute_values())))


def initializer_dtype(model, data):
    tensor = _pick(data, model.graph.initializer)
    if tensor is not None:
        tensor.data_type = data.draw(st.sampled_from([0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 16, 21, 22, 99]))


def initializer_shape(model, data):
    tensor = _pick(data, model.graph.initializer)
    if tensor is not None and tensor.dims and data.draw(st.booleans()):
        tensor.dims[data.draw(st.integers(0, len(tensor.dims) - 1))] = data.draw(st.sampled_from([0, -1, 3, 1 << 40]))
    elif tensor is not None:
        tensor.dims.append(data.draw(st.sampled_from([1, 2])))


def initializer_data(model, data):
    tensor = _pick(data, model.graph.initializer)
    if tensor is None:
        return
    if tensor.raw_data:
        tensor.raw_data = tensor.raw_data[:data.draw(st.integers(0, len(tensor.raw_data)))]
    else:
        tensor.int64_data.append(7)
        tensor.float_data.append(1.5)


def input_shape(model, data):
    info = _pick(data, model.graph.input)
    dims = info.type.tensor_type.shape.dim
    choice = data.draw(st.integers(0, 4))
    if choice == 4 or not dims:
        info.type.tensor_type.elem_type = data.draw(st.sampled_from([0, 2, 7, 8, 9, 11, 16, 111]))
    elif choice == 3:
        del dims[data.draw(st.integers(0, len(dims) - 1))]
    else:
        dim = dims[data.draw(st.integers(0, len(dims) - 1))]
        if choice == 0:
            dim.dim_value = data.draw(st.sampled_from([0, 1, 3, 1 << 40]))
        elif choice == 1:
            dim.dim_param = "N"
        else:
            dim.Clear()


def output_name(model, data):
    info = _pick(data, model.graph.output)
    info.name = data.draw(st.sampled_from(["dangling", "x", model.graph.output[0].name]))


def opset(model, data):
    model.opset_import[0].version = data.draw(st.sampled_from([1, 7, 9, 10, 11, 13, 18, 21, 99]))


STRUCTURAL = [drop_input, rename_input, add_input, change_outputs, drop_node, swap_nodes, change_op_type,
              set_attribute, initializer_dtype, initializer_shape, initializer_data, input_shape, output_name, opset]


@FUZZ
@given(base=st.integers(0, 2), mutations=st.lists(st.sampled_from(STRUCTURAL), min_size=1, max_size=3),
       data=st.data())
def test_structurally_mutated_onnx_imports_or_fails_cleanly(base, mutations, data):
    model = onnx.ModelProto.FromString(onnx_models()[base])
    for mutation in mutations:
        mutation(model, data)
    check_imports_cleanly(model)


def mutate_bytes(data: bytes, edits: list[tuple[int, int, int, int]]) -> bytes:
    """Apply (kind, position, length, byte) edits: overwrite, delete, duplicate, truncate."""
    data = bytearray(data)
    for kind, position, length, value in edits:
        if not data:
            break
        i = position % len(data)
        if kind == 0:
            data[i] = value
        elif kind == 1:
            del data[i:i + length]
        elif kind == 2:
            data[i:i] = data[i:i + length]
        else:
            del data[i:]
    return bytes(data)


byte_edits = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 24), st.integers(1, 16), st.integers(0, 255)),
                      min_size=1, max_size=8)


@FUZZ
@given(base=st.integers(0, 2), edits=byte_edits)
def test_byte_mutated_onnx_imports_or_fails_cleanly(tmp_path_factory, base, edits):
    path = tmp_path_factory.mktemp("onnx") / "mutated.onnx"
    path.write_bytes(mutate_bytes(onnx_models()[base], edits))
    check_imports_cleanly(path)


def _unknown_initializer_type(model):
    model.graph.initializer[0].data_type = 99


def _undefined_initializer_type(model):
    model.graph.initializer[0].data_type = TensorProto.UNDEFINED


def _unknown_input_type(model):
    model.graph.input[0].type.tensor_type.elem_type = 111


def _undefined_tensor_attribute(model):
    attribute = helper.make_attribute("value", numpy_helper.from_array(np.zeros(1, np.float32)))
    attribute.t.data_type = TensorProto.UNDEFINED
    model.graph.node[0].attribute.append(attribute)


@pytest.mark.parametrize("mutate", [_unknown_initializer_type, _undefined_initializer_type, _unknown_input_type,
                                    _undefined_tensor_attribute])
def test_frontend_regressions_found_by_fuzzing(mutate):
    model = conv_model()
    mutate(model)
    with pytest.raises(QpassError):
        qpass.import_onnx(model)


def test_names_that_are_not_utf8_are_a_clean_error(tmp_path):
    data = conv_model().SerializeToString().replace(b"relu", b"r\xa5lu")
    path = tmp_path / "garbled.onnx"
    path.write_bytes(data)
    with pytest.raises(QpassError, match="not UTF-8"):
        qpass.import_onnx(path)


# =========================================================================== the command line
def test_mutated_files_fail_cleanly_on_the_command_line(tmp_path):
    text, _ = printed_graphs()[0]
    files = {"truncated.qir": text[: len(text) // 3].encode(),
             "garbled.qir": mutate_text(text, [("insert", 200, 1, "$"), ("copy-token", 90, 7, "")]).encode(),
             "not-utf8.qir": text.encode().replace(b"relu", b"r\xff\xfelu"),
             "bytes.onnx": mutate_bytes(onnx_models()[1], [(3, 700, 1, 0)]),
             "garbled.onnx": onnx_models()[1].replace(b"relu", b"r\xa5lu")}
    model = onnx.ModelProto.FromString(onnx_models()[1])
    model.graph.node[0].attribute.append(helper.make_attribute("group", "four"))
    files["wrong-attribute.onnx"] = model.SerializeToString()
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content)
        result = subprocess.run([sys.executable, "-m", "qpass", "show", str(path)], capture_output=True, text=True)
        assert result.returncode != 0, name
        assert result.stderr.startswith("qpass show: error: "), result.stderr
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
        assert "\n\n" not in result.stderr.strip(), result.stderr            # one paragraph
