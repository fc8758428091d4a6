"""Text form of the IR: the parser that reads back what qpass.ir.printer writes, exactly.

    graph @main(%input: f32[1,3,224,224]) {
      %w = const f32[32,3,3,3] blob<9f86d081884c7d65>
      %b = const f32[2] [0.5, -1.25]
      %conv = conv2d(%input, %w) {dilations=[1,1], groups=1, pads=[1,1,1,1], strides=[2,2]} : f32[1,32,112,112]
      %q = quantize(%conv) : i8[1,32,112,112]{scale=0.0235, zp=-3}
      return %q
    }

Floats print as the shortest text that reads back to the same bits (NaNs keep their sign but
not their payload). Arrays of more than
`INLINE_LIMIT` elements print as `blob<digest>`; `save`/`load` keep their data in an .npz
beside the .qir. `#` starts a comment.
"""

from __future__ import annotations

import json
import math
import re
from typing import Optional

import numpy as np

from qpass.errors import IRError, ParseError
from qpass.ir.graph import Graph, Value
from qpass.ir.printer import INLINE_LIMIT, first_difference, format_type, print_graph, print_with_blobs  # noqa: F401
from qpass.ir.types import DTYPES, MissingData, QuantParams, TensorType, is_float, numpy_dtype

# =========================================================================== parsing
_TOKEN = re.compile(r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<digest>(?<=blob<)[0-9a-f]+)
  | (?P<value>%[A-Za-z0-9_.]+)
  | (?P<global>@[A-Za-z0-9_.\-]+)
  | (?P<number>[-+]?(?:inf|nan|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![A-Za-z0-9_]))
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[()\[\]{}<>,:=])
""", re.VERBOSE)


class _Parser:
    def __init__(self, text: str, blobs: Optional[dict], source: str):
        self.text, self.blobs, self.source = text, blobs, source
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m:
                self.fail(f"unexpected character {text[pos]!r}", pos)
            if m.lastgroup != "ws":
                self.tokens.append((m.lastgroup, m.group(), pos))
            pos = m.end()
        self.tokens.append(("eof", "", len(text)))
        self.i = 0

    def fail(self, message: str, pos: Optional[int] = None):
        if pos is None:
            pos = self.tokens[self.i][2]
        raise ParseError(message, self.text, pos, self.source)

    def peek(self, value: Optional[str] = None) -> bool:
        kind, text, _ = self.tokens[self.i]
        return text == value if value is not None else kind != "eof"

    def next(self, kind: Optional[str] = None, value: Optional[str] = None) -> str:
        k, text, pos = self.tokens[self.i]
        if (kind and k != kind) or (value is not None and text != value):
            want = repr(value) if value is not None else {"value": "a %value name", "ident": "a name",
                                                          "number": "a number", "global": "an @name",
                                                          "string": "a string"}.get(kind, kind)
            got = "end of input" if k == "eof" else repr(text)
            self.fail(f"expected {want}, found {got}")
        self.i += 1
        return text

    def accept(self, value: str) -> bool:
        if self.tokens[self.i][1] == value and self.tokens[self.i][0] in ("punct", "ident"):
            self.i += 1
            return True
        return False

    def comma_list(self, close: str, item):
        items = []
        if self.accept(close):
            return items
        while True:
            items.append(item())
            if self.accept(close):
                return items
            self.next("punct", ",")

    # --------------------------------------------------------------- pieces
    def number(self, floating: bool):
        pos = self.tokens[self.i][2]
        text = self.next("number")
        if floating:
            return float(text)
        if not re.fullmatch(r"[-+]?\d+", text):
            self.fail(f"expected an integer, found {text!r}", pos)
        return int(text)

    def array(self, dtype: str, shape: tuple):
        pos = self.tokens[self.i][2]
        if self.accept("blob"):
            self.next("punct", "<")
            digest = self.next("digest")
            self.next("punct", ">")
            if self.blobs is None:
                return MissingData(digest)
            if digest not in self.blobs:
                self.fail(f"blob<{digest}> is not in the constants file; was the .npz saved with this .qir?", pos)
            data = np.asarray(self.blobs[digest])
            if data.shape != tuple(shape) or data.dtype != numpy_dtype(dtype):
                self.fail(f"blob<{digest}> holds {data.dtype}{list(data.shape)}, expected {dtype}{list(shape)}", pos)
            return data
        self.next("punct", "[")
        items = self.comma_list("]", lambda: self.number(is_float(dtype)))
        size = math.prod(shape)
        if len(items) != size:
            self.fail(f"{len(items)} values given for {dtype}{list(shape)}, which holds {size}", pos)
        return self.stored(items, dtype, pos).reshape(shape)

    def stored(self, items: list, dtype: str, pos: int) -> np.ndarray:
        """`items` as an array of `dtype`'s storage type; a value out of its range is an error."""
        if is_float(dtype):
            with np.errstate(over="ignore"):
                array = np.array([np.array(x, dtype=numpy_dtype(dtype)) for x in items], dtype=numpy_dtype(dtype))
            if any(np.isinf(a) and not np.isinf(x) for a, x in zip(array, items)):
                self.fail(f"a value is beyond the range of {dtype}", pos)
            return array
        if dtype == "bool":                  # printed as 0 / 1
            if any(x not in (0, 1) for x in items):
                self.fail("a bool value must be 0 or 1", pos)
            return np.array(items, dtype=np.bool_)
        info = np.iinfo(numpy_dtype(dtype))
        if any(not info.min <= x <= info.max for x in items):
            self.fail(f"a value does not fit {dtype}", pos)
        return np.array(items, dtype=numpy_dtype(dtype))

    def type(self) -> TensorType:
        pos = self.tokens[self.i][2]
        dtype = self.next("ident")
        if dtype not in DTYPES:
            self.fail(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}", pos)
        self.next("punct", "[")
        dims = tuple(self.comma_list("]", lambda: self.number(False)))
        plain = self.make(lambda: TensorType(dims, dtype), pos)
        if not self.peek("{"):
            return plain
        shape = plain.shape
        self.next("punct", "{")
        fields: dict = {}

        def field():
            key_pos = self.tokens[self.i][2]
            key = self.next("ident")
            self.next("punct", "=")
            if key in ("axis", "bits", "group_size"):
                fields[key] = self.number(False)
            elif key in ("scale", "zp"):
                fields[key] = (self.i, None)
                self._skip_array_or_number()
            else:
                self.fail(f"unknown quantization field {key!r}; fields are axis, bits, group_size, scale, zp",
                          key_pos)
        self.comma_list("}", field)
        if "scale" not in fields or "zp" not in fields:
            self.fail("a quantization annotation needs scale= and zp=", pos)
        axis, group = fields.get("axis"), fields.get("group_size")
        if group is not None and group < 1:
            self.fail(f"group_size={group} must be positive", pos)
        if axis is None:
            qshape = ()
        elif not -len(shape) <= axis < len(shape):
            self.fail(f"axis {axis} is out of range for shape {list(shape)}", pos)
        elif group is None:
            qshape = (shape[axis],)
        else:
            qshape = tuple(-(-d // group) if i == axis % len(shape) else d for i, d in enumerate(shape))
        end = self.i
        arrays = {}
        for key, dt in (("scale", "f32"), ("zp", "i32")):
            self.i = fields[key][0]
            kind, _, value_pos = self.tokens[self.i]
            if axis is None and kind == "number":
                arrays[key] = self.stored([self.number(dt == "f32")], dt, value_pos)[0]
            else:
                arrays[key] = self.array(dt, qshape)
        self.i = end
        quant = self.make(lambda: QuantParams(arrays["scale"], arrays["zp"], axis, group, fields.get("bits")), pos)
        return TensorType(shape, dtype, quant)

    def _skip_array_or_number(self):
        if self.accept("blob"):
            self.next("punct", "<")
            self.next("digest")
            self.next("punct", ">")
        elif self.accept("["):
            self.comma_list("]", lambda: self.next("number"))
        else:
            self.next("number")

    def attr(self):
        kind, text, pos = self.tokens[self.i]
        if kind == "number":
            self.i += 1
            return int(text) if re.fullmatch(r"[-+]?\d+", text) else float(text)
        if kind == "string":
            try:
                value = json.loads(text)
            except ValueError as e:
                self.fail(f"invalid string literal: {e.msg}; strings are JSON strings (escape with \\)")
            self.i += 1
            return value
        if text in ("true", "false"):
            self.i += 1
            return text == "true"
        if text == "[":
            self.i += 1
            return self.comma_list("]", self.attr)
        self.fail(f"expected an attribute value (number, string, true/false or [list]), found {text!r}")

    # --------------------------------------------------------------- graph
    def graph(self) -> Graph:
        self.next("ident", "graph")
        g = Graph(self.next("global")[1:])
        self.next("punct", "(")

        def argument():
            pos = self.tokens[self.i][2]
            name = self.next("value")[1:]
            self.next("punct", ":")
            self.make(lambda: g.add_input(name, self.type()), pos)
        self.comma_list(")", argument)
        self.next("punct", "{")
        while not self.peek("return"):
            self.statement(g)
        self.next("ident", "return")
        outputs = [self.lookup(g)]
        while self.accept(","):
            outputs.append(self.lookup(g))
        g.set_outputs(outputs)
        self.next("punct", "}")
        if self.peek():
            self.fail("unexpected text after the end of the graph")
        return g

    def make(self, build, pos):
        """`build()`, its IRError reported at `pos` of the text."""
        try:
            return build()
        except IRError as e:
            self.fail(str(e), pos)

    def lookup(self, g: Graph) -> Value:
        pos = self.tokens[self.i][2]
        name = self.next("value")[1:]
        if not g.has_value(name):
            self.fail(f"%{name} is used before it is defined", pos)
        return g.value(name)

    def statement(self, g: Graph):
        pos = self.tokens[self.i][2]
        names = [self.next("value")[1:]]
        while self.accept(","):
            names.append(self.next("value")[1:])
        self.next("punct", "=")
        kind_pos = self.tokens[self.i][2]
        kind = self.next("ident")
        if kind == "const":
            if len(names) != 1:
                self.fail("a const defines exactly one value", pos)
            t = self.type()
            data = self.array(t.dtype, t.shape)
            self.make(lambda: g.add_constant_value(names[0], t, data), pos)
            return
        self.next("punct", "(")
        operands = self.comma_list(")", lambda: self.lookup(g))
        attrs = {}
        if self.accept("{"):
            def attribute():
                key = self.next("ident")
                self.next("punct", "=")
                attrs[key] = self.attr()
            self.comma_list("}", attribute)
        self.next("punct", ":")
        types = [self.type()]
        while self.accept(","):
            types.append(self.type())
        if len(types) != len(names):
            self.fail(f"{len(names)} results named but {len(types)} types given", pos)
        for name in names:
            if g.has_value(name):
                self.fail(f"%{name} is defined twice", pos)
        op = self.make(lambda: g.add_op(kind, operands, attrs, types=types, names=names), kind_pos)
        if [v.name for v in op.outputs] != names:
            self.fail(f"invalid result name among {', '.join('%' + n for n in names)}", pos)


def parse_graph(text: str, blobs: Optional[dict] = None, source: str = "<text>") -> Graph:
    """Read a graph printed by `print_graph`; `blobs` maps digests to the arrays of `blob<...>` refs."""
    return _Parser(text, blobs, source).graph()
