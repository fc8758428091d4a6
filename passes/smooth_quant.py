"""smooth-quant: migrate activation outliers into the weights (Xiao et al., "SmoothQuant: Accurate
and Efficient Post-Training Quantization for Large Language Models", 2022), on the float graph.

X W = (X diag(s)⁻¹) (diag(s) W): each input channel j of a dense (or 1x1 conv) is divided by
s_j = max|X_j|^α / max|W_j|^(1-α) where it is produced and multiplied back into the weight's row j,
so a few huge activation channels stop dictating the one activation scale. Runs before
range-analysis, like equalize-cross-layer (its counterpart between CNN layers).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from qpass import Pass, PassResult, option, register_pass
from qpass.errors import PassError
from qpass.interpreter import interpret
from qpass.ir.graph import Graph, Op, Value
from qpass.ir.types import is_float
from qpass.quant import set_bias
from qpass.quant.calibration import check_samples, iterate
from qpass.quant.params import activation_params, dequantize_array, quantize_array, weight_params

ALPHA_GRID = np.round(np.linspace(0.0, 1.0, 21), 2)
TINY = 1e-5                                       # SmoothQuant's floor under max|X_j| and max|W_j|


def _float_constants(op: Op, first: int = 1) -> bool:
    return all(v.is_constant and is_float(v.type.dtype) for v in op.inputs[first:])


def _channel_axis(op: Op) -> Optional[int]:
    """The axis of `op`'s result that a per-channel scale of its constants scales, or None."""
    rank = op.output.type.rank
    if op.kind == "dense" and _float_constants(op):
        return rank - 1
    if op.kind in ("conv2d", "batch_norm") and _float_constants(op):
        return 1
    if op.kind == "layer_norm" and _float_constants(op):
        return rank - 1                          # gamma and beta span the last axis whatever `axis` is
    return None


def _input_axis(op: Op, value: Value) -> Optional[int]:
    """The channel axis of `value` that consumer `op` contracts with its weight's input rows, or None."""
    if op.inputs[0] is not value or any(v is value for v in op.inputs[1:]) or not _float_constants(op):
        return None
    if op.kind == "dense":
        return value.type.rank - 1
    if op.kind == "conv2d" and op.attrs["groups"] == 1 and op.inputs[1].type.shape[2:] == (1, 1):
        return 1
    return None


def weight_rows(op: Op) -> np.ndarray:
    """The consumer's weight as [outputs, input channels] (float64)."""
    w = op.inputs[1].data.astype(np.float64)
    return w.reshape(w.shape[0], w.shape[1])


@dataclasses.dataclass
class Site:
    """A value whose channels its producer can scale and whose every reader is a smoothable layer."""

    value: Value
    producer: Op
    consumers: list[Op]
    axis: int

    def weight_max(self) -> np.ndarray:
        """max |W_j| over all consumers, per input channel."""
        return np.max([np.abs(weight_rows(op)).max(axis=0) for op in self.consumers], axis=0)


def find_sites(graph: Graph) -> tuple[list[Site], dict[str, str]]:
    """The smoothable values, and why each value read by a dense/1x1 conv was not one."""
    sites, skipped = [], {}
    for op in graph.ops:
        axis = _channel_axis(op)
        value = op.output
        users = graph.users(value)
        readers = [u for u in users if u.kind in ("dense", "conv2d")]
        if not readers:
            continue
        if axis is None:
            skipped[value.name] = f"its producer ({op.kind}) has no per-channel constants to absorb a scale"
        elif graph.is_output(value):
            skipped[value.name] = "it is a graph output"
        elif any(_input_axis(u, value) != axis for u in users):
            others = ", ".join(sorted({u.kind for u in users if _input_axis(u, value) != axis}))
            skipped[value.name] = (f"it feeds {others}, which cannot take weight rows scaled along its axis "
                                   f"{axis} (only dense and 1x1 conv with constant weights can)")
        else:
            sites.append(Site(value, op, users, axis))
    return sites, skipped


def _rows(array: np.ndarray, axis: int) -> np.ndarray:
    """An activation as [positions, channels]."""
    return np.moveaxis(array, axis, -1).reshape(-1, array.shape[axis]).astype(np.float64)


def smoothing_scales(activation_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """s_j = max|X_j|^α / max|W_j|^(1-α); 1 where a channel is never nonzero."""
    x, w = np.maximum(activation_max, TINY), np.maximum(weight_max, TINY)
    s = x ** alpha / w ** (1 - alpha)
    return np.where((activation_max > 0) & (weight_max > 0), s, 1.0)


def quantized_error(site: Site, rows: np.ndarray, s: np.ndarray) -> float:
    """Squared output error of the site's consumers, W8A8 (per-tensor asymmetric i8 activations from the
    min/max, per-channel i8 weights), with channels divided by `s`."""
    x = (rows / s).astype(np.float32)
    params = activation_params(float(x.min()), float(x.max()), "i8")
    xq = dequantize_array(quantize_array(x, params, "i8"), params).astype(np.float64)
    error = 0.0
    for op in site.consumers:
        w = weight_rows(op)
        ws = (w * s).astype(np.float32)
        weight_grid = weight_params(ws, "i8")
        wq = dequantize_array(quantize_array(ws, weight_grid, "i8"), weight_grid)
        error += float(np.sum((rows @ w.T - xq @ wq.astype(np.float64).T) ** 2))
    return error


def apply(graph: Graph, site: Site, s: np.ndarray) -> None:
    """Divide the producer's output channels by s and multiply the consumers' input rows by it."""
    producer, inv = site.producer, 1.0 / s
    name = site.value.name
    if producer.kind in ("dense", "conv2d"):
        w = producer.inputs[1].data.astype(np.float64)
        view = (-1,) + (1,) * (w.ndim - 1)
        scaled = (w * inv.reshape(view)).astype(np.float32)
        graph.set_input(producer, 1, graph.add_constant(scaled, name + ".w_smoothed"))
        if len(producer.inputs) == 3:
            set_bias(graph, producer, (producer.inputs[2].data * inv).astype(np.float32), name + ".b_smoothed")
    else:                                      # layer_norm (gamma, beta), batch_norm (scale, bias)
        x_shape = producer.inputs[0].type.shape
        shape = x_shape[producer.attrs["axis"] % len(x_shape):] if producer.kind == "layer_norm" else (len(s),)
        for index in (1, 2):
            if index < len(producer.inputs):
                scaled = (np.broadcast_to(producer.inputs[index].data.astype(np.float64), shape) * inv)
                graph.set_input(producer, index, graph.add_constant(scaled.astype(np.float32),
                                                                    f"{name}.p{index}_smoothed"))
    for op in site.consumers:
        w = op.inputs[1].data.astype(np.float64)
        view = (1, -1) + (1,) * (w.ndim - 2)
        graph.set_input(op, 1, graph.add_constant((w * s.reshape(view)).astype(np.float32),
                                                  op.inputs[1].name + ".smoothed"))


@register_pass
class SmoothQuant(Pass):
    """Move activation outliers into the weights: each input channel j of a dense or 1x1 conv is divided
    by s_j = max|X_j|^alpha / max|W_j|^(1-alpha) in its producer (layer_norm gamma/beta, batch_norm,
    a dense or conv's output channels) and multiplied into the weight's rows; exact in float.

    max|X_j| comes from calibration data. A value read by several layers is smoothed for all of them
    at once (the max runs over all their weights), or not at all when one of its readers cannot take
    the scaled rows. alpha=search picks alpha per value from a grid by the W8A8 output error of its
    readers on the calibration data. Run before range-analysis."""

    name = "smooth-quant"
    alpha: str = option("0.5", "migration strength in [0, 1], or search (per value, by W8A8 output error)")
    samples: int = option(32, "calibration samples")
    quiet: bool = option(False, "no progress bar")

    def __post_init__(self):
        if self.alpha != "search" and not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] or search, got {self.alpha}")

    def run(self, graph, ctx):
        sites, skipped = find_sites(graph)
        report = {"skipped": skipped, "smoothed": {}}
        ctx.analyses.custom["smooth-quant"] = report
        if not sites:
            return PassResult(graph, False)
        samples = list(ctx.calibration or [])[:self.samples]
        if not samples:
            raise PassError("smooth-quant measures the activations' channel ranges on calibration data; none was "
                            "given (pass calibration= to qpass.quantize or PassContext(calibration=samples))")
        check_samples(samples, graph)
        searching = self.alpha == "search"
        wanted = {id(site.value): site for site in sites}
        maxima, rows = {}, {id(site.value): [] for site in sites}

        def observe(value, array):
            site = wanted.get(id(value))
            if site is not None:
                r = _rows(array, site.axis)
                maxima[id(value)] = np.maximum(maxima.get(id(value), 0.0), np.abs(r).max(axis=0))
                if searching:
                    rows[id(value)].append(r)

        for sample in iterate(samples, "smooth-quant", self.quiet or ctx.quiet):
            interpret(graph, sample, observe=observe)
        for site in sites:
            activation_max, weight_max = maxima[id(site.value)], site.weight_max()
            alphas = ALPHA_GRID if searching else [float(self.alpha)]
            errors = {}
            if searching:
                calibration_rows = np.concatenate(rows.pop(id(site.value)))
                errors = {a: quantized_error(site, calibration_rows,
                                             smoothing_scales(activation_max, weight_max, a)) for a in alphas}
            alpha = float(min(errors, key=errors.get)) if searching else alphas[0]
            s = smoothing_scales(activation_max, weight_max, alpha)
            apply(graph, site, s)
            report["smoothed"][site.value.name] = {
                "alpha": alpha, "consumers": [op.name for op in site.consumers],
                "activation_ratio": float(activation_max.max() / max(np.median(activation_max), TINY)),
                "scale_range": (float(s.min()), float(s.max())),
                **({"error_at_alpha": {float(a): e for a, e in errors.items()}} if searching else {})}
        graph.remove_dead()
        return PassResult(graph, True)
