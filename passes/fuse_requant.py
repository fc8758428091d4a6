"""fuse-requant: fold a requantize into the epilogue of the integer op that feeds it."""

from qpass import Pass, PassResult, register_pass
from qpass.ir.opdef import Trait, has_trait

EPILOGUE = ("multiplier", "shift", "clamp", "out_dtype", "axis")


def is_identity(op) -> bool:
    """A requantize that maps every value to itself (same parameters, multiplier exactly 1, no clamp)."""
    x, y = op.inputs[0].type, op.output.type
    return (x == y and "clamp" not in op.attrs and len(op.attrs["multiplier"]) == 1
            and op.attrs["multiplier"][0] == 1 << (op.attrs["shift"][0] - 1))


@register_pass
class FuseRequant(Pass):
    """qconv2d/qdense -> requantize becomes one op with a requantizing epilogue (bias, rescale, output
    zero point and the ReLU/ReLU6 clamp, int32 accumulation inside); identity requantizes vanish.
    Integer results are unchanged bit for bit."""

    name = "fuse-requant"

    def run(self, graph, ctx):
        start = graph.revision
        for op in graph.find_ops("requantize"):
            source = op.inputs[0]
            producer = graph.producer(source)
            if is_identity(op):
                graph.replace_op(op, source, rename=False)
                continue
            if (producer is None or not has_trait(producer.kind, Trait.EPILOGUE) or "multiplier" in producer.attrs
                    or len(graph.users(source)) != 1 or graph.is_output(source)):
                continue
            attrs = {**producer.attrs, **{k: op.attrs[k] for k in EPILOGUE if k in op.attrs}}
            fused = graph.add_op(producer.kind, producer.inputs, attrs, types=[op.output.type],
                                 names=[op.output.name + ".fused"], before=producer)
            graph.replace_op(op, fused)
            graph.remove_op(producer)
        return PassResult(graph, graph.revision != start)
