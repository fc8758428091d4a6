"""What the importer does with an ONNX node no converter takes, in order of preference:

1. an `If` whose condition is known at import time is replaced by the branch it takes;
2. an op whose ONNX schema defines it as a function of other ops (Swish, LogSoftmax,
   DepthToSpace, RMSNormalization, Attention, ...) is expanded into that function body, whose
   nodes are converted in turn, so they become qpass's own ops and quantize like any other;
3. any other op of the default domain that `onnx.reference` implements becomes one
   `onnx_node` (qpass.ops.fallback): run by onnx.reference, typed by onnx shape inference,
   lowered by TVM's Relax ONNX frontend, left in float by quantization.

What none of them takes (sequences, optionals, strings, Loop/Scan, an If decided at run time,
custom domains without a converter) is refused by `unsupported_reason`, before any conversion.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np
import onnx
import onnx.inliner
from onnx import defs, helper

from qpass.errors import FrontendError, QpassError
from qpass.frontend.onnx_node import Node, Operand, dtype_of, shape_of
from qpass.ir import Value
from qpass.ir.types import is_float
from qpass.ops import fallback

if TYPE_CHECKING:
    from qpass.frontend.onnx_import import Importer

DEFAULT_DOMAINS = ("", "ai.onnx")
_EXPAND_DOMAIN = "qpass.expand"
# Value kinds the IR has no type for: ops taking or making them cannot import.
_NON_TENSOR = ("Sequence", "Optional", "SplitToSequence", "ConcatFromSequence", "String", "RegexFullMatch",
               "TfIdfVectorizer", "ImageDecoder")


def _schema(op_type: str, opset: int) -> Optional[defs.OpSchema]:
    try:
        return defs.get_schema(op_type, opset, "")
    except defs.SchemaError:
        return None


def _has_reference(op_type: str, opset: int) -> bool:
    from onnx.reference.ops import load_op
    try:
        load_op("", op_type, opset)
    except (NotImplementedError, RuntimeError, ValueError):
        return False
    return True


def unsupported_reason(proto: onnx.NodeProto, opset: int) -> Optional[str]:
    """Why no fallback imports the node (None when one does); the node has no converter."""
    if proto.domain not in DEFAULT_DOMAINS:
        return f"no converter for domain '{proto.domain}'"
    op = proto.op_type
    if op.startswith(_NON_TENSOR):
        return "the IR has no sequence, optional or string values"
    schema = _schema(op, opset)
    if schema is None:
        return f"ONNX opset {opset} defines no {op}"
    if op == "If":
        return None                   # decided per node: the condition must fold (see inline_if)
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in proto.attribute):
        return "control flow with a body graph (Loop, Scan) is not supported; unroll it before export"
    if schema.has_function or schema.has_context_dependent_function or _has_reference(op, opset):
        return None
    return f"neither an ONNX function body nor onnx.reference implements {op}"


# ---------------------------------------------------------------------------------- If
def inline_if(importer: "Importer", node: Node) -> list[Optional[Operand]]:
    """An If: the branch it takes when its condition is known at import time; else both branches,
    each result chosen by `where` on the condition (ONNX branches have no side effects, so this is
    the same function at the cost of computing both), which needs the branches' results to have
    equal types."""
    condition = node.input(0)
    if isinstance(condition, Value):
        if condition.type.size != 1:
            raise node.fail(f"its condition has {condition.type.size} elements; ONNX If takes one")
        taken = []
        for name in ("then_branch", "else_branch"):
            try:
                taken.append(_branch(importer, node, node.attr(name)))
            except FrontendError as e:
                raise node.fail(
                    f"its condition '{node.proto.input[0]}' is computed at run time, so qpass computes both "
                    f"branches and selects, but its {name.split('_')[0]} branch does not convert at these input "
                    f"shapes ({e}). If a graph input decides the condition (a sample rate, a mode flag), fix it "
                    "at import: qpass.import_onnx(..., constants={name: value})") from None
            
        results = []
        for i, (a, b) in enumerate(zip(*taken)):
            if shape_of(a) != shape_of(b) or dtype_of(a) != dtype_of(b):
                raise node.fail(
                    f"its condition '{node.proto.input[0]}' is computed at run time and its branches give result "
                    f"{i} different types ({dtype_of(a)}{list(shape_of(a))} and {dtype_of(b)}{list(shape_of(b))}); qpass compiles one static graph, so it "
                    "computes both branches and selects, which needs equal types. Fix the input that decides "
                    "the condition, or export the model for one branch")
            flag = node.emit("reshape", [condition], {"shape": []}, suffix="condition")
            results.append(node.emit("where", [flag, a, b], suffix=f"select{i}"))
        return results
    if np.asarray(condition).size != 1:
        raise node.fail(f"its condition has {np.asarray(condition).size} elements; ONNX If takes one")
    branch = node.attr("then_branch" if bool(np.asarray(condition).reshape(-1)[0]) else "else_branch")
    return _branch(importer, node, branch)


def _branch(importer: "Importer", node: Node, branch: onnx.GraphProto) -> list[Operand]:
    """Convert the nodes of an If branch; its results."""
    for init in branch.initializer:
        importer.bind_array(init.name, onnx.numpy_helper.to_array(init))
    for proto in branch.node:
        importer.convert(proto, node.opset)
    return [importer.operand(out.name, node) for out in branch.output]


# ---------------------------------------------------------------------------------- functions
def function_body(proto: onnx.NodeProto, node: Node) -> Optional[tuple[list[onnx.NodeProto], int]]:
    """The nodes of the ONNX function that defines `proto`'s op, and the default-domain opset they
    are written in; None when the op has no function body."""
    schema = _schema(proto.op_type, node.opset)
    if schema is None:
        return None
    body = None
    if schema.has_context_dependent_function:
        types = [_type_proto(x).SerializeToString() if x is not None else onnx.TypeProto().SerializeToString()
                 for x in node.inputs]
        raw = schema.get_context_dependent_function(proto.SerializeToString(), types)
        body = onnx.FunctionProto.FromString(raw) if raw else None
    if body is None and schema.has_function:
        body = onnx.FunctionProto.FromString(schema.function_body.SerializeToString())
    if body is None or not body.node:
        return None
    opset = next((o.version for o in body.opset_import if o.domain in DEFAULT_DOMAINS), node.opset)
    body.domain, body.name = _EXPAND_DOMAIN, proto.op_type
    call = onnx.NodeProto()
    call.CopyFrom(proto)
    call.domain = _EXPAND_DOMAIN
    given = {a.name for a in call.attribute}
    for name, attribute in schema.attributes.items():   # the body reads defaults the node leaves out
        if name not in given and attribute.default_value.type != onnx.AttributeProto.UNDEFINED:
            call.attribute.append(attribute.default_value)
    graph = helper.make_graph([call], "expand", [], [])
    model = helper.make_model(graph, functions=[body], opset_imports=[
        helper.make_opsetid("", opset), helper.make_opsetid(_EXPAND_DOMAIN, 1)])
    nodes = list(onnx.inliner.inline_local_functions(model, convert_version=False).graph.node)
    # The inliner names the body's own values after the function's; prefix them with the node's
    # first output so that two expansions of one op never share a name.
    interface = {n for n in (*proto.input, *proto.output) if n}
    prefix = (proto.output[0] or proto.name or proto.op_type) + "/"
    for n in nodes:
        n.input[:] = [x if not x or x in interface else prefix + x for x in n.input]
        n.output[:] = [x if not x or x in interface else prefix + x for x in n.output]
        if not n.name:
            n.name = prefix + n.op_type
    return nodes, opset


def _type_proto(operand: Operand) -> onnx.TypeProto:
    if isinstance(operand, Value):
        shape, code = operand.type.shape, fallback.IR_TO_ONNX[operand.type.dtype]
    else:
        array = np.asarray(operand)
        shape, code = array.shape, helper.np_dtype_to_tensor_dtype(array.dtype)
    return helper.make_tensor_type_proto(code, list(shape))


# ---------------------------------------------------------------------------------- onnx_node
def onnx_node(node: Node) -> list[Optional[Operand]]:
    """The node as one onnx_node op over its run-time operands (folded when it has none)."""
    proto = node.proto
    runtime: dict[str, Value] = {}
    constants: dict[str, np.ndarray] = {}
    for name, operand in zip(proto.input, node.inputs):
        if not name:
            continue
        if isinstance(operand, Value):
            runtime.setdefault(name, operand)
        else:
            constants[name] = np.asarray(operand)
    for name, value in runtime.items():
        if value.type.dtype not in fallback.IR_TO_ONNX:
            raise node.fail(f"its operand '{name}' is {value.type.dtype}, which ONNX has no type for")
    model = fallback.node_model(proto, {"": node.opset}, [(n, v.type) for n, v in runtime.items()],
                                constants, [o for o in proto.output if o])
    attrs = {"model": fallback.encode(model), "op_type": proto.op_type}
    values = list(runtime.values())
    if not values:
        results = iter(fallback.kernel(_Detached(attrs)))
    else:
        try:
            types = fallback.infer([v.type for v in values], attrs)
        except QpassError as e:
            shape_inputs = [n for n, v in runtime.items() if not is_float(v.type.dtype)]
            if "depends on the data" in str(e) and shape_inputs:
                # Most often a size parameter (TopK's k, OneHot's depth) left as a graph input.
                raise node.fail(f"{e}. Its input '{shape_inputs[0]}' is computed at run time, but qpass needs "
                                "static shapes: make it a constant (an initializer), or fix the input shapes "
                                "(--input-shape) so that it folds") from None
            raise node.fail(str(e)) from None
        results = iter(node.emit_all(fallback.KIND, values, attrs, types=types))
    return [next(results) if name else None for name in proto.output]


class _Detached:
    """An op-shaped holder of attributes, for running the kernel at import time."""

    def __init__(self, attrs):
        self.attrs = attrs
