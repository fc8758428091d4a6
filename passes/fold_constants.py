"""fold-constants: evaluate ops whose operands are all constants, at compile time."""

from qpass import Pass, PassResult, option, register_pass
from qpass.interpreter import run_op


@register_pass
class FoldConstants(Pass):
    """Replace each op whose operands are all constants by constants holding its results.

    Quantize/dequantize ops are kept by default: they mark where the model is quantized, and
    folding a weight's dequantize would throw that information away.
    """

    name = "fold-constants"
    fold_quant: bool = option(False, "also fold quantize/dequantize of constants")
    max_elements: int = option(1 << 24, "leave ops whose results exceed this many elements")

    def run(self, graph, ctx):
        start = graph.revision
        for op in graph.ops:
            if not op.inputs or not all(v.is_constant for v in op.inputs):
                continue
            if op.kind in ("quantize", "dequantize") and not self.fold_quant:
                continue
            if sum(v.type.size for v in op.outputs) > self.max_elements:
                continue
            results = run_op(op, [v.data for v in op.inputs])
            constants = [graph.add_constant(array, value.name + ".folded", dtype=value.type.dtype,
                                            quant=value.type.quant) for value, array in zip(op.outputs, results)]
            graph.replace_op(op, constants, rename=False)
        changed = graph.revision != start
        if changed:
            graph.remove_dead()
        return PassResult(graph, changed)
