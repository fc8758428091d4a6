"""`graph.verify()`: cheap structural and type checks whose messages name the op and the fix."""

from __future__ import annotations

from qpass.errors import IRError
from qpass.ir.graph import Graph
from qpass.ir.ops import OPS, check_result_types
from qpass.ir.text import format_type
from qpass.ir.types import MissingData


def problems(graph: Graph) -> list[str]:
    """Every problem found, one line each, naming the op or value."""
    found = []
    for v in graph.values():
        if v.type.quant is not None:
            reason = v.type.quant.check(v.type.shape, v.type.dtype)
            if reason:
                found.append(f"%{v.name}: its type {format_type(v.type)} has a bad quantization annotation: "
                             f"{reason}")
        if v.is_constant and not isinstance(v.data, MissingData):
            if v.data.shape != v.type.shape or v.data.dtype != v.type.numpy_dtype:
                found.append(f"%{v.name}: constant data is {v.data.dtype}{list(v.data.shape)} but its type "
                             f"says {v.type}; rebuild it with graph.add_constant")
            elif v.type.dtype in ("i4", "u4", "i8", "u8") and v.type.quant and v.type.quant.bits:
                lo, hi = (-(1 << (v.type.quant.bits - 1)), (1 << (v.type.quant.bits - 1)) - 1) \
                    if v.type.dtype[0] == "i" else (0, (1 << v.type.quant.bits) - 1)
                if v.data.size and (v.data.min() < lo or v.data.max() > hi):
                    found.append(f"%{v.name}: constant values exceed the {v.type.quant.bits}-bit range [{lo}, {hi}]")
            elif v.type.dtype in ("i4", "u4") and v.data.size:
                lo, hi = (-8, 7) if v.type.dtype == "i4" else (0, 15)
                if v.data.min() < lo or v.data.max() > hi:
                    found.append(f"%{v.name}: {v.type.dtype} constant values exceed [{lo}, {hi}]")
    try:
        ops = graph.ops
    except IRError as e:
        return found + [str(e)]
    for op in ops:
        where = f"%{op.name} = {op.kind}(...)"
        if op.kind not in OPS:
            found.append(f"{where}: unknown op kind; register it with qpass.ir.register_op or fix the name")
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
