"""onnx_node: an ONNX node qpass has no op of its own for, kept whole and run by the libraries.

The op holds a one-node ONNX model (its `model` attribute, base64 of the serialized
ModelProto): the node, its import-time constant operands as initializers, and a graph input per
run-time operand, which are the op's IR operands in order. Everything about it comes from
onnx and TVM rather than from qpass:

- types: onnx shape inference (with data propagation) on that model; a result whose shape
  depends on the data (NonZero, NonMaxSuppression's count...) is refused, qpass compiles
  static shapes;
- interpreter kernel: `onnx.reference`, ONNX's own reference implementation of every op;
- lowering: TVM's Relax ONNX frontend (`tvm.relax.frontend.onnx`) converts the same model to
  a Relax function, which the lowered module calls. Ops that frontend does not convert leave
  the op without a lowering, and `qpass compile` names them before any work.

No pass rewrites an onnx_node: it is a float (or integer) island between qpass's own ops, and
quantization leaves it in float. The frontend imports into one only what has no converter and
no ONNX function body (see qpass.frontend.onnx_import).
"""

from __future__ import annotations

import base64
import functools
from typing import Optional

import numpy as np
import onnx
from onnx import helper

from qpass.ir.opdef import OpDef, define_op
from qpass.ir.types import TensorType
from qpass.ops.common import fail

KIND = "onnx_node"

# IR dtypes and the ONNX element types they hold.
IR_TO_ONNX = {"f32": onnx.TensorProto.FLOAT, "f16": onnx.TensorProto.FLOAT16, "i64": onnx.TensorProto.INT64,
              "i32": onnx.TensorProto.INT32, "i16": onnx.TensorProto.INT16, "i8": onnx.TensorProto.INT8,
              "u8": onnx.TensorProto.UINT8, "bool": onnx.TensorProto.BOOL}
ONNX_TO_IR = {code: name for name, code in IR_TO_ONNX.items()}


def encode(model: onnx.ModelProto) -> str:
    return base64.b64encode(model.SerializeToString(deterministic=True)).decode("ascii")


@functools.lru_cache(maxsize=256)
def decode(text: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.ParseFromString(base64.b64decode(text.encode("ascii")))
    return model


def node_model(node: onnx.NodeProto, opsets: dict[str, int], runtime: list[tuple[str, TensorType]],
               constants: dict[str, np.ndarray], outputs: list[str]) -> onnx.ModelProto:
    """The one-node model an onnx_node holds: `runtime` (ONNX name, IR type) become graph inputs in
    order, `constants` initializers; the node's outputs are the graph's outputs, untyped."""
    inputs = [helper.make_tensor_value_info(name, IR_TO_ONNX[t.dtype], list(t.shape)) for name, t in runtime]
    initializers = [onnx.numpy_helper.from_array(np.asarray(a), name) for name, a in constants.items()]
    graph = helper.make_graph([node], node.op_type.lower(), inputs,
                              [onnx.ValueInfoProto(name=name) for name in outputs], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
                              producer_name="qpass")
    model.ir_version = min(model.ir_version, onnx.IR_VERSION)
    return model


def _with_input_types(model: onnx.ModelProto, types, results=()) -> onnx.ModelProto:
    """`model` whose graph inputs have exactly `types` (a verified op's operands may differ from the
    model's declaration only if the IR was edited by hand; the operand types win), and whose
    outputs have `results` when given."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for infos, typed in ((model.graph.input, types), (model.graph.output, results)):
        for info, t in zip(infos, typed):
            if t.dtype not in IR_TO_ONNX:
                fail(f"{KIND} cannot take a {t.dtype} operand")
            info.CopyFrom(helper.make_tensor_value_info(info.name, IR_TO_ONNX[t.dtype], list(t.shape)))
    return model


@functools.lru_cache(maxsize=256)
def _inferred(text: str, key: tuple) -> tuple:
    model = decode(text)
    node = model.graph.node[0]
    where = f"ONNX {node.op_type} node '{node.name or node.output[0]}'"
    if len(model.graph.input) != len(key):
        fail(f"{KIND} ({where}) takes {len(model.graph.input)} run-time operands, got {len(key)}")
    typed = _with_input_types(model, [TensorType(shape, dtype) for shape, dtype in key])
    try:
        inferred = onnx.shape_inference.infer_shapes(typed, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:   # onnx raises InferenceError, ValidationError or RuntimeError
        fail(f"{where}: onnx shape inference refuses it: {str(e).strip().splitlines()[-1]}")
    known = {info.name: info for info in inferred.graph.value_info}
    known.update({info.name: info for info in inferred.graph.output})
    results = []
    for name in node.output:
        if not name:
            continue
        info = known.get(name)
        tensor = info.type.tensor_type if info is not None and info.type.HasField("tensor_type") else None
        if tensor is None or not tensor.HasField("shape") or tensor.elem_type == 0:
            fail(f"{where}: onnx shape inference gives no tensor type for its result '{name}'")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if any(d is None for d in dims):
            fail(f"{where}: the shape of its result '{name}' depends on the data ({dims}); qpass compiles "
                 "static shapes only")
        if tensor.elem_type not in ONNX_TO_IR:
            fail(f"{where}: its result '{name}' has element type "
                 f"{onnx.TensorProto.DataType.Name(tensor.elem_type)}, which the IR does not hold")
        results.append(TensorType(tuple(dims), ONNX_TO_IR[tensor.elem_type]))
    return tuple(results)


def infer(types, attrs):
    return list(_inferred(attrs["model"], tuple((tuple(t.shape), t.dtype) for t in types)))


@functools.lru_cache(maxsize=64)
def _evaluator(text: str):
    from onnx.reference import ReferenceEvaluator
    return ReferenceEvaluator(decode(text))


def kernel(op, *arrays):
    model = decode(op.attrs["model"])
    feeds = {info.name: np.asarray(a) for info, a in zip(model.graph.input, arrays)}
    return list(_evaluator(op.attrs["model"]).run(None, feeds))   # the graph's outputs: the node's, in order


def _key(values) -> tuple:
    return tuple((tuple(v.type.shape), v.type.dtype) for v in values)


@functools.lru_cache(maxsize=64)
def _relax_function(text: str, key: tuple, results: tuple):
    """The Relax function TVM's ONNX frontend makes of the op's model (None if it cannot)."""
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx
    model = _with_input_types(decode(text), [TensorType(shape, dtype) for shape, dtype in key],
                              [TensorType(shape, dtype) for shape, dtype in results])
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    mod = from_onnx(model, opset=opset, keep_params_in_input=False)
    func = mod["main"]
    for attr in ("global_symbol", "num_input", "params"):
        if func.attrs is not None and attr in func.attrs:
            func = func.without_attr(attr)
    # The frontend may add helper functions (e.g. for If); the call below inlines none of them.
    if len([gv for gv in mod.get_global_vars() if isinstance(mod[gv], relax.Function)]) != 1:
        return None
    return func


def lowering_problem(op) -> Optional[str]:
    """Why TVM's Relax ONNX frontend cannot lower `op` (None when it can)."""
    from tvm.relax.frontend.onnx import onnx_frontend
    op_type = decode(op.attrs["model"]).graph.node[0].op_type
    if op_type not in onnx_frontend._get_convert_map():
        return f"TVM's Relax ONNX frontend has no converter for {op_type}"
    try:
        if _relax_function(op.attrs["model"], _key(op.inputs), _key(op.outputs)) is None:
            return f"TVM's Relax ONNX frontend converts {op_type} to more than one function"
    except Exception as e:   # the frontend raises whatever its converter hits
        return f"TVM's Relax ONNX frontend fails on it: {type(e).__name__}: {str(e).strip().splitlines()[0]}"
    return None


def lower(low, op):
    problem = lowering_problem(op)
    if problem:
        fail(f"%{op.name} (onnx_node {decode(op.attrs['model']).graph.node[0].op_type}) cannot lower: {problem}")
    func = _relax_function(op.attrs["model"], _key(op.inputs), _key(op.outputs))
    gv = low.bb.add_func(func, f"onnx_{op.name}".replace(".", "_"))
    call = low.emit(low.relax.Call(gv, [low.get(v) for v in op.inputs]))
    if len(op.outputs) == 1 and not isinstance(call.ty, low.relax.TupleType):
        low.set(op.output, call)
        return None
    for i, value in enumerate(op.outputs):
        low.set(value, low.emit(low.relax.TupleGetItem(call, i)))
    return None


def label(attrs) -> str:
    """The ONNX op type an onnx_node runs (for listings and errors)."""
    return decode(attrs["model"]).graph.node[0].op_type


define_op(OpDef(KIND, infer=infer, inputs=(0, 64), attrs=("model", "op_type"), kernel=kernel, lower=lower,
                lowering_problem=lowering_problem,
                doc="an ONNX node run by onnx.reference and lowered by TVM's Relax ONNX frontend; `model` is "
                    "the one-node ONNX model (base64), `op_type` its op type; never quantized"))
