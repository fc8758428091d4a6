"""correct-bias: empirical bias correction (Nagel et al., 2019/2021) for fake-quantized weights."""

from __future__ import annotations

import numpy as np

from qpass import Pass, PassResult, option, register_pass
from qpass.errors import PassError
from qpass.interpreter import evaluate, interpret
from qpass.quant import is_float_layer, quantized_weight, set_bias
from qpass.quant.calibration import iterate

def weight_error(graph, op):
    """w - dequantize(quantize(w)) for a layer whose weight is fake-quantized from a float constant."""
    source = quantized_weight(graph, op)
    q = graph.producer(source) if source is not None else None
    if q is None:                                     # an integer constant: the float weight is gone
        return None
    w = q.inputs[0].data
    (rounded,) = evaluate("dequantize", evaluate("quantize", [w], types=[q.output.type]), input_types=[q.output.type])
    return (w.astype(np.float64) - rounded).astype(np.float32)


@register_pass
class CorrectBias(Pass):
    """Fold the expected output shift that weight rounding causes into each conv/dense bias.

    For every layer with fake-quantized weights, E[op(x, w - w_q)] per output channel is measured
    on the calibration data, x being the layer's input in the quantized model, and added to the
    bias. Run it after `quantize` (and `assign-bitwidth`), before `fold-fake-quant`.
    """

    name = "correct-bias"
    samples: int = option(16, "calibration samples to average over")
    quiet: bool = option(False, "no progress bar")

    def run(self, graph, ctx):
        samples = ctx.calibration
        if not samples:
            raise PassError("correct-bias measures the output shift on calibration data; none was given")
        layers = {}
        for op in graph.ops:
            if is_float_layer(op):
                error = weight_error(graph, op)
                if error is not None and np.any(error):
                    layers.setdefault(op.inputs[0].name, []).append((op, error))
        if not layers:
            return PassResult(graph, False)
        sums = {id(op): 0.0 for ops in layers.values() for op, _ in ops}

        def observe(value, array):
            for op, error in layers.get(value.name, ()):
                inputs = [array, error]
                (shift,) = evaluate(op.kind, inputs, op.attrs)
                axes = tuple(i for i in range(shift.ndim) if i != (1 if op.kind == "conv2d" else shift.ndim - 1))
                sums[id(op)] = sums[id(op)] + shift.astype(np.float64).mean(axis=axes)

        used = list(samples)[:self.samples]
        for sample in iterate(used, "correct-bias", self.quiet or ctx.quiet):
            for value in graph.inputs:
                observe(value, sample[value.name])
            interpret(graph, sample, observe=observe)
        for ops in layers.values():
            for op, _ in ops:
                correction = sums[id(op)] / len(used)
                bias = op.inputs[2].data.astype(np.float64) if len(op.inputs) == 3 else 0.0
                set_bias(graph, op, (bias + correction).astype(np.float32), op.name + ".bias_corrected")
        graph.remove_dead()
        return PassResult(graph, True)
