"""adaround: learn whether each fake-quantized weight rounds up or down (Nagel et al., "Up or Down?
Adaptive Rounding for Post-Training Quantization", 2020), layer by layer on calibration data."""

from __future__ import annotations

import copy
import time

import numpy as np
from scipy.special import expit
from tqdm import tqdm

from qpass import Pass, PassResult, option, register_pass
from qpass.errors import PassError
from qpass.interpreter import evaluate, run_op
from qpass.ops.common import windows as _windows
from qpass.ir.graph import Graph, Op
from qpass.ir.types import dtype_range
from qpass.quant import quantized_weight, set_bias
from qpass.quant.calibration import check_samples

ZETA, GAMMA = 1.1, -0.1                     # the rectified sigmoid's stretch: h reaches 0 and 1 exactly
BETA_START, BETA_END = 20.0, 2.0            # the regularizer's exponent, annealed


class Stepper:
    """Executes a graph op by op on several samples at once, so a pass can change a layer between steps."""

    def __init__(self, graph: Graph, samples: list[dict]):
        self.ops = graph.ops
        self.next = 0
        self.envs = [{id(v): sample[v.name] for v in graph.inputs} for sample in samples]
        self.last_use = {id(v): i for i, op in enumerate(self.ops) for v in op.inputs}
        self.keep = {id(v) for v in graph.outputs}

    def run_until(self, stop: Op) -> list[np.ndarray]:
        """Execute every op before `stop`; returns `stop`'s first operand, one array per sample."""
        while self.ops[self.next] is not stop:
            op = self.ops[self.next]
            for env in self.envs:
                arrays = [v.data if v.is_constant else env[id(v)] for v in op.inputs]
                for value, array in zip(op.outputs, run_op(op, arrays)):
                    env[id(value)] = array
                for value in op.inputs:
                    if self.last_use.get(id(value)) == self.next and id(value) not in self.keep:
                        env.pop(id(value), None)
            self.next += 1
        return [env[id(stop.inputs[0])] for env in self.envs]

    def overwrite(self, value, array: np.ndarray) -> None:
        """Give an already computed value another array in every sample (after a rewrite)."""
        for env in self.envs:
            env[id(value)] = array


def without_fake_quant(graph: Graph) -> Graph:
    """A copy of `graph` in which every quantize -> dequantize pair is bypassed: the float model."""
    float_model = graph.copy()
    for dq in float_model.find_ops("dequantize"):
        q = float_model.producer(dq.inputs[0])
        if q is not None and q.kind == "quantize":
            float_model.replace_all_uses(dq.output, q.inputs[0])
    float_model.remove_dead()
    return float_model


def layer_rows(op: Op, x: np.ndarray) -> np.ndarray:
    """The layer's input as rows, one per output position and group: [groups, rows, inputs per group]
    (im2col for conv2d, in the order of the weight's flattened (channel, kh, kw))."""
    if op.kind == "dense":
        return x.reshape(1, -1, x.shape[-1])
    kh, kw = op.inputs[1].type.shape[2:]
    n, channels = x.shape[:2]
    out_h, out_w = op.output.type.shape[2:]
    groups = op.attrs["groups"]
    windows = _windows(x, (kh, kw), op.attrs["strides"], op.attrs["pads"], op.attrs["dilations"], (out_h, out_w))
    windows = windows.reshape(n, groups, channels // groups, out_h, out_w, kh, kw)
    return windows.transpose(1, 0, 3, 4, 2, 5, 6).reshape(groups, n * out_h * out_w, -1)


class Statistics:
    """Second moments of a layer's quantized-model input B and float-model input A, row-summed,
    so the reconstruction error of any weight is a quadratic form (no per-iteration data pass)."""

    def __init__(self):
        self.rows = 0
        self.sums = None

    def add(self, quantized: np.ndarray, reference: np.ndarray) -> None:
        b, a = quantized.astype(np.float64), reference.astype(np.float64)
        bt = b.transpose(0, 2, 1)
        sums = (bt @ b, bt @ a, a.transpose(0, 2, 1) @ a, b.sum(axis=1), a.sum(axis=1))
        self.sums = sums if self.sums is None else tuple(s + t for s, t in zip(self.sums, sums))
        self.rows += b.shape[1]

    def moments(self, centered: bool):
        """(B'B, B'A, A'A, mean B, mean A), centered on the means when the bias absorbs them."""
        bb, ba, aa, sum_b, sum_a = self.sums
        mean_b, mean_a = sum_b / self.rows, sum_a / self.rows
        if centered:
            def outer(u, v):
                return self.rows * u[:, :, None] * v[:, None, :]
            bb, ba, aa = bb - outer(mean_b, mean_b), ba - outer(mean_b, mean_a), aa - outer(mean_a, mean_a)
        return bb, ba, aa, mean_b, mean_a


class Reconstruction:
    """||A W' - B Ws'||^2 / rows for one layer, its gradient in Ws, and the rounding it is learned for."""

    def __init__(self, weight: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, bounds: tuple[int, int],
                 groups: int, stats: Statistics, centered: bool):
        shape = (groups, weight.shape[0] // groups, -1)
        self.weight = weight.astype(np.float64).reshape(shape)
        self.scale = scale.astype(np.float64).reshape(shape)
        self.low, self.high = (bound - zero_point.astype(np.float64).reshape(shape) for bound in bounds)
        self.gram, cross, aa, self.mean_b, self.mean_a = stats.moments(centered)
        self.rows = stats.rows
        self.target = np.matmul(self.weight, cross.transpose(0, 2, 1))          # W (B'A)'
        self.energy = float(np.einsum("gok,gkl,gol->", self.weight, aa, self.weight))
        self.floor = np.floor(self.weight / self.scale)

    def in_float32(self) -> "Reconstruction":
        """A copy computing in float32, twice as fast for the optimizer (errors stay in float64)."""
        fast = copy.copy(self)
        for name in ("weight", "scale", "low", "high", "gram", "target", "floor"):
            setattr(fast, name, getattr(self, name).astype(np.float32))
        return fast

    def error(self, soft: np.ndarray) -> float:
        quadratic = np.einsum("gok,gkl,gol->", soft, self.gram, soft)
        return float(self.energy - 2 * np.sum(soft * self.target) + quadratic) / self.rows

    def gradient(self, soft: np.ndarray) -> np.ndarray:
        return 2 * (np.matmul(soft, self.gram) - self.target) / self.rows

    def weights(self, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Dequantized weights for integer part floor(w/s) + offset, and where the clamp is not active."""
        level = self.floor + offset
        inside = (level >= self.low) & (level <= self.high)
        return np.clip(level, self.low, self.high) * self.scale, inside


def learn_rounding(rec: Reconstruction, iterations: int, learning_rate: float,
                   regularization: float, warmup: float) -> tuple[np.ndarray, int]:
    """Adam on the rectified-sigmoid offsets h(V); returns the hard 0/1 offsets and the steps taken.

    The regularizer sum(1 - |2h - 1|^beta) starts after `warmup` of the run, beta falling from 20 to
    2, so h first fits the data and is then pushed to 0 or 1. The run is `iterations` steps long
    whatever the machine's load, so equal inputs give equal roundings.
    """
    rec = rec.in_float32()
    fraction = np.clip(rec.weight / rec.scale - rec.floor, 0.0, 1.0)
    v = -np.log((ZETA - GAMMA) / (fraction - GAMMA) - 1)                       # h(V) == fraction
    m, s = np.zeros_like(v), np.zeros_like(v)
    for step in range(iterations):
        progress = step / iterations
        sig = expit(v)
        stretched = sig * (ZETA - GAMMA) + GAMMA
        h = np.clip(stretched, 0.0, 1.0)
        soft, inside = rec.weights(h)
        grad_h = rec.gradient(soft) * rec.scale * inside
        if progress > warmup:
            beta = BETA_END + (BETA_START - BETA_END) * (1 - (progress - warmup) / (1 - warmup))
            t = 2 * h - 1
            grad_h -= regularization * 2 * beta * np.abs(t) ** (beta - 1) * np.sign(t)
        grad = grad_h * (ZETA - GAMMA) * sig * (1 - sig) * ((stretched > 0) & (stretched < 1))
        m = 0.9 * m + 0.1 * grad
        s = 0.999 * s + 0.001 * grad * grad
        v -= learning_rate * (m / (1 - 0.9 ** (step + 1))) / (np.sqrt(s / (1 - 0.999 ** (step + 1))) + 1e-8)
    return (v >= 0).astype(np.float64), iterations


class Layer:
    """A conv2d/dense whose weight is quantize(float constant) -> dequantize."""

    def __init__(self, graph: Graph, op: Op):
        self.op = op
        self.quantize = graph.producer(quantized_weight(graph, op))
        self.dequantize = graph.producer(op.inputs[1])
        self.type = self.quantize.output.type
        self.groups = op.attrs["groups"] if op.kind == "conv2d" else 1
        self.stats = Statistics()

    @staticmethod
    def find(graph: Graph) -> list["Layer"]:
        """The layers whose weight is quantize(float constant), in program order."""
        return [Layer(graph, op) for op in graph.ops
                if (source := quantized_weight(graph, op)) is not None and graph.producer(source) is not None]

    def nearest_offset(self, rec: Reconstruction) -> np.ndarray:
        """The offsets the quantize op's round-to-nearest-even gives (float32, like the kernel)."""
        w = self.quantize.inputs[0].data
        scale, _ = self.type.quant.broadcast(w.shape)
        return np.rint(w / scale).astype(np.float64).reshape(rec.floor.shape) - rec.floor

    def reconstruction(self, centered: bool) -> Reconstruction:
        w = self.quantize.inputs[0].data
        scale, zero_point = self.type.quant.broadcast(w.shape)
        return Reconstruction(w, scale, zero_point, dtype_range(self.type.dtype, self.type.quant.bits),
                              self.groups, self.stats, centered)

    def write(self, graph: Graph, rec: Reconstruction, offset: np.ndarray, correct_bias: bool) -> np.ndarray:
        """Store the chosen rounding as the float constant quantize reads (exact grid points, so
        quantize gives back these integers); returns the dequantized weight."""
        hard, _ = rec.weights(offset)
        old = self.quantize.inputs[0]
        weight = hard.reshape(old.type.shape).astype(np.float32)
        graph.set_input(self.quantize, 0, graph.add_constant(weight, old.name + ".adaround"))
        if correct_bias:
            shift = np.einsum("gk,gok->go", rec.mean_a, rec.weight) - np.einsum("gk,gok->go", rec.mean_b, hard)
            graph.set_input(self.op, 2, graph.add_constant(
                (self.op.inputs[2].data + shift.reshape(-1)).astype(np.float32), self.op.name + ".bias_adaround"))
        (levels,) = evaluate("quantize", [weight], types=[self.type])
        (dequantized,) = evaluate("dequantize", [levels], input_types=[self.type])
        return dequantized


@register_pass
class AdaRound(Pass):
    """Learn whether each fake-quantized conv/dense weight rounds up or down, layer by layer.

    Each layer's rounding minimizes its output error on calibration data, in program order: inputs
    come from the model quantized so far, targets from the float model. A layer where the learned
    rounding is not better gets nearest rounding; one with fewer input rows than weights per output
    is skipped (too few equations). With correct-bias (the default) the error is measured around
    its mean, which then goes into the bias; the correct-bias pass after it only touches the skipped
    layers. Run after quantize (and assign-bitwidth), before fold-fake-quant; the weights stay
    quantize(float constant) -> dequantize, the constant now on the quantization grid."""

    name = "adaround"
    iterations: int = option(1000, "optimizer steps per layer (the result depends on this, never on the clock)")
    samples: int = option(64, "calibration samples (memory grows with samples x activation size)")
    learning_rate: float = option(0.01, "Adam step size on the rounding variables")
    regularization: float = option(0.01, "weight of the rounding regularizer")
    warmup: float = option(0.2, "share of the run before the regularizer starts")
    correct_bias: bool = option(True, "also move each layer's mean output error into its bias")
    quiet: bool = option(False, "no progress bar")

    def run(self, graph, ctx):
        samples = ctx.calibration
        if not samples:
            raise PassError("adaround learns the rounding on calibration data; none was given (pass calibration= "
                            "to qpass.quantize or PassContext(calibration=samples))")
        samples = list(samples)[:self.samples]
        check_samples(samples, graph)
        layers = Layer.find(graph)
        if not layers:
            return PassResult(graph, False)
        if self.correct_bias and any(len(layer.op.inputs) == 2 for layer in layers):
            for layer in layers:
                if len(layer.op.inputs) == 2:                     # a zero bias to correct
                    set_bias(graph, layer.op, np.zeros(layer.op.inputs[1].type.shape[0], np.float32),
                             layer.op.name + ".bias_equalized")
            layers = Layer.find(graph)
        reference = without_fake_quant(graph)
        float_ops = {op.name: op for op in reference.ops}
        quantized_run, float_run = Stepper(graph, samples), Stepper(reference, samples)
        report = {}
        quiet = self.quiet or ctx.quiet
        for layer in tqdm(layers, desc="adaround", unit="layer", disable=quiet, leave=False):
            inputs = quantized_run.run_until(layer.op)
            for b, a in zip(inputs, float_run.run_until(float_ops[layer.op.name])):
                layer.stats.add(layer_rows(layer.op, b), layer_rows(layer.op, a))
            report[layer.op.name] = self.round_layer(graph, layer, quantized_run)
            layer.stats = None
        ctx.analyses.adaround = report
        graph.remove_dead()
        return PassResult(graph, True)

    def round_layer(self, graph: Graph, layer: Layer, quantized_run: Stepper) -> dict:
        rec = layer.reconstruction(self.correct_bias)
        per_output = rec.weight.shape[2]
        nearest = layer.nearest_offset(rec)
        nearest_error = rec.error(rec.weights(nearest)[0])
        entry = {"rows": rec.rows, "energy": rec.energy / rec.rows, "nearest_error": nearest_error}
        if rec.rows < per_output:
            return {**entry, "skipped": f"{rec.rows} input rows for {per_output} weights per output"}
        start = time.perf_counter()
        offset, steps = learn_rounding(rec, self.iterations, self.learning_rate,
                                       self.regularization, self.warmup)
        error = rec.error(rec.weights(offset)[0])
        if error >= nearest_error:
            offset, error = nearest, nearest_error
        quantized_run.overwrite(layer.dequantize.output, layer.write(graph, rec, offset, self.correct_bias))
        return {**entry, "error": error, "steps": steps, "seconds": round(time.perf_counter() - start, 2)}
