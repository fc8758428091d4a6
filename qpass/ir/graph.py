"""The IR graph: ops over SSA values.

Passes and users talk to `Graph` methods only. Every value has exactly one definition: a graph
input, a constant (its data is a numpy array owned by the graph), or the output of one op.
Program order is a deterministic topological order (ties keep insertion order), so printed
graphs diff cleanly between passes and between runs.

Order is kept incrementally: ops sit in a linked list ordered by insertion key (appended at the
end, or spliced in just ahead of another op), each value knows its readers, and every mutation
bumps `graph.revision`, so a pass or a rewrite driver can tell whether anything changed.
"""

from __future__ import annotations

import heapq
import re
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np

from qpass.errors import IRError
from qpass.ir.types import MissingData, QuantParams, TensorType, array_digest, digest_of, freeze, numpy_dtype

_NAME_RE = re.compile(r"^[A-Za-z0-9_.]+$")
# Room between neighbouring insertion keys: this many inserts at one place before a relabelling.
_KEY_GAP = 1 << 20


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
        """Whether the value is a constant (it has data)."""
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

    __slots__ = ("kind", "inputs", "outputs", "attrs", "meta", "_key", "_prev", "_next", "_owner", "__weakref__")

    def __init__(self, kind: str, inputs: Sequence[Value], outputs: Sequence[Value], attrs: dict):
        self.kind = kind
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.attrs = dict(attrs)
        self.meta: dict[str, Any] = {}
        self._key = 0                                  # insertion key: positive, unique in its graph
        self._prev: Optional[Op] = None                # neighbours in insertion-key order
        self._next: Optional[Op] = None
        self._owner: Optional[Graph] = None

    @property
    def name(self) -> str:
        """An op is named after its first result."""
        return self.outputs[0].name

    @property
    def output(self) -> Value:
        """The single result (an error for a multi-result op)."""
        if len(self.outputs) != 1:
            raise IRError(f"op '{self.name}' ({self.kind}) has {len(self.outputs)} results; use .outputs")
        return self.outputs[0]

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name}>"


def attrs_equal(a: dict, b: dict) -> bool:
    """Equal attribute dicts: same keys, values of the same type and equal (arrays by content)."""
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
        self._values: dict[str, Value] = {}
        self._producer: dict[str, Op] = {}
        self._readers: dict[Value, dict[Op, None]] = {}    # value -> the ops reading it (an ordered set)
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self._first: Optional[Op] = None
        self._last: Optional[Op] = None
        # Whether insertion-key order is itself topological (then it is program order); only a
        # rewiring can make an op read a value defined after it.
        self._keys_topological = True
        self._order: Optional[list[Op]] = None
        self._position: Optional[dict[Op, int]] = None      # program order index, kept when keys are not it
        self._revision = 0

    @property
    def revision(self) -> int:
        """A counter that every mutation of the graph bumps (compare two readings to see a change)."""
        return self._revision

    def _changed(self) -> None:
        self._revision += 1

    # ----------------------------------------------------------------- definitions
    def _define(self, value: Value) -> Value:
        if not _NAME_RE.match(value.name):
            raise IRError(f"'{value.name}' is not a valid value name: use letters, digits, '_' and '.'")
        if value.name in self._values:
            raise IRError(f"value name '%{value.name}' is defined twice; pick a fresh one with graph.fresh_name()")
        self._values[value.name] = value
        self._readers[value] = {}
        self._changed()
        return value

    def _forget(self, value: Value) -> None:
        del self._values[value.name]
        del self._readers[value]
        self._producer.pop(value.name, None)

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
        """A new graph input, after the existing ones."""
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
        if before is not None and before._owner is not self:
            raise IRError(f"op {kind}: the op to insert it before, {before!r}, is not in this graph")
        if types is None:
            types = infer_types(kind, [v.type for v in inputs], attrs)
        names = list(names or [kind] * len(types))
        if len(names) != len(types):
            raise IRError(f"op {kind}: {len(names)} names for {len(types)} results")
        outputs = [self._define(Value(self.fresh_name(n), t)) for n, t in zip(names, types)]
        op = Op(kind, inputs, outputs, attrs)
        self._link(op, before)
        for value in op.inputs:
            self._readers[value][op] = None
            self._note_read(op, value)
        for value in outputs:
            self._producer[value.name] = op
        return op

    def set_outputs(self, values: Iterable[Value]) -> None:
        """Make `values` the graph's results, in order."""
        values = list(values)
        if len(values) != len(self.outputs) or any(a is not b for a, b in zip(values, self.outputs)):
            self.outputs = values
            self._changed()

    # ----------------------------------------------------------------- program order
    def _link(self, op: Op, before: Optional[Op]) -> None:
        """Put `op` into insertion-key order: last, or just ahead of `before`."""
        op._owner = self
        if before is None:
            op._key = (self._last._key if self._last else 0) + _KEY_GAP
            op._prev, self._last = self._last, op
            if op._prev is None:
                self._first = op
            else:
                op._prev._next = op
        else:
            low = before._prev._key if before._prev else 0
            if before._key - low < 2:
                self._relabel()
                low = before._prev._key if before._prev else 0
            op._key = (low + before._key) // 2
            op._prev, op._next = before._prev, before
            if op._prev is None:
                self._first = op
            else:
                op._prev._next = op
            before._prev = op
        self._order = self._position = None
        self._changed()

    def _unlink(self, op: Op) -> None:
        if op._prev is None:
            self._first = op._next
        else:
            op._prev._next = op._next
        if op._next is None:
            self._last = op._prev
        else:
            op._next._prev = op._prev
        op._prev = op._next = op._owner = None
        self._order = self._position = None
        self._changed()

    def _relabel(self) -> None:
        """Spread the insertion keys evenly again (same order), when a gap has run out."""
        key, op = 0, self._first
        while op is not None:
            key += _KEY_GAP
            op._key, op = key, op._next

    def _note_read(self, op: Op, value: Value) -> None:
        """Remember when `op` now reads a value defined after it in insertion order."""
        producer = self._producer.get(value.name)
        if producer is not None and producer._key >= op._key:
            self._keys_topological = False
        if not self._keys_topological:
            self._order = self._position = None

    def _key_order(self) -> list[Op]:
        order, op = [], self._first
        while op is not None:
            order.append(op)
            op = op._next
        return order

    def _keys_are_topological(self, order: list[Op]) -> bool:
        producer = self._producer
        for op in order:
            for value in op.inputs:
                source = producer.get(value.name)
                if source is not None and source._key >= op._key:
                    return False
        return True

    def _sorted_topologically(self) -> list[Op]:
        """Lexicographic topological order: of the nodes whose definitions are all placed, the one
        with the smallest key comes next; an op's key is its insertion key, a value's that of its
        producer (graph inputs and constants first) and then its name, just ahead of the op."""
        ops = self._key_order()
        remaining = {op: len({id(v) for v in op.inputs}) for op in ops}      # operands not yet placed
        heap: list = [((-1, 0, v.name), v) for v in self._values.values() if v.name not in self._producer]
        heapq.heapify(heap)
        order: list[Op] = []
        while heap:
            _, node = heapq.heappop(heap)
            if isinstance(node, Op):
                order.append(node)
                for value in node.outputs:
                    heapq.heappush(heap, ((node._key, 0, value.name), value))
                continue
            for reader in self._readers[node]:
                remaining[reader] -= 1
                if not remaining[reader]:
                    heapq.heappush(heap, ((reader._key, 1, ""), reader))
        if len(order) < len(ops):
            raise IRError(self._cycle_message(set(ops) - set(order)))
        return order

    def _cycle_message(self, stuck: set) -> str:
        """Name one cycle among `stuck`, the ops that never became ready."""
        op, path = min(stuck, key=lambda o: o._key), []
        while op not in path:
            path.append(op)
            value = next(v for v in op.inputs if self._producer.get(v.name) in stuck)
            path.append(value)
            op = self._producer[value.name]
        cycle = list(reversed(path[path.index(op):]))
        names = " -> ".join(f"%{n.name}" if isinstance(n, Value) else n.kind for n in cycle)
        return (f"graph @{self.name} has a cycle ({names}); every value must be defined "
                "before it is used")

    def _ensure_order(self) -> list[Op]:
        if self._order is None:
            order = self._key_order()
            if not self._keys_topological and self._keys_are_topological(order):
                self._keys_topological = True
            if self._keys_topological:
                self._order = order
            else:
                self._order = self._sorted_topologically()
                self._position = {op: i for i, op in enumerate(self._order)}
        return self._order

    # ----------------------------------------------------------------- queries
    def value(self, name: str) -> Value:
        """The value called `name` (an IRError naming the graph if there is none)."""
        try:
            return self._values[name]
        except KeyError:
            raise IRError(f"no value named %{name} in graph @{self.name}") from None

    def has_value(self, name: str) -> bool:
        """Whether a value called `name` is defined."""
        return name in self._values

    def has_op(self, op: Op) -> bool:
        """Whether `op` is in this graph (rewrites use it to skip ops an earlier rewrite removed)."""
        return op._owner is self

    def values(self) -> list[Value]:
        """Every value, in definition order."""
        return list(self._values.values())

    def constants(self) -> list[Value]:
        """The constant values, in definition order."""
        return [v for v in self._values.values() if v.is_constant]

    def producer(self, value: Value) -> Optional[Op]:
        """The op defining `value`; None for graph inputs and constants."""
        return self._producer.get(value.name)

    def users(self, value: Value) -> list[Op]:
        """Ops that read `value`, in program order."""
        readers = self._readers_of(value)
        if len(readers) < 2:
            return list(readers)
        if not self._keys_topological:
            self._ensure_order()
        if self._keys_topological:
            return sorted(readers, key=lambda op: op._key)
        return sorted(readers, key=self._position.__getitem__)

    def _readers_of(self, value: Value) -> dict[Op, None]:
        readers = self._readers.get(value)
        if readers is None or self._values.get(value.name) is not value:
            raise IRError(f"%{value.name} does not belong to graph @{self.name}")
        return readers

    def is_output(self, value: Value) -> bool:
        """Whether the graph returns `value`."""
        return any(v is value for v in self.outputs)

    @property
    def ops(self) -> list[Op]:
        """All ops in deterministic topological (program) order."""
        return list(self._ensure_order())

    def find_ops(self, kind: str) -> list[Op]:
        """The ops of `kind`, in program order."""
        return [op for op in self._ensure_order() if op.kind == kind]

    # ----------------------------------------------------------------- mutation
    def set_input(self, op: Op, index: int, value: Value) -> None:
        """Make operand `index` of `op` read `value`."""
        old = op.inputs[index]
        op.inputs[index] = value
        if not any(v is old for v in op.inputs):
            del self._readers[old][op]
        self._readers_of(value)[op] = None
        self._note_read(op, value)
        self._changed()

    def replace_all_uses(self, old: Value, new: Value, exclude: Optional[Op] = None) -> None:
        """Every op (but `exclude`) and graph output that reads `old` reads `new` instead."""
        if old is new:
            return
        for op in list(self._readers_of(old)):
            if op is exclude:
                continue
            for i, v in enumerate(op.inputs):
                if v is old:
                    self.set_input(op, i, new)
        self.set_outputs(new if v is old else v for v in self.outputs)

    def replace_op(self, op: Op, new: Union[Op, Value, Sequence[Value]], rename: bool = True) -> None:
        """Replace `op` by `new` (an op, a value, or one value per result): every use of a result
        reads its replacement, `op` is removed, and each replacement takes the name of the result
        it replaces (so names users know survive); `rename=False` keeps the replacements' names."""
        values = new.outputs if isinstance(new, Op) else [new] if isinstance(new, Value) else list(new)
        if len(values) != len(op.outputs):
            raise IRError(f"cannot replace op '{op.name}' ({op.kind}): {len(values)} values for "
                          f"{len(op.outputs)} results")
        names = [v.name for v in op.outputs]
        for old, value in zip(op.outputs, values):
            self.replace_all_uses(old, value)
        self.remove_op(op)
        if rename:
            for value, name in zip(values, names):
                self.rename(value, name)

    def retype(self, value: Value, type: TensorType) -> None:
        """Give `value` a new type (e.g. other quantization parameters); a constant keeps its
        storage, so its shape and dtype must stay."""
        self._readers_of(value)
        if value.is_constant and (type.shape != value.type.shape or type.dtype != value.type.dtype):
            raise IRError(f"cannot retype constant %{value.name} from {value.type} to {type}: its data "
                          "is stored as the first; add a new constant instead")
        if type != value.type:
            value.type = type
            self._changed()

    def set_attr(self, op: Op, key: str, value) -> None:
        """Set attribute `key` of `op` to `value`."""
        if op._owner is not self:
            raise IRError(f"{op!r} is not in graph @{self.name}")
        if key not in op.attrs or not attrs_equal({key: op.attrs[key]}, {key: value}):
            op.attrs[key] = value
            self._changed()

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
        if not self._keys_topological:
            self._order = self._position = None        # value names break ties in the full sort
        self._changed()

    def remove_op(self, op: Op) -> None:
        """Remove an op whose results are unused."""
        if op._owner is not self:
            raise IRError(f"cannot remove {op!r}: it is not in graph @{self.name}")
        for value in op.outputs:
            if self._readers[value] or self.is_output(value):
                raise IRError(f"cannot remove op '{op.name}' ({op.kind}): its result %{value.name} is "
                              "still used; replace its uses first")
        self._drop(op)

    def _drop(self, op: Op) -> None:
        for value in op.outputs:
            self._forget(value)
        for value in op.inputs:
            self._readers[value].pop(op, None)
        self._unlink(op)

    def remove_dead(self) -> int:
        """Remove ops and constants that no graph output depends on; returns how many went."""
        live = set()
        stack = list(self.outputs)
        while stack:
            node = stack.pop()
            if id(node) in live:
                continue
            live.add(id(node))
            if isinstance(node, Op):
                stack.extend(node.inputs)
            elif node.name in self._producer:
                stack.append(self._producer[node.name])
        removed = 0
        for op in reversed(self.ops):
            if id(op) not in live:
                self._drop(op)
                removed += 1
        for value in self.constants():
            if id(value) not in live and not self._readers[value]:
                self._forget(value)
                self._changed()
                removed += 1
        return removed

    # ----------------------------------------------------------------- whole-graph
    def copy(self) -> "Graph":
        """A structural copy (constant arrays are immutable and shared)."""
        out = Graph(self.name)
        for v in self.inputs:
            out.add_input(v.name, v.type)
        for v in self.constants():
            out.add_constant_value(v.name, v.type, v.data)
        for op in self.ops:
            new = out.add_op(op.kind, [out.value(v.name) for v in op.inputs], op.attrs,
                             types=[v.type for v in op.outputs], names=[v.name for v in op.outputs])
            new.meta = dict(op.meta)
        out.set_outputs(out.value(v.name) for v in self.outputs)
        return out

    def verify(self) -> "Graph":
        """Raise IRError listing every structural or type problem; returns the graph."""
        from qpass.ir.verify import verify
        verify(self)
        return self

    def _structure(self):
        def typed(v: Value):
            return (v.name, v.type)
        return (self.name, [typed(v) for v in self.inputs], [v.name for v in self.outputs],
                [(typed(v), digest_of(v.data)) for v in self.constants()],
                [(op.kind, [v.name for v in op.inputs], [typed(v) for v in op.outputs]) for op in self.ops])

    def __eq__(self, other) -> bool:
        """Structural equality: names, types with annotations, constants by content, ops and attributes."""
        if not isinstance(other, Graph) or self._structure() != other._structure():
            return False
        return all(attrs_equal(x.attrs, y.attrs) for x, y in zip(self.ops, other.ops))

    __hash__ = None

    def __str__(self) -> str:
        from qpass.ir.printer import print_graph
        return print_graph(self)

    def __repr__(self) -> str:
        return f"<Graph @{self.name}: {len(self.inputs)} inputs, {len(self.ops)} ops, {len(self.constants())} constants>"
