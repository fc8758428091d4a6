"""eliminate-identity: remove ops that return their operand unchanged."""

from qpass import Pass, PassResult, register_pass


def _is_identity(op) -> bool:
    (x,), (y,) = op.inputs[:1], op.outputs[:1]
    if y.type != x.type:
        return False
    if op.kind == "identity":
        return True
    if op.kind == "transpose":
        return list(op.attrs["perm"]) == list(range(x.type.rank))
    return op.kind in ("reshape", "cast")


@register_pass
class EliminateIdentity(Pass):
    """Drop identity ops, and reshapes, casts and transposes that leave their operand as it is; a graph
    output keeps its name (the operand takes it)."""

    name = "eliminate-identity"

    def run(self, graph, ctx):
        start = graph.revision
        for op in graph.ops:
            if not (op.inputs and len(op.outputs) == 1 and _is_identity(op)):
                continue
            x, y = op.inputs[0], op.outputs[0]
            if graph.is_output(y) and (graph.producer(x) is None or graph.is_output(x)):
                continue            # the operand's name is a graph input's or output's: it cannot take y's
            graph.replace_op(op, x, rename=graph.is_output(y))
        return PassResult(graph, graph.revision != start)
