"""fold-batchnorm: fold inference batch normalization into the preceding convolution."""

import numpy as np

from qpass import Pass, PassResult, register_pass


@register_pass
class FoldBatchNorm(Pass):
    """conv2d -> batch_norm becomes one conv2d with rescaled weights and a shifted bias.

    w' = w * gamma / sqrt(var + eps) (per output channel), b' = (b - mean) * gamma / sqrt(var + eps) + beta.
    Only folds when the conv's weights and the norm's parameters are constants and the conv's
    result feeds nothing else. The arithmetic is done in float64 and rounded once to float32.
    """

    name = "fold-batchnorm"

    def run(self, graph, ctx):
        start = graph.revision
        for bn in graph.find_ops("batch_norm"):
            conv = graph.producer(bn.inputs[0])
            if conv is None or conv.kind != "conv2d" or len(graph.users(conv.output)) != 1 \
                    or graph.is_output(conv.output):
                continue
            params = bn.inputs[1:]
            if not all(v.is_constant for v in params + conv.inputs[1:]):
                continue
            gamma, beta, mean, var = (v.data.astype(np.float64) for v in params)
            factor = gamma / np.sqrt(var + bn.attrs["epsilon"])
            weight = conv.inputs[1].data.astype(np.float64) * factor[:, None, None, None]
            bias = conv.inputs[2].data.astype(np.float64) if len(conv.inputs) == 3 else 0.0
            bias = (bias - mean) * factor + beta
            dtype = conv.inputs[1].type.dtype
            w = graph.add_constant(weight, conv.inputs[1].name + ".bn", dtype=dtype)
            b = graph.add_constant(bias, conv.output.name + ".bias", dtype=dtype)
            fused = graph.add_op("conv2d", [conv.inputs[0], w, b], conv.attrs, names=[conv.output.name + ".bn"],
                                 before=conv)
            graph.replace_op(bn, fused, rename=False)
            graph.remove_op(conv)
        changed = graph.revision != start
        if changed:
            graph.remove_dead()
        return PassResult(graph, changed)
