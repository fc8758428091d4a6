"""`graph.verify()`: cheap structural and type checks whose messages name the op and the fix."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qpass.errors import IRError
from qpass.ir.opdef import OPS, check_result_types
from qpass.ir.printer import format_type
from qpass.ir.types import MissingData, dtype_range

if TYPE_CHECKING:                      # graph.py calls verify: importing it here would be a cycle
    from qpass.ir.graph import Graph, Value


def _value_problems(v: Value) -> list[str]:
    """Problems of one value's type annotation and constant data."""
    t = v.type
    reason = t.quant.check(t.shape, t.dtype) if t.quant is not None else None
    found = [f"%{v.name}: its type {format_type(t)} has a bad quantization annotation: {reason}"] if reason else []
    if not v.is_constant or isinstance(v.data, MissingData):
        return found
    if v.data.shape != t.shape or v.data.dtype != t.numpy_dtype:
        return found + [f"%{v.name}: constant data is {v.data.dtype}{list(v.data.shape)} but its type says {t}; "
                        "rebuild it with graph.add_constant"]
    bits = t.quant.bits if t.quant is not None and not reason else None
    if v.data.size and (t.dtype in ("i4", "u4") or (bits and t.dtype in ("i8", "u8"))):
        lo, hi = dtype_range(t.dtype, bits)
        if v.data.min() < lo or v.data.max() > hi:
            width = f"the {bits}-bit range" if bits else t.dtype
            found.append(f"%{v.name}: constant values exceed {width} [{lo}, {hi}]")
    return found


def problems(graph: Graph) -> list[str]:
    """Every problem found, one line each, naming the op or value."""
    found = [problem for v in graph.values() for problem in _value_problems(v)]
    try:
        ops = graph.ops
    except IRError as e:
        return found + [str(e)]
    for op in ops:
        where = f"%{op.name} = {op.kind}(...)"
        if op.kind not in OPS:
            found.append(f"{where}: unknown op kind; define it with qpass.ir.define_op or fix the name")
            continue
        stray = [v.name for v in op.inputs if not graph.has_value(v.name) or graph.value(v.name) is not v]
        if stray:
            found.append(f"{where}: operands {', '.join('%' + s for s in stray)} do not belong to this graph; "
                         "create values through the graph")
            continue
        try:
            reason = check_result_types(op.kind, [v.type for v in op.inputs], op.attrs,
                                        [v.type for v in op.outputs])
        except IRError as e:
            reason = str(e)
        except (ArithmeticError, LookupError, TypeError, ValueError) as e:
            # An inference rule that does not guard against these operands or attributes (e.g. parsed
            # from a hand-edited .qir): still a malformed op, not a crash.
            reason = (f"its operands or attributes do not fit {op.kind}: type inference failed with "
                      f"{type(e).__name__}: {e}; check the attributes and operand shapes")
        if reason:
            found.append(f"{where}: {reason}")
    if not graph.outputs:
        found.append(f"graph @{graph.name} returns nothing; call graph.set_outputs([...])")
    for v in graph.outputs:
        if not graph.has_value(v.name) or graph.value(v.name) is not v:
            found.append(f"return %{v.name}: the value does not belong to this graph")
    for v in graph.inputs:
        if graph.value(v.name) is not v:
            found.append(f"input %{v.name} is shadowed by another definition")
    return found


def verify(graph: Graph) -> None:
    """Raise IRError listing every problem, or return quietly."""
    found = problems(graph)
    if found:
        listing = "\n  ".join(found)
        raise IRError(f"graph @{graph.name} failed verification ({len(found)} problem"
                      f"{'s' if len(found) > 1 else ''}):\n  {listing}")
