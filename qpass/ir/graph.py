"""The IR graph: ops over SSA values, with networkx holding the use-def structure.

Passes and users talk to `Graph` methods only. Every value has exactly one definition: a graph
input, a constant (its data is a numpy array owned by the graph), or the output of one op.
Program order is a deterministic topological order (ties keep insertion order), so printed
graphs diff cleanly between passes and between runs.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any, Iterable, Optional, Sequence

import networkx as nx
import numpy as np

from qpass.errors import IRError
from qpass.ir.types import MissingData, QuantParams, TensorType, array_digest, freeze, numpy_dtype

_NAME_RE = re.compile(r"^[A-Za-z0-9_.]+$")


class Value:
    """An SSA value: a name, a `TensorType`, and for constants the data."""

    __slots__ = ("name", "type", "data", "_digest", "__weakref__")

    def __init__(self, name: str, type: TensorType, data=None):
        self.name = name
        self.type = type
        self.data = data
        self._digest = None

    @property
    def is_constant(self) -> bool:
        return self.data is not None

    @property
    def digest(self) -> str:
        """Content hash of a constant's data (equal data, equal digest)."""
        if self._digest is None:
            self._digest = self.data.digest if isinstance(self.data, MissingData) else array_digest(self.data)
        return self._digest

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Op:
    """One operation: `kind` (a registered op name), operand values, result values, attributes.

    `meta` holds bookkeeping that is not part of the IR's meaning (e.g. which pass created the op).
    """

    __slots__ = ("kind", "inputs", "outputs", "attrs", "meta", "_seq", "__weakref__")

    def __init__(self, kind: str, inputs: Sequence[Value], outputs: Sequence[Value], attrs: dict):
        self.kind = kind
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.attrs = dict(attrs)
        self.meta: dict[str, Any] = {}
        self._seq: Fraction = Fraction(0)

    @property
    def name(self) -> str:
        """An op is named after its first result."""
        return self.outputs[0].name

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise IRError(f"op '{self.name}' ({self.kind}) has {len(self.outputs)} results; use .outputs")
        return self.outputs[0]

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name}>"


def attrs_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key, x in a.items():
        y = b[key]
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
                    and x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()):
                return False
        elif type(x) is not type(y) or x != y:
            return False
    return True


class Graph:
    """A dataflow graph of ops over SSA values."""

    def __init__(self, name: str = "main"):
        self.name = name
        self._nx = nx.DiGraph()
        self._values: dict[str, Value] = {}
        self._producer: dict[str, Op] = {}
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self._next_seq = 0
        self._order_cache: Optional[list[Op]] = None
        self._position: dict[int, int] = {}          # id(op) -> index in _order_cache

    # ----------------------------------------------------------------- definitions
    def _define(self, value: Value) -> Value:
        if not _NAME_RE.match(value.name):
            raise IRError(f"'{value.name}' is not a valid value name: use letters, digits, '_' and '.'")
        if value.name in self._values:
            raise IRError(f"value name '%{value.name}' is defined twice; pick a fresh one with graph.fresh_name()")
        self._values[value.name] = value
        self._nx.add_node(value)
        self._order_cache = None
        return value

    def fresh_name(self, base: str) -> str:
        """`base` if unused, else `base_1`, `base_2`, ... (deterministic, torch.fx style)."""
        base = re.sub(r"[^A-Za-z0-9_.]", "_", base) or "v"
        if base not in self._values:
            return base
        stem, i = base, 1
        match = re.match(r"^(.*)_(\d+)$", base)
        if match:
            stem, i = match.group(1), int(match.group(2)) + 1
        while f"{stem}_{i}" in self._values:
            i += 1
        return f"{stem}_{i}"

    def add_input(self, name: str, type: TensorType) -> Value:
        value = self._define(Value(name, type))
        self.inputs.append(value)
        return value

    def add_constant(self, array, name: str = "const", dtype: Optional[str] = None,
                     quant: Optional[QuantParams] = None) -> Value:
        """A constant value holding `array` (frozen; converted to the storage dtype of `dtype`)."""
        if isinstance(array, MissingData):
            raise IRError("use add_constant_type for constants whose data is not loaded")
        array = np.asarray(array)
        type = TensorType.of(array, dtype)
        array = freeze(array.astype(numpy_dtype(type.dtype), copy=False))
        if quant is not None:
            type = TensorType(type.shape, type.dtype, quant)
        return self._define(Value(self.fresh_name(name), type, array))

    def add_constant_value(self, name: str, type: TensorType, data) -> Value:
        """A constant with an explicit type; `data` may be `MissingData` (parser use)."""
        if isinstance(data, np.ndarray):
            if data.shape != type.shape or data.dtype != type.numpy_dtype:
                raise IRError(f"constant %{name} data is {data.dtype}{list(data.shape)}, its type says {type}")
            data = freeze(data)
        return self._define(Value(name, type, data))

    def add_op(self, kind: str, inputs: Sequence[Value], attrs: Optional[dict] = None,
               types: Optional[Sequence[TensorType]] = None, names: Optional[Sequence[str]] = None,
               before: Optional[Op] = None) -> Op:
        """Create an op; result types are inferred unless given, names made fresh from `names`.

        `before` places the op just ahead of another in program order (rewrites use it so the
        replacement sits where the original was).
        """
        from qpass.ir.opdef import infer_types

        attrs = dict(attrs or {})
        for value in inputs:
            if self._values.get(value.name) is not value:
                raise IRError(f"op {kind}: operand %{value.name} does not belong to this graph")
        if types is None:
            types = infer_types(kind, [v.type for v in inputs], attrs)
        names = list(names or [kind] * len(types))
        if len(names) != len(types):
            raise IRError(f"op {kind}: {len(names)} names for {len(types)} results")
        outputs = [self._define(Value(self.fresh_name(n), t)) for n, t in zip(names, types)]
        op = Op(kind, inputs, outputs, attrs)
        op._seq = self._seq_before(before) if before is not None else Fraction(self._bump())
        self._nx.add_node(op)
        for value in op.inputs:
            self._nx.add_edge(value, op)
        for value in outputs:
            self._nx.add_edge(op, value)
            self._producer[value.name] = op
        self._order_cache = None
        return op

    def _bump(self) -> int:
        self._next_seq += 1
        return self._next_seq

    def _seq_before(self, anchor: Op) -> Fraction:
        earlier = [op._seq for op in self._nx if isinstance(op, Op) and op._seq < anchor._seq]
        return (max(earlier, default=anchor._seq - 1) + anchor._seq) / 2

    def set_outputs(self, values: Iterable[Value]) -> None:
        self.outputs = list(values)

    # ----------------------------------------------------------------- queries
    def value(self, name: str) -> Value:
        try:
            return self._values[name]
        except KeyError:
            raise IRError(f"no value named %{name} in graph @{self.name}") from None

    def has_value(self, name: str) -> bool:
        return name in self._values

    def values(self) -> list[Value]:
        return list(self._values.values())

    def constants(self) -> list[Value]:
        return [v for v in self._values.values() if v.is_constant]

    def producer(self, value: Value) -> Optional[Op]:
        return self._producer.get(value.name)

    def users(self, value: Value) -> list[Op]:
        """Ops that read `value`, in program order."""
        self.ops                                      # refreshes the order and positions if stale
        return sorted(self._nx.successors(value), key=lambda op: self._position[id(op)])

    def is_output(self, value: Value) -> bool:
        return any(v is value for v in self.outputs)

    @property
    def ops(self) -> list[Op]:
        """All ops in deterministic topological (program) order."""
        if self._order_cache is None:
            def key(node):
                if isinstance(node, Op):
                    return (node._seq, 1, "")
                producer = self._producer.get(node.name)
                return (producer._seq if producer else Fraction(-1), 0, node.name)
            try:
                order = nx.lexicographical_topological_sort(self._nx, key=key)
                self._order_cache = [n for n in order if isinstance(n, Op)]
                self._position = {id(op): i for i, op in enumerate(self._order_cache)}
            except nx.NetworkXUnfeasible:
                cycle = nx.find_cycle(self._nx)
                names = " -> ".join(f"%{n.name}" if isinstance(n, Value) else n.kind for n, _ in cycle)
                raise IRError(f"graph @{self.name} has a cycle ({names}); every value must be defined "
                              "before it is used") from None
        return list(self._order_cache)

    def find_ops(self, kind: str) -> list[Op]:
        return [op for op in self.ops if op.kind == kind]

    # ----------------------------------------------------------------- mutation
    def set_input(self, op: Op, index: int, value: Value) -> None:
        """Make operand `index` of `op` read `value`."""
        old = op.inputs[index]
        op.inputs[index] = value
        if not any(v is old for v in op.inputs):
            self._nx.remove_edge(old, op)
        self._nx.add_edge(value, op)
        self._order_cache = None

    def replace_all_uses(self, old: Value, new: Value, exclude: Optional[Op] = None) -> None:
        """Every op (but `exclude`) and graph output that reads `old` reads `new` instead."""
        if old is new:
            return
        for op in list(self._nx.successors(old)):
            if op is exclude:
                continue
            for i, v in enumerate(op.inputs):
                if v is old:
                    self.set_input(op, i, new)
        self.outputs = [new if v is old else v for v in self.outputs]

    def rename(self, value: Value, name: str) -> None:
        """Give `value` a new, unused name (rewrites use it to keep the names users know)."""
        if self._values.get(value.name) is not value:
            raise IRError(f"%{value.name} does not belong to this graph")
        if name == value.name:
            return
        if not _NAME_RE.match(name) or name in self._values:
            raise IRError(f"cannot rename %{value.name} to %{name}: the name is invalid or taken")
        del self._values[value.name]
        producer = self._producer.pop(value.name, None)
        value.name = name
        self._values[name] = value
        if producer is not None:
            self._producer[name] = producer
        self._order_cache = None

    def remove_op(self, op: Op) -> None:
        """Remove an op whose results are unused."""
        for value in op.outputs:
            if self._nx.out_degree(value) or self.is_output(value):
                raise IRError(f"cannot remove op '{op.name}' ({op.kind}): its result %{value.name} is "
                              "still used; replace its uses first")
        for value in op.outputs:
            self._nx.remove_node(value)
            del self._values[value.name]
            del self._producer[value.name]
        self._nx.remove_node(op)
        self._order_cache = None

    def remove_dead(self) -> int:
        """Remove ops and constants that no graph output depends on; returns how many went."""
        live = set()
        stack = list(self.outputs)
        while stack:
            node = stack.pop()
            if id(node) in live:
                continue
            live.add(id(node))
            stack.extend(self._nx.predecessors(node))
        removed = 0
        for op in reversed(self.ops):
            if id(op) not in live:
                self._nx.remove_nodes_from(op.outputs)
                for value in op.outputs:
                    del self._values[value.name]
                    del self._producer[value.name]
                self._nx.remove_node(op)
                removed += 1
        for value in self.constants():
            if id(value) not in live and not self._nx.out_degree(value):
                self._nx.remove_node(value)
                del self._values[value.name]
                removed += 1
        self._order_cache = None
        return removed

    # ----------------------------------------------------------------- whole-graph
    def copy(self) -> "Graph":
        """A structural copy (constant arrays are immutable and shared)."""
        from qpass.ir.text import clone
        return clone(self)

    def verify(self) -> "Graph":
        from qpass.ir.verify import verify
        verify(self)
        return self

    def __eq__(self, other) -> bool:
        from qpass.ir.text import graphs_equal
        return isinstance(other, Graph) and graphs_equal(self, other)

    __hash__ = None

    def __str__(self) -> str:
        from qpass.ir.text import print_graph
        return print_graph(self)

    def __repr__(self) -> str:
        return f"<Graph @{self.name}: {len(self.inputs)} inputs, {len(self.ops)} ops, {len(self.constants())} constants>"
