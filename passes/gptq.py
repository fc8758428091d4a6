"""gptq: round fake-quantized weights with GPTQ's error feedback (Frantar et al., 2022), layer by
layer on calibration data; the algorithm is in qpass.quant.gptq."""

from __future__ import annotations

from typing import Literal

import numpy as np
from tqdm import tqdm

from qpass import Pass, PassResult, option, register_pass
from qpass.errors import PassError
from qpass.interpreter import evaluate
from qpass.ir.graph import Graph, Op
from qpass.ir.types import dtype_range
from qpass.passes.adaround import Stepper, layer_rows, without_fake_quant
from qpass.quant import quantized_weight, set_bias
from qpass.quant.calibration import check_samples
from qpass.quant.gptq import HessianSum, gptq_round, output_error


def _layers(graph: Graph) -> list[Op]:
    """The conv2d/dense ops whose weight is quantize(float constant) -> dequantize, in program order."""
    return [op for op in graph.ops
            if (source := quantized_weight(graph, op)) is not None and graph.producer(source) is not None]


def _grouped(array: np.ndarray, groups: int) -> np.ndarray:
    """A weight-shaped array as [groups, outputs per group, inputs per group] (layer_rows' column order)."""
    return array.reshape(groups, array.shape[0] // groups, -1)


@register_pass
class GPTQ(Pass):
    """Round each fake-quantized conv/dense weight with GPTQ, layer by layer, on calibration data.

    The Hessian H = 2 X Xᵀ of each layer's input comes from `samples` calibration samples,
    accumulated a sample at a time; inputs come from the model quantized so far (inputs=quantized,
    GPTQ's sequential mode) or from the float model. The scales and zero points stay those quantize
    chose (per tensor, channel or group); only the integer levels change. A layer whose result is
    not better than nearest rounding on H keeps nearest rounding. With correct-bias (the default)
    the rounding's mean output shift on those inputs goes into the bias, as the correct-bias pass
    would put it (after gptq that pass finds the weights on their grid: nothing left to correct).
    Run after quantize (and assign-bitwidth), before correct-bias and fold-fake-quant, like
    adaround: the weights stay quantize(float constant) -> dequantize, the constant now on the
    quantization grid."""

    name = "gptq"
    samples: int = option(128, "calibration samples (memory grows with samples x activation size)")
    damp: float = option(0.01, "dampening added to H's diagonal, as a fraction of its mean")
    block_size: int = option(128, "columns per lazy batch update (speed only; the result is the same)")
    act_order: bool = option(False, "quantize the input columns in order of decreasing H diagonal")
    inputs: Literal["quantized", "float"] = option("quantized", "layer inputs from the model quantized so far, "
                                                                "or from the float model")
    correct_bias: bool = option(True, "also move each layer's mean output shift into its bias")
    quiet: bool = option(False, "no progress bar")

    def __post_init__(self):
        if self.samples < 1 or self.block_size < 1 or self.damp < 0:
            raise ValueError("samples and block-size must be positive and damp >= 0")

    def run(self, graph, ctx):
        if not ctx.calibration:
            raise PassError("gptq measures each layer's input Hessian on calibration data; none was given (pass "
                            "calibration= to qpass.quantize or PassContext(calibration=samples))")
        samples = list(ctx.calibration)[:self.samples]
        check_samples(samples, graph)
        layers = _layers(graph)
        if not layers:
            return PassResult(graph, False)
        if self.correct_bias and any(len(op.inputs) == 2 for op in layers):
            for op in layers:                 # a zero bias to correct, before the steppers copy the ops
                if len(op.inputs) == 2:
                    set_bias(graph, op, np.zeros(op.inputs[1].type.shape[0], np.float32), op.name + ".bias")
            layers = _layers(graph)
        # inputs=float reads each layer's input from the float model, so the rounded weights
        # need not be fed forward
        if self.inputs == "float":
            reference = without_fake_quant(graph)
            source, run = {op.name: op for op in reference.ops}, Stepper(reference, samples)
        else:
            source, run = {op.name: op for op in layers}, Stepper(graph, samples)
        report = {}
        for op in tqdm(layers, desc="gptq", unit="layer", disable=self.quiet or ctx.quiet, leave=False):
            hessian = HessianSum()
            for x in run.run_until(source[op.name]):
                hessian.add(layer_rows(op, x))
            dequantize = graph.producer(op.inputs[1])
            weight, report[op.name] = self.round_layer(graph, op, hessian)
            if self.inputs == "quantized":
                run.overwrite(dequantize.output, weight)
        ctx.analyses.custom["gptq"] = report
        graph.remove_dead()
        return PassResult(graph, True)

    def round_layer(self, graph: Graph, op: Op, hessian: HessianSum) -> tuple[np.ndarray, dict]:
        """Round `op`'s weight and store it as the constant its quantize reads; returns the
        dequantized weight and the layer's figures (output errors per row, on the calibration H)."""
        quantize = graph.producer(quantized_weight(graph, op))
        qtype, old = quantize.output.type, quantize.inputs[0]
        groups = op.attrs["groups"] if op.kind == "conv2d" else 1
        w = old.data.astype(np.float64)
        scale, zero_point = (np.broadcast_to(a, w.shape).astype(np.float64) for a in qtype.quant.broadcast(w.shape))
        storage = dtype_range(qtype.dtype, qtype.quant.bits)
        # Symmetric weights keep quantize's narrow range [-qmax, qmax]: error feedback must not
        # reach -128, which the AVX2 sign trick (and EIGHT_BIT_WEIGHTS in targets) excludes.
        bounds = (-storage[1], storage[1]) if not np.any(zero_point) and storage[0] < 0 else storage
        h = hessian.hessian()
        nearest = np.clip(np.rint(w.astype(np.float32) / scale.astype(np.float32)) + zero_point, *storage)
        try:
            rounded = [gptq_round(_grouped(w, groups)[g], h[g], _grouped(scale, groups)[g],
                                  _grouped(zero_point, groups)[g], bounds, self.damp, self.block_size,
                                  self.act_order) for g in range(groups)]
        except np.linalg.LinAlgError as e:
            raise PassError(f"gptq: {op.kind} %{op.name}: {e}") from e
        levels = np.stack([r.levels for r in rounded]).reshape(w.shape)

        def error(chosen):
            quantized = _grouped((chosen - zero_point) * scale, groups)
            return sum(output_error(_grouped(w, groups)[g], quantized[g], h[g]) for g in range(groups))

        entry = {"rows": hessian.rows, "damp": max(r.damp for r in rounded),
                 "nearest_error": error(nearest), "error": error(levels)}
        if entry["error"] >= entry["nearest_error"]:
            levels, entry["kept_nearest"] = nearest, True
        weight = ((levels - zero_point) * scale).astype(np.float32)
        (check,) = evaluate("quantize", [weight], types=[qtype])
        if not np.array_equal(check, levels):
            raise PassError(f"gptq: the rounded weight of {op.kind} %{op.name} does not quantize back to its "
                            "levels")
        graph.set_input(quantize, 0, graph.add_constant(weight, old.name + ".gptq"))
        if self.correct_bias:
            quantized = _grouped(weight.astype(np.float64), groups)
            shift = np.einsum("gk,gok->go", hessian.mean(), _grouped(w, groups) - quantized).reshape(-1)
            graph.set_input(op, 2, graph.add_constant((op.inputs[2].data + shift).astype(np.float32),
                                                      op.name + ".bias_gptq"))
        (dequantized,) = evaluate("dequantize", [check], input_types=[qtype])
        return dequantized, entry
