"""Quantization support shared by the built-in passes: observers, parameter choice, calibration data."""

from qpass.ir.opdef import Trait, op_def


def is_float_layer(op) -> bool:
    """A float op whose operand 1 is a weight with output channels on axis 0 (conv2d, dense): the
    ops whose weights `quantize` fake-quantizes."""
    d = op_def(op.kind)
    return d.has(Trait.WEIGHTED) and not d.has(Trait.INTEGER)


def quantized_weight(graph, op):
    """The integer-typed value behind a conv/dense weight that is fake-quantized, or None.

    The weight operand must be `dequantize(q)` where q is `quantize(float constant)` (written by
    the quantize pass) or an integer constant (an imported QDQ model).
    """
    if not is_float_layer(op):
        return None
    dq = graph.producer(op.inputs[1])
    if dq is None or dq.kind != "dequantize":
        return None
    source = dq.inputs[0]
    producer = graph.producer(source)
    if producer is None:
        return source if source.is_constant else None
    return source if producer.kind == "quantize" and producer.inputs[0].is_constant else None

def set_bias(graph, op, bias, name: str) -> None:
    """Give conv/dense `op` the constant `bias` (named `name`); an op without a bias operand is
    rebuilt with one, keeping its result's name."""
    constant = graph.add_constant(bias, name)
    if len(op.inputs) == 3:
        graph.set_input(op, 2, constant)
        return
    replacement = graph.add_op(op.kind, [*op.inputs, constant], op.attrs, types=[op.output.type],
                               names=[op.name + ".biased"], before=op)
    result = op.output.name
    graph.replace_all_uses(op.output, replacement.output)
    graph.remove_op(op)
    graph.rename(replacement.output, result)

