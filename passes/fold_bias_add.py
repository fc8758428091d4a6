"""fold-bias-add: a constant added after a conv2d or dense becomes its bias."""

import numpy as np

from qpass import Pass, PassResult, register_pass


def channel_vector(op, constant) -> "np.ndarray | None":
    """`constant` as one value per output channel of conv2d/dense `op` when adding it to the result
    is adding a bias (it varies along the channel axis only), else None."""
    shape, data = op.output.type.shape, constant.data
    axis = 1 if op.kind == "conv2d" else len(shape) - 1
    if data.ndim > len(shape):
        return None
    padded = (1,) * (len(shape) - data.ndim) + data.shape
    if any(d != 1 for i, d in enumerate(padded) if i != axis) or padded[axis] not in (1, shape[axis]):
        return None
    return np.broadcast_to(data.reshape(-1), (shape[axis],))


@register_pass
class FoldBiasAdd(Pass):
    """conv2d/dense -> add(constant per output channel) becomes one op whose bias includes the
    constant (as exporters write MatMul + Add and Paddle writes Conv + Add), so the add does not
    stay a float op between integer layers. Only when the layer's result feeds nothing else; the
    sum is done in float64 and rounded once to float32."""

    name = "fold-bias-add"

    def run(self, graph, ctx):
        start = graph.revision
        for add in graph.find_ops("add"):
            for index in (0, 1):
                layer, other = graph.producer(add.inputs[index]), add.inputs[1 - index]
                if layer is None or layer.kind not in ("conv2d", "dense") or not other.is_constant \
                        or other.type.dtype != "f32" or not all(v.is_constant for v in layer.inputs[1:]) \
                        or len(graph.users(layer.output)) != 1 or graph.is_output(layer.output) \
                        or add.output.type != layer.output.type:
                    continue
                vector = channel_vector(layer, other)
                if vector is None:
                    continue
                bias = layer.inputs[2].data.astype(np.float64) if len(layer.inputs) == 3 else 0.0
                b = graph.add_constant(bias + vector, add.output.name + ".bias", dtype="f32")
                fused = graph.add_op(layer.kind, [*layer.inputs[:2], b], layer.attrs,
                                     names=[add.output.name + ".fused"], before=layer)
                graph.replace_op(add, fused)
                graph.remove_op(layer)
                break
        changed = graph.revision != start
        if changed:
            graph.remove_dead()
        return PassResult(graph, changed)
