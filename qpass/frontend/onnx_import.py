"""ONNX -> IR: load a model, fix its input shapes, and convert it node by node.

Constants (initializers and Constant nodes) live in a frontend-side environment of numpy
arrays and become IR constants only when a run-time op reads them; every node whose inputs are
all constants is folded on the way (see `onnx_node`). The result is a verified graph with
static types everywhere.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import onnx
import onnx.version_converter
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from qpass.errors import FrontendError, QpassError
from qpass.frontend import onnx_fallback
from qpass.frontend import onnx_math_ops, onnx_ops, onnx_quant_ops, onnx_rnn_ops, onnx_shape_ops  # noqa: F401  (converters)
from qpass.frontend.onnx_node import (CONVERTERS, ONNX_TO_IR, Node, Operand, Unsupported, element_type_name,
                                      ir_array, node_label, sanitize_name)
from qpass.ir import Graph, QuantParams, TensorType, Value, numpy_dtype

# Opset 9 up to the newest the installed onnx package defines. Between 21 and 28 the ops qpass
# converts changed only in the element types they admit (bfloat16, float8, int4, ...: refused where
# the IR has no such dtype), except Cast (round_mode), QuantizeLinear (precision) and
# DequantizeLinear (output_dtype), whose converters check those attributes.
SUPPORTED_OPSETS = range(9, onnx.defs.onnx_opset_version() + 1)
_DEFAULT_DOMAINS = ("", "ai.onnx")
_VALID_NAME = re.compile(r"^[A-Za-z0-9_.]+$")


def import_onnx(model: Union[str, os.PathLike, onnx.ModelProto],
                input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
                name: Optional[str] = None, constants: Optional[Mapping[str, object]] = None) -> Graph:
    """Import an ONNX model (a path or an `onnx.ModelProto`) as a verified IR graph.

    `input_shapes` (input name -> full shape) fixes the dimensions the model leaves symbolic;
    `constants` (input name -> value) fixes inputs that configure the model rather than feed it
    (a sample rate, a mode flag), so that what they decide folds at import; `name` names the graph
    (default: the file's stem, else the ONNX graph's name).
    """
    proto, source = _load(model)
    default_name = Path(model).stem if not isinstance(model, onnx.ModelProto) else proto.graph.name
    return Importer(proto, source, dict(input_shapes or {}), name or default_name or "main",
                    dict(constants or {})).run()


def _load(model) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        proto, source = model, f"ONNX model '{model.graph.name}'" if model.graph.name else "the given ONNX model"
    elif isinstance(model, (str, os.PathLike)):
        source = f"'{os.fspath(model)}'"
        try:
            proto = onnx.load(os.fspath(model))
        except (OSError, DecodeError, ValueError) as e:
            reason = ("the file does not exist" if isinstance(e, FileNotFoundError)
                      else "it is a directory" if isinstance(e, IsADirectoryError)
                      else f"it cannot be read ({e.strerror or e})" if isinstance(e, OSError)
                      else "its bytes do not parse as an ONNX protobuf")
            raise FrontendError(
                f"{source} is not a readable ONNX model: {reason}. Check the path, and that the file is a "
                "complete .onnx export (an interrupted download, a Git LFS pointer or another format gives "
                "this)") from None
    else:
        raise FrontendError(f"import_onnx takes a path or an onnx.ModelProto, not {type(model).__name__}")
    if not proto.HasField("graph") or not (proto.graph.node or proto.graph.output):
        raise FrontendError(f"{source} is not a readable ONNX model: it holds no graph (no nodes and no "
                            "outputs). Check that it is a complete .onnx export")
    garbled = next((name for name in _names(proto) if not isinstance(name, str)), None)
    if garbled is not None:
        raise FrontendError(f"{source} is not a readable ONNX model: the name {garbled!r} is not UTF-8 text, so "
                            "the file is corrupted. Export the model again")
    return proto, source


def _names(proto: onnx.ModelProto) -> Iterator:
    """Every name and op type in the model (protobuf gives bytes where a corrupted file is not UTF-8)."""
    graph = proto.graph
    yield graph.name
    yield from (o.domain for o in proto.opset_import)
    for info in (*graph.input, *graph.output, *graph.initializer):
        yield info.name
    for node in graph.node:
        yield from (node.name, node.op_type, node.domain, *node.input, *node.output)
        yield from (a.name for a in node.attribute)


def _opset(proto: onnx.ModelProto, source: str) -> int:
    versions = [o.version for o in proto.opset_import if o.domain in _DEFAULT_DOMAINS]
    if not versions:
        raise FrontendError(f"{source} declares no opset for the default ONNX domain; re-export it with a "
                            f"standard opset ({SUPPORTED_OPSETS.start} to {SUPPORTED_OPSETS.stop - 1})")
    if versions[0] < SUPPORTED_OPSETS.start:
        return versions[0]             # Importer upgrades it (see _upgraded)
    if versions[0] not in SUPPORTED_OPSETS:
        raise FrontendError(
            f"{source} uses ONNX opset {versions[0]}; qpass imports opsets {SUPPORTED_OPSETS.start} to "
            f"{SUPPORTED_OPSETS.stop - 1}. Convert it first: "
            "onnx.version_converter.convert_version(onnx.load(path), 17)")
    return versions[0]


def _upgraded(proto: onnx.ModelProto, source: str, opset: int) -> onnx.ModelProto:
    """A model below the oldest opset qpass converts, rewritten to it by onnx's version converter."""
    if opset >= SUPPORTED_OPSETS.start:
        return proto
    try:
        return onnx.version_converter.convert_version(proto, SUPPORTED_OPSETS.start)
    except Exception as e:   # the converter raises RuntimeError or its own errors
        raise FrontendError(
            f"{source} uses ONNX opset {opset}; qpass imports opsets {SUPPORTED_OPSETS.start} to "
            f"{SUPPORTED_OPSETS.stop - 1}, and onnx's version converter cannot bring it to "
            f"{SUPPORTED_OPSETS.start} ({str(e).strip().splitlines()[-1][:200]}). Re-export it at a newer "
            "opset") from None


def converter_for(proto: onnx.NodeProto):
    """The converter registered for the node's op: '<domain>.<op>' for a custom domain (ORT's
    com.microsoft ops also under their bare name), else the op type; None if there is none."""
    if proto.domain in _DEFAULT_DOMAINS:
        return CONVERTERS.get(proto.op_type)
    found = CONVERTERS.get(f"{proto.domain}.{proto.op_type}")
    if found is None and proto.domain == "com.microsoft":
        found = CONVERTERS.get(proto.op_type)
    return found


def _check_supported(graph: onnx.GraphProto, source: str, opset: int) -> None:
    """One error listing every op type (and custom-domain op) the model uses that no converter and
    no fallback (onnx_fallback) imports, with the reason."""
    unsupported: dict[str, tuple[str, list[str]]] = {}
    for node in graph.node:
        if converter_for(node) is not None:
            continue
        reason = onnx_fallback.unsupported_reason(node, opset)
        if reason is not None:
            op_type = node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"
            unsupported.setdefault(op_type, (reason, []))[1].append(node_label(node))
    if not unsupported:
        return
    listed = []
    for op_type, (reason, labels) in unsupported.items():
        shown = ", ".join(labels[:5]) + (f" and {len(labels) - 5} more" if len(labels) > 5 else "")
        listed.append(f"{op_type} ({reason}; {'nodes' if len(labels) > 1 else 'node'}: {shown})")
    raise FrontendError(
        f"{source}: the model uses ops qpass cannot import: {'; '.join(listed)}. qpass converts "
        f"{', '.join(sorted(CONVERTERS))}; any other default-domain op that has an ONNX function body or an "
        "onnx.reference implementation imports as a float island (onnx_node)")


def _declared_dtype(info: onnx.ValueInfoProto) -> Optional[str]:
    """The IR dtype a graph input or output declares, or None when it declares none."""
    return ONNX_TO_IR.get(info.type.tensor_type.elem_type) if info.type.HasField("tensor_type") else None


def _dims_text(dims: Optional[list]) -> str:
    return "unknown (no shape in the model)" if dims is None else repr(dims)


def _example_shape(dims: Optional[list]) -> list[int]:
    if dims is None:
        return [1, 3, 640, 640]
    return [d if isinstance(d, int) and d > 0 else (1 if i == 0 else 640) for i, d in enumerate(dims)]


class Importer:
    """Converts one ONNX graph; holds the constant environment and the IR graph being built."""

    def __init__(self, proto: onnx.ModelProto, source: str, input_shapes: dict, name: str,
                 constants: Optional[dict] = None):
        self.constants = constants or {}
        self.source = source
        self.model = _upgraded(proto, source, _opset(proto, source))
        self.opset = _opset(self.model, source)
        self.graph = Graph(sanitize_name(name))
        self.input_shapes = input_shapes
        self._operands: dict[str, Operand] = {}           # ONNX value name -> array or IR value
        self._array_names: dict[int, str] = {}            # id(array) -> IR name when materialized
        self._materialized: dict[tuple[int, Optional[str]], tuple[np.ndarray, Value]] = {}
        self._halves: dict[Value, Value] = {}             # f32 result -> its f16 graph output

    def run(self) -> Graph:
        """Convert the whole model; returns the verified graph without dead ops."""
        onnx_graph = self.model.graph
        _check_supported(onnx_graph, self.source, self.opset)
        for init in onnx_graph.initializer:
            try:
                self.bind_array(init.name, numpy_helper.to_array(init))
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise FrontendError(f"{self.source}: initializer '{init.name}' cannot be read ({e}); it may be "
                                    "corrupted or of an unknown element type. If the model keeps weights in "
                                    "external data files, pass its path so they load from beside it") from e
        self._add_inputs([v for v in onnx_graph.input if v.name not in self._operands])
        for proto in onnx_graph.node:
            self.convert(proto, self.opset)
        outputs: list[Value] = []
        for info in onnx_graph.output:
            if info.name not in self._operands:
                raise FrontendError(f"{self.source}: graph output '{info.name}' is produced by no node")
            operand = self._operands[info.name]
            value = operand if isinstance(operand, Value) else self.materialize(operand, info.name)
            value = self._named_output(value, sanitize_name(info.name), outputs)
            outputs.append(self._as_half(value) if _declared_dtype(info) == "f16" else value)
        self.graph.set_outputs(outputs)
        self.graph.remove_dead()
        return self.graph.verify()

    # ------------------------------------------------------------------ inputs
    def _add_inputs(self, infos: list[onnx.ValueInfoProto]) -> None:
        names = [info.name for info in infos]
        if not names:
            raise FrontendError(f"{self.source} has no inputs (every graph input is an initializer); qpass "
                                "compiles models that take at least one input")
        unknown = sorted(set(self.constants) - set(names))
        if unknown:
            raise FrontendError(
                f"constants names {', '.join(repr(n) for n in unknown)}, but the inputs of {self.source} are "
                f"{', '.join(repr(n) for n in names) or 'none'}; use those names")
        for info in [i for i in infos if i.name in self.constants]:
            dtype, dims = self._input_signature(info)
            value = np.asarray(self.constants[info.name], dtype=numpy_dtype(dtype))
            if dims is not None and (len(dims) != value.ndim or any(isinstance(d, int) and d > 0 and d != s
                                                                    for d, s in zip(dims, value.shape))):
                raise FrontendError(f"constants['{info.name}'] has shape {list(value.shape)}, but the model "
                                    f"declares input '{info.name}' with shape {dims}")
            self.bind_array(info.name, value)
        infos = [i for i in infos if i.name not in self.constants]
        names = [info.name for info in infos]
        unknown = sorted(set(self.input_shapes) - set(names))
        if unknown:
            raise FrontendError(
                f"input_shapes names {', '.join(repr(n) for n in unknown)}, but the inputs of {self.source} "
                f"are {', '.join(repr(n) for n in names) or 'none'}; use those names")
        dynamic = []
        for info in infos:
            dtype, dims = self._input_signature(info)
            shape = self._fixed_shape(info.name, dims)
            if shape is None:
                dynamic.append((info.name, dims))
            else:
                # Input names are what users pass (--input-shape, calibration files): keep them if valid.
                name = self.graph.fresh_name(info.name if _VALID_NAME.match(info.name) else sanitize_name(info.name))
                value = self.graph.add_input(name, TensorType(shape, dtype))
                if dtype == "f16":   # a float16 model computes in f32 (see _bind); its interface stays f16
                    value = self.graph.add_op("cast", [value], {"to": "f32"}, names=[name + ".f32"]).output
                self._bind(info.name, value)
        if dynamic:
            described = "; ".join(f"input '{n}' has shape {_dims_text(d)}" for n, d in dynamic)
            cli = " ".join(f"--input-shape {n}={'x'.join(map(str, _example_shape(d)))}" for n, d in dynamic)
            python = ", ".join(f"'{n}': {tuple(_example_shape(d))}" for n, d in dynamic)
            raise FrontendError(
                f"{self.source}: {described}. qpass compiles static shapes, so every symbolic or unknown "
                f"dimension must be fixed: pass {cli} (CLI) or input_shapes={{{python}}} (Python), with the "
                "sizes you will run the model at")

    def _input_signature(self, info: onnx.ValueInfoProto) -> tuple[str, Optional[list]]:
        """The IR dtype of input `info` and its dimensions as ONNX gives them (ints, names, '?')."""
        if not info.type.HasField("tensor_type"):
            raise FrontendError(f"{self.source}: input '{info.name}' is not a tensor; qpass imports tensor "
                                "inputs only")
        tensor = info.type.tensor_type
        if tensor.elem_type not in ONNX_TO_IR:
            kind = element_type_name(tensor.elem_type)
            raise FrontendError(f"{self.source}: input '{info.name}' has element type {kind}; qpass takes "
                                f"inputs of type {', '.join(ONNX_TO_IR.values())}")
        if not tensor.HasField("shape"):
            return ONNX_TO_IR[tensor.elem_type], None
        dims = [d.dim_param if d.HasField("dim_param") else d.dim_value if d.HasField("dim_value") else "?"
                for d in tensor.shape.dim]
        return ONNX_TO_IR[tensor.elem_type], dims

    def _fixed_shape(self, name: str, dims: Optional[list]) -> Optional[tuple[int, ...]]:
        """The static shape of input `name`: from input_shapes if given, else from the model (or None)."""
        given = self.input_shapes.get(name)
        if given is None:
            static = dims is not None and all(isinstance(d, int) and d > 0 for d in dims)
            return tuple(dims) if static else None
        try:
            shape = tuple(int(d) for d in given)
        except (TypeError, ValueError):
            shape = ()
        if not shape or any(d <= 0 for d in shape):
            raise FrontendError(f"input_shapes['{name}'] = {given!r} is not a full shape of positive sizes, "
                                "e.g. (1, 3, 640, 640)")
        if dims is not None:
            clash = len(dims) != len(shape) or any(isinstance(d, int) and d > 0 and d != s
                                                   for d, s in zip(dims, shape))
            if clash:
                raise FrontendError(
                    f"input_shapes['{name}'] = {list(shape)} contradicts the model, which declares input "
                    f"'{name}' with shape {dims}; give {len(dims)} dimensions and keep the fixed ones")
        return shape

    def _named_output(self, value: Value, name: str, earlier: list[Value]) -> Value:
        """`value` under the ONNX output's name, which users read results by; the name can differ when a
        node passed its operand through (Identity, a no-op Reshape or Cast): then the op computing it
        takes the name, so no pass can lose it by removing a pass-through op."""
        if value.name == name or self.graph.has_value(name):
            return value
        if value.is_constant or self.graph.producer(value) is None or any(v is value for v in earlier):
            return self.graph.add_op("identity", [value], names=[name]).output   # a graph input passed through
        self.graph.rename(value, name)
        return value

    def _as_half(self, value: Value) -> Value:
        """Float16 graph output `value` back in f16, under its name (the f32 result becomes '<name>.f32')."""
        if value.type.dtype != "f32":
            return value
        if value not in self._halves:   # the same value may be listed as two outputs
            name = value.name
            self.graph.rename(value, self.graph.fresh_name(name + ".f32"))
            self._halves[value] = self.graph.add_op("cast", [value], {"to": "f16"}, names=[name]).output
        return self._halves[value]

    # ------------------------------------------------------------------ converting nodes
    def convert(self, proto: onnx.NodeProto, opset: int) -> None:
        """Convert one node written in default-domain `opset`, binding its results: through its
        converter, else the fallbacks of onnx_fallback (an If decided now, the op's ONNX function
        body, an onnx_node)."""
        node = Node(self, proto, opset)
        convert = converter_for(proto)
        try:
            if convert is not None:
                try:
                    results = convert(node)
                except Unsupported:
                    if onnx_fallback.unsupported_reason(proto, opset) is not None:
                        raise
                    results = self._fallback(proto, node)
                    if results is None:
                        return
            elif proto.op_type == "If" and proto.domain in _DEFAULT_DOMAINS:
                results = onnx_fallback.inline_if(self, node)
            else:
                reason = onnx_fallback.unsupported_reason(proto, opset)
                if reason is not None:
                    raise node.fail(f"qpass cannot import it: {reason}")
                results = self._fallback(proto, node)
                if results is None:
                    return
        except QpassError:
            raise
        except Exception as e:  # a malformed node or a converter bug: say which node
            raise node.fail(f"converting it failed: {type(e).__name__}: {e}") from e
        results = list(results) if isinstance(results, (list, tuple)) else [results]
        for onnx_name, result in zip(proto.output, results):
            if onnx_name and result is not None:
                self._bind(onnx_name, result)

    def _fallback(self, proto: onnx.NodeProto, node: Node):
        """The node's ONNX function body converted (None: its results are bound), else an onnx_node."""
        body = onnx_fallback.function_body(proto, node)
        if body is not None:
            for inner in body[0]:
                self.convert(inner, body[1])
            return None
        return onnx_fallback.onnx_node(node)

    def bind_array(self, onnx_name: str, array: np.ndarray) -> None:
        """Bind ONNX value `onnx_name` to an import-time constant."""
        self._bind(onnx_name, array)

    # ------------------------------------------------------------------ the environment
    def _bind(self, onnx_name: str, operand: Operand) -> None:
        if isinstance(operand, np.ndarray) and operand.dtype == np.float16:
            # float16 constants (initializers, Constant nodes, casts of constants) become f32: the
            # model computes in f32, which quantization and every backend support; its f16 inputs
            # and outputs are cast at the boundary (_add_inputs, _as_half), so its interface stays.
            operand = operand.astype(np.float32)
        self._operands[onnx_name] = operand
        if isinstance(operand, np.ndarray):
            self._array_names.setdefault(id(operand), sanitize_name(onnx_name))

    def operand(self, onnx_name: str, node: Node) -> Operand:
        """The array or IR value of ONNX value `onnx_name`, read by `node`."""
        try:
            return self._operands[onnx_name]
        except KeyError:
            raise FrontendError(
                f"{node.where} reads '{onnx_name}', which no earlier node produces: either the model is not "
                "topologically sorted, or it reads an optional output that qpass does not compute "
                "(e.g. BatchNormalization running statistics, MaxPool indices)") from None

    def materialize(self, array: np.ndarray, hint: str, dtype: Optional[str] = None,
                    quant: Optional[QuantParams] = None) -> Value:
        """An IR constant for `array` (in `dtype` when given), named after its ONNX value if it has one.

        The same array materialized twice gives the same constant; the cache keeps the array
        alive so its id cannot be reused by another array.
        """
        key = (id(array), dtype)
        if quant is None and key in self._materialized:
            return self._materialized[key][1]
        data = ir_array(array) if dtype is None else np.asarray(array)
        name = self.graph.fresh_name(self._array_names.get(id(array), sanitize_name(hint)))
        value = self.graph.add_constant(data, name, dtype=dtype, quant=quant)
        if quant is None:
            self._materialized[key] = (array, value)
        return value
