"""range-analysis: calibrate the float activations' ranges (an analysis: the graph is unchanged)."""

from typing import Literal

from qpass import Pass, PassResult, option, register_pass
from qpass.errors import PassError
from qpass.interpreter import interpret
from qpass.ir.opdef import op_def
from qpass.ir.types import is_float
from qpass.quant.calibration import check_samples, iterate
from qpass.quant.observers import OBSERVERS


def static_range(op):
    """The (lo, hi) range `op`'s definition guarantees for its result (None for an open end)."""
    rule = op_def(op.kind).static_range
    return rule(op.attrs) if rule else (None, None)


@register_pass
class RangeAnalysis(Pass):
    """Run the calibration samples (ctx.calibration) through the interpreter and record,
    for every float activation, a range chosen by the observer `method`, capped by the ranges that
    ReLU/ReLU6/Clip/Sigmoid/Tanh guarantee. Results go to ctx.analyses.ranges[value name]."""

    name = "range-analysis"
    method: Literal["minmax", "moving-average", "percentile", "mse", "entropy"] = option(
        "percentile", "observer: minmax, moving-average, percentile, mse or entropy")
    percentile: float = option(99.99, "for method=percentile: the central share of values kept")
    bits: int = option(8, "activation bits the range is chosen for (mse, entropy)")
    max_samples: int = option(0, "use at most this many samples (0: all)")
    quiet: bool = option(False, "no progress bar")

    def make_observer(self):
        if self.method == "percentile":
            return OBSERVERS["percentile"](self.percentile)
        return OBSERVERS[self.method]()

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

        def observe(value, array):
            if value.name in observers:
                observers[value.name].observe(array)

        for sample in iterate(samples, "range-analysis", quiet=self.quiet or ctx.quiet):
            for value in graph.inputs:
                observe(value, sample[value.name])
            interpret(graph, sample, observe=observe)
        ranges = {}
        for name, observer in sorted(observers.items()):
            if not observer.seen:
                continue
            lo, hi = observer.range(self.bits, symmetric=False)
            producer = graph.producer(graph.value(name))
            if producer is not None:
                static_lo, static_hi = static_range(producer)
                lo = lo if static_lo is None else max(lo, static_lo)
                hi = hi if static_hi is None else min(hi, static_hi)
            ranges[name] = (float(lo), float(max(hi, lo)))
        ctx.analyses.ranges = ranges
        ctx.analyses.range_method = self.method
        return PassResult(graph, False)
