"""The IR's text printer: deterministic, byte for byte (see qpass.ir.text for the format and the
parser that reads it back)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Optional

import numpy as np

from qpass.errors import IRError
from qpass.ir.types import MissingData, TensorType, digest_of, is_float

if TYPE_CHECKING:                      # Graph prints itself through this module
    from qpass.ir.graph import Graph

INLINE_LIMIT = 16


class _Printer:
    def __init__(self):
        self.blobs: dict[str, np.ndarray] = {}

    def scalar(self, x, floating: bool) -> str:
        if not floating:
            return str(int(x))
        if np.isnan(x):                       # NaN keeps its sign; payload bits are not kept
            return "-nan" if np.signbit(x) else "nan"
        return str(x) if isinstance(x, np.floating) else repr(float(x))

    def array(self, data, dtype: str) -> str:
        if isinstance(data, MissingData):
            return f"blob<{data.digest}>"
        if data.size > INLINE_LIMIT:
            digest = digest_of(data)
            self.blobs[digest] = data
            return f"blob<{digest}>"
        floating = is_float(dtype)
        return "[" + ", ".join(self.scalar(x, floating) for x in data.reshape(-1)) + "]"

    def type(self, t: TensorType) -> str:
        text = f"{t.dtype}[{','.join(map(str, t.shape))}]"
        q = t.quant
        if q is None:
            return text
        parts = []
        if q.axis is not None:
            parts.append(f"axis={q.axis}")
        if q.bits is not None:
            parts.append(f"bits={q.bits}")
        if q.group_size is not None:
            parts.append(f"group_size={q.group_size}")
        if q.axis is None and not isinstance(q.scale, MissingData) and not isinstance(q.zero_point, MissingData):
            parts.append(f"scale={self.scalar(q.scale[()], True)}")
            parts.append(f"zp={int(q.zero_point[()])}")
        else:
            parts.append(f"scale={self.array(q.scale, 'f32')}")
            parts.append(f"zp={self.array(q.zero_point, 'i32')}")
        return text + "{" + ", ".join(parts) + "}"

    def attr(self, value) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return str(value)
        if isinstance(value, float):
            return repr(value)
        if isinstance(value, str):
            return json.dumps(value)
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(self.attr(v) for v in value) + "]"
        raise IRError(f"attribute value {value!r} of type {type(value).__name__} cannot be printed; "
                      "attributes are bool, int, float, str or lists of them")

    def graph(self, g: Graph) -> str:
        args = ", ".join(f"%{v.name}: {self.type(v.type)}" for v in g.inputs)
        lines = [f"graph @{g.name}({args}) {{"]
        for v in g.constants():
            lines.append(f"  %{v.name} = const {self.type(v.type)} {self.array(v.data, v.type.dtype)}")
        for op in g.ops:
            results = ", ".join(f"%{v.name}" for v in op.outputs)
            operands = ", ".join(f"%{v.name}" for v in op.inputs)
            attrs = ""
            if op.attrs:
                attrs = " {" + ", ".join(f"{k}={self.attr(op.attrs[k])}" for k in sorted(op.attrs)) + "}"
            types = ", ".join(self.type(v.type) for v in op.outputs)
            lines.append(f"  {results} = {op.kind}({operands}){attrs} : {types}")
        lines.append("  return " + ", ".join(f"%{v.name}" for v in g.outputs))
        lines.append("}")
        return "\n".join(lines) + "\n"


def print_graph(graph: Graph) -> str:
    """The text form of `graph` (byte-for-byte deterministic)."""
    return _Printer().graph(graph)


def print_with_blobs(graph: Graph) -> tuple[str, dict[str, np.ndarray]]:
    """The text form plus the arrays it references by digest (for an .npz beside it)."""
    printer = _Printer()
    return printer.graph(graph), printer.blobs


def format_type(t: TensorType) -> str:
    return _Printer().type(t)



def first_difference(a: Graph, b: Graph) -> Optional[str]:
    """A short description of where two graphs' texts first differ (for test failures)."""
    la, lb = print_graph(a).splitlines(), print_graph(b).splitlines()
    for i, (x, y) in enumerate(zip(la, lb)):
        if x != y:
            return f"line {i + 1}:\n- {x}\n+ {y}"
    if len(la) != len(lb):
        return f"line {min(len(la), len(lb)) + 1}: one graph is longer"
    return None
