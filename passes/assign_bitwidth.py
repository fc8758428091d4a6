"""assign-bitwidth: int8 or int4 weights per layer, by measured sensitivity, under a size budget."""

from __future__ import annotations

import contextlib
from fnmatch import fnmatch

import numpy as np

from qpass import Pass, PassResult, option, register_pass
from qpass.errors import PassError
from qpass.interpreter import interpret
from qpass.ir.types import TensorType
from qpass.quant import quantized_weight
from qpass.quant.calibration import iterate
from qpass.quant.params import dequantize_array, quantize_array, weight_params

class Layer:
    """A conv/dense whose weight is fake-quantized: quantize(float w) or an integer constant."""

    def __init__(self, graph, op, source):
        self.op = op
        self.quantize = graph.producer(source)          # quantize(float constant), or None
        self.value = source
        self.float_weight = (self.quantize.inputs[0].data if self.quantize is not None
                             else dequantize_array(source.data, source.type.quant))
        self.elements = int(self.float_weight.size)
        self.cost = 0.0
        self.bits = 8

    @staticmethod
    def find(graph):
        return [Layer(graph, op, source) for op in graph.ops
                if (source := quantized_weight(graph, op)) is not None]

    def int4_type(self) -> TensorType:
        old = self.value.type.quant
        params = weight_params(self.float_weight, "i4", old.granularity, axis=old.axis or 0, group_size=old.group_size,
                               clip="mse")
        return TensorType(self.value.type.shape, "i4", params)

    @contextlib.contextmanager
    def as_type(self, new: TensorType):
        """Temporarily give the weight another quantized type (for measuring; restored on exit, so
        the graph is the same afterwards and its revision does not count it)."""
        old_type, old_data = self.value.type, self.value.data
        self.value.type = new
        if self.quantize is None:
            self.value.data = quantize_array(self.float_weight, new.quant, new.dtype).astype(new.numpy_dtype)
        try:
            yield
        finally:
            self.value.type, self.value.data = old_type, old_data

    def commit(self, graph, new: TensorType) -> None:
        if self.quantize is not None:
            graph.retype(self.value, new)
        else:
            data = quantize_array(self.float_weight, new.quant, new.dtype)
            const = graph.add_constant(data, self.value.name + ".i4", dtype=new.dtype, quant=new.quant)
            graph.replace_all_uses(self.value, const)
        self.bits = 4


def output_change(outputs: dict, reference: dict) -> float:
    """Squared difference of every graph output from its reference."""
    return float(sum(np.sum((outputs[name] - value) ** 2) for name, value in reference.items()))


def solve_knapsack(costs: np.ndarray, savings: np.ndarray, required: float) -> np.ndarray:
    """Choose layers (x = 1: int4) saving at least `required` bytes at the least total cost (exact MILP)."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    if required <= 0:
        return np.zeros(len(costs), bool)
    result = milp(c=costs, constraints=LinearConstraint(savings[None, :], lb=required, ub=np.inf),
                  integrality=np.ones(len(costs)), bounds=Bounds(0, 1))
    if not result.success:
        raise PassError(f"assign-bitwidth: no int4/int8 choice meets the budget ({result.message})")
    return result.x > 0.5


@register_pass
class AssignBitwidth(Pass):
    """Measure each conv/dense layer's sensitivity — the squared change of the model's outputs when only
    that layer's weights go to int4 — and choose int4 layers minimizing the summed sensitivity while
    the weights fit the budget (an exact 0/1 knapsack solved as a MILP with scipy/HiGHS)."""

    name = "assign-bitwidth"
    budget: float = option(0.6, "weight bytes to keep, as a fraction of all-int8 weight bytes")
    size: int = option(0, "weight byte budget (overrides budget when > 0)")
    keep_int8: list[str] = option([], "op name patterns (fnmatch) that stay int8")
    samples: int = option(4, "calibration samples used to measure sensitivity")
    quiet: bool = option(False, "no progress bar")

    def run(self, graph, ctx):
        samples = ctx.calibration
        if not samples:
            raise PassError("assign-bitwidth measures sensitivity on calibration data; none was given")
        samples = list(samples)[:self.samples]
        layers = Layer.find(graph)
        if not layers:
            return PassResult(graph, False)
        int8_bytes = sum(layer.elements for layer in layers)
        target = self.size if self.size > 0 else self.budget * int8_bytes
        pinned = [any(fnmatch(layer.op.name, p) for p in self.keep_int8) for layer in layers]
        floor = sum(layer.elements / (1 if pin else 2) for layer, pin in zip(layers, pinned))
        if target < floor:
            raise PassError(f"assign-bitwidth: a budget of {target:.0f} bytes is below the smallest reachable "
                            f"size {floor:.0f} bytes ({floor / int8_bytes:.1%} of int8) with the layers kept "
                            "int8; raise the budget or keep fewer layers int8")
        reference = [interpret(graph, s) for s in samples]
        types = [layer.int4_type() for layer in layers]
        quiet = self.quiet or ctx.quiet
        for layer, int4, pin in zip(iterate(layers, "assign-bitwidth", quiet), types, pinned):
            if pin:
                continue
            with layer.as_type(int4):
                layer.cost = sum(output_change(interpret(graph, s), ref) for s, ref in zip(samples, reference))
        costs = np.array([layer.cost if not pin else 1e30 for layer, pin in zip(layers, pinned)])
        savings = np.array([layer.elements / 2 for layer in layers])
        savings[np.array(pinned, bool)] = 0
        chosen = solve_knapsack(costs, savings, int8_bytes - target)
        for layer, int4, pick in zip(layers, types, chosen):
            if pick:
                layer.commit(graph, int4)
        ctx.analyses.bitwidth = {layer.op.name: {"bits": layer.bits, "sensitivity": layer.cost,
                                                    "weights": layer.elements} for layer in layers}
        return PassResult(graph, bool(chosen.any()))
