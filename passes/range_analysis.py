"""range-analysis: calibrate the float activations' ranges (an analysis: the graph is unchanged)."""

from typing import Literal

import numpy as np

from qpass import Pass, PassResult, option, register_pass
from qpass.errors import PassError
from qpass.interpreter import interpret, run_op
from qpass.ir.opdef import Trait, op_def
from qpass.ir.types import is_float
from qpass.quant.calibration import check_samples, iterate
from qpass.quant.observers import OBSERVERS
from qpass.quant.params import activation_params, dequantize_array, quantize_array


def static_range(op):
    """The (lo, hi) range `op`'s definition guarantees for its result (None for an open end)."""
    rule = op_def(op.kind).static_range
    return rule(op.attrs) if rule else (None, None)


def layer_output_error(consumers, name, recorded, exact, lo, hi, bits) -> float:
    """Relative squared error of the consumers' outputs (against `exact`, per sample and consumer)
    when value `name` is fake-quantized (int8, asymmetric, like quantize's default) to [lo, hi] and
    their other operands stay float, summed over the recorded samples. The consumers run through the
    interpreter's kernels."""
    params = activation_params(lo, hi, "i8", bits=bits)
    error = 0.0
    for values, references in zip(recorded, exact):
        fake = dequantize_array(quantize_array(values[name], params, "i8"), params)
        for op, reference in zip(consumers, references):
            approx = run_op(op, [fake if v.name == name else v.data if v.is_constant else values[v.name]
                                 for v in op.inputs])[0]
            error += float(np.sum((approx - reference) ** 2) / max(np.sum(reference.astype(np.float64) ** 2), 1e-30))
    return error


@register_pass
class RangeAnalysis(Pass):
    """Run the calibration samples (ctx.calibration) through the interpreter and record,
    for every float activation, a range chosen by the observer `method`, capped by the ranges that
    ReLU/ReLU6/Clip/Sigmoid/Tanh guarantee. Results go to ctx.analyses.ranges[value name].

    method=layer-mse chooses the range of every input of a weighted op (conv, dense, matmul) by the
    error it causes in its consumers' outputs: min/max shrunk by each of `search-steps` clip ratios
    from `min-clip` to 1, keeping the one whose int8 fake-quantized input gives the least output
    error on the first `search-samples` samples; other activations use the mse observer."""

    name = "range-analysis"
    method: Literal["minmax", "moving-average", "percentile", "mse", "entropy", "layer-mse"] = option(
        "percentile", "observer: minmax, moving-average, percentile, mse, entropy or layer-mse")
    percentile: float = option(99.99, "for method=percentile: the central share of values kept")
    bits: int = option(8, "activation bits the range is chosen for (mse, entropy, layer-mse)")
    max_samples: int = option(0, "use at most this many samples (0: all)")
    search_samples: int = option(4, "for method=layer-mse: samples whose layer outputs are compared")
    search_steps: int = option(15, "for method=layer-mse: clip ratios tried per tensor")
    min_clip: float = option(0.3, "for method=layer-mse: the smallest clip ratio tried")
    quiet: bool = option(False, "no progress bar")

    def make_observer(self):
        if self.method == "percentile":
            return OBSERVERS["percentile"](self.percentile)
        return OBSERVERS["mse" if self.method == "layer-mse" else self.method]()

    def run(self, graph, ctx):
        samples = ctx.calibration
        if samples is None:
            raise PassError("range-analysis needs calibration data: pass calibration=... to qpass.quantize, "
                            "--calib PATH on the command line, or PassContext(calibration=samples)")
        samples = list(samples)
        check_samples(samples, graph)
        if self.max_samples:
            samples = samples[:self.max_samples]
        watched = {v.name for v in graph.inputs if is_float(v.type.dtype)}
        watched |= {v.name for op in graph.ops for v in op.outputs if is_float(v.type.dtype)}
        observers = {name: self.make_observer() for name in watched}
        searched = self.searched_values(graph, watched)
        extremes = {name: OBSERVERS["minmax"]() for name in searched}
        needed = {v.name for name in searched for op in graph.users(graph.value(name)) for v in op.inputs
                  if not v.is_constant}
        recorded = []

        def observe(value, array):
            if value.name in observers:
                observers[value.name].observe(array)
            if value.name in extremes:
                extremes[value.name].observe(array)
            if value.name in needed and len(recorded) <= self.search_samples:
                recorded[-1][value.name] = array

        for sample in iterate(samples, "range-analysis", quiet=self.quiet or ctx.quiet):
            recorded.append({})
            for value in graph.inputs:
                observe(value, sample[value.name])
            interpret(graph, sample, observe=observe)
        ranges = {}
        for name, observer in sorted(observers.items()):
            if not observer.seen:
                continue
            source = extremes.get(name, observer)
            lo, hi = source.range(self.bits, symmetric=False)
            producer = graph.producer(graph.value(name))
            if producer is not None:
                static_lo, static_hi = static_range(producer)
                lo = lo if static_lo is None else max(lo, static_lo)
                hi = hi if static_hi is None else min(hi, static_hi)
            if name in extremes:
                lo, hi = self.search(graph.users(graph.value(name)), name, recorded[:self.search_samples], lo, hi)
            ranges[name] = (float(lo), float(max(hi, lo)))
        ctx.analyses.ranges = ranges
        ctx.analyses.range_method = self.method
        return PassResult(graph, False)

    def searched_values(self, graph, watched) -> set:
        """The values whose range layer-mse searches: float inputs of weighted ops."""
        if self.method != "layer-mse":
            return set()
        return {op.inputs[0].name for op in graph.ops
                if op_def(op.kind).has(Trait.WEIGHTED) and op.inputs[0].name in watched}

    def search(self, consumers, name, recorded, lo, hi) -> tuple[float, float]:
        """The clip ratio of [lo, hi] (ties: the widest) with the least consumer output error."""
        exact = [[run_op(op, [v.data if v.is_constant else values[v.name] for v in op.inputs])[0]
                  for op in consumers] for values in recorded]
        best, best_error = (lo, hi), np.inf
        for ratio in np.linspace(1.0, self.min_clip, self.search_steps):
            candidate = (min(lo, 0.0) * ratio if lo < 0 else lo, hi * ratio if hi > 0 else hi)
            error = layer_output_error(consumers, name, recorded, exact, *candidate, self.bits)
            if error < best_error:
                best, best_error = candidate, error
        return best
