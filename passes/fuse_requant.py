"""fuse-requant: fold a requantize into the epilogue of the integer op that feeds it."""

from qpass import Pass, PassResult, register_pass

PRODUCERS = {"qconv2d", "qdense"}
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
        changed = False
        for op in graph.find_ops("requantize"):
            source = op.inputs[0]
            producer = graph.producer(source)
            if is_identity(op):
                graph.replace_all_uses(op.output, source)
                graph.remove_op(op)
                changed = True
                continue
            if (producer is None or producer.kind not in PRODUCERS or "multiplier" in producer.attrs
                    or len(graph.users(source)) != 1 or graph.is_output(source)):
                continue
            attrs = {**producer.attrs, **{k: op.attrs[k] for k in EPILOGUE if k in op.attrs}}
            name = op.output.name
            fused = graph.add_op(producer.kind, producer.inputs, attrs, types=[op.output.type], names=[name + ".fused"],
                                 before=producer)
            fused.meta["from"] = [producer.name, op.name]
            graph.replace_all_uses(op.output, fused.output)
            graph.remove_op(op)
            graph.remove_op(producer)
            graph.rename(fused.output, name)
            changed = True
        return PassResult(graph, changed)
