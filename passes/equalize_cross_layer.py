"""equalize-cross-layer: cross-layer equalization and bias absorption on the float graph.

Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction" (2019) and
"A White Paper on Neural Network Quantization" (2021), section 4.1. Runs after canonicalize (batch
norms folded) and before range-analysis.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

import numpy as np

from qpass import Pass, PassResult, option, register_pass
from qpass.errors import PassError
from qpass.interpreter import interpret
from qpass.ir.graph import Graph, Op
from qpass.ir.opdef import Trait, op_def
from qpass.ir.types import is_float
from qpass.quant import is_float_layer, set_bias
from qpass.quant.calibration import iterate


def _relu_like(op: Op) -> bool:
    """An activation that is the identity on [0, inf) and positive-homogeneous: f(x / s) = f(x) / s."""
    d = op_def(op.kind)
    return d.has(Trait.POSITIVE_HOMOGENEOUS) and not d.has(Trait.DATA_MOVEMENT)


@dataclasses.dataclass
class Pair:
    """Two layers where the first's output channel i is the second's input channel i."""

    first: Op
    second: Op
    path: list[Op]                 # ops between them; each commutes with per-channel positive scaling

    @property
    def rectified(self) -> bool:
        """Whether a ReLU-like op sits between them (bias absorption then needs z >= c >= 0)."""
        return any(_relu_like(op) or op.kind == "clip" for op in self.path)

    @property
    def clip_max(self) -> Optional[float]:
        """The ReLU6-style bound between the layers, if there is one."""
        return next((op.attrs["max"] for op in self.path if _is_relu6(op)), None)


def _is_relu6(op: Op) -> bool:
    return op.kind == "clip" and op.attrs.get("min") == 0 and op.attrs.get("max") is not None


def _keeps_channels(op: Op, axis: int, relu6: str) -> Optional[int]:
    """The channel axis of `op`'s result if per-channel positive scaling of its operand's `axis`
    commutes with `op` (and the channel order is kept), else None."""
    rank = op.inputs[0].type.rank
    if op_def(op.kind).has(Trait.POSITIVE_HOMOGENEOUS):
        return axis
    if op.kind == "clip" and op.attrs.get("min") == 0:
        # clip(x / s, 0, m) * s == clip(x, 0, m s): with a max only where the data never reaches it
        # (relu6=calibrated), or after relu6=replace turned it into ReLU (Nagel et al.).
        return axis if op.attrs.get("max") is None or relu6 != "skip" else None
    if op.kind == "reduce_mean" and rank == 4 and axis == 1 and set(op.attrs["axes"]) <= {2, 3}:
        return axis
    if op.kind == "reshape" and rank == 4 and axis == 1 and op.inputs[0].type.shape[2:] == (1, 1) \
            and tuple(op.attrs["shape"]) == op.inputs[0].type.shape[:2]:
        return 1                                        # [N, C, 1, 1] -> [N, C]
    return None


def _has_float_constants(op: Op) -> bool:
    return all(v.is_constant and is_float(v.type.dtype) for v in op.inputs[1:])


def find_pairs(graph: Graph, relu6: str) -> list[Pair]:
    """Every conv2d/dense whose result reaches exactly one other conv2d/dense through channel-keeping ops."""
    pairs = []
    for first in graph.ops:
        if not is_float_layer(first) or not _has_float_constants(first):
            continue
        value, path = first.output, []
        axis = 1 if first.kind == "conv2d" else value.type.rank - 1
        while True:
            users = graph.users(value)
            if len(users) != 1 or graph.is_output(value):
                break
            user = users[0]
            if is_float_layer(user):
                fits = axis == (1 if user.kind == "conv2d" else value.type.rank - 1)
                if fits and user.inputs[0] is value and _has_float_constants(user):
                    pairs.append(Pair(first, user, path))
                break
            axis = _keeps_channels(user, axis, relu6)
            if axis is None:
                break
            path.append(user)
            value = user.output
    return pairs


def _groups(op: Op) -> int:
    return op.attrs["groups"] if op.kind == "conv2d" else 1


def input_channels(weight: np.ndarray, groups: int) -> np.ndarray:
    """The weights reading each input channel, one row per channel ([in, ...])."""
    if weight.ndim == 2:
        return weight.T
    out, per_group = weight.shape[:2]
    blocks = weight.reshape(groups, out // groups, per_group, -1).transpose(0, 2, 1, 3)
    return blocks.reshape(groups * per_group, -1)


def scale_input_channels(weight: np.ndarray, groups: int, factors: np.ndarray) -> np.ndarray:
    if weight.ndim == 2:
        return weight * factors[None, :]
    out, per_group = weight.shape[:2]
    scaled = weight.reshape(groups, out // groups, per_group, -1) * factors.reshape(groups, 1, per_group, 1)
    return scaled.reshape(weight.shape)


def input_shift_effect(weight: np.ndarray, groups: int, shift: np.ndarray) -> np.ndarray:
    """What adding `shift` to every input channel adds to each output (no padding)."""
    if weight.ndim == 2:
        return weight @ shift
    out, per_group = weight.shape[:2]
    taps = weight.reshape(groups, out // groups, per_group, -1).sum(axis=3)
    return np.einsum("gop,gp->go", taps, shift.reshape(groups, per_group)).reshape(out)


class Layers:
    """float64 working copies of the weights and biases of the paired layers."""

    def __init__(self, pairs: list[Pair]):
        self.ops = list({id(o): o for p in pairs for o in (p.first, p.second)}.values())
        self.weight, self.bias, self.scale, self.bounds = {}, {}, {}, {}
        for op in self.ops:
            self.weight[id(op)] = op.inputs[1].data.astype(np.float64)
            out = op.inputs[1].type.shape[0]
            self.bias[id(op)] = op.inputs[2].data.astype(np.float64) if len(op.inputs) == 3 else np.zeros(out)
            self.scale[id(op)] = np.ones(out)
            self.bounds[id(op)] = (np.zeros(out), np.full(out, np.inf))

    def bound_by_clip(self, pair: Pair, high: np.ndarray, headroom: float) -> None:
        """Limit the first layer's channel scales so clip(z / s, 0, m) never clips where the
        calibrated maximum `high` of z did not reach m: channels that reached it keep s = 1, the
        others may grow until their maximum is m / headroom."""
        saturated = high >= pair.clip_max
        low = np.where(saturated, 1.0, np.minimum(1.0, high * headroom / pair.clip_max))
        self.bounds[id(pair.first)] = (low, np.where(saturated, 1.0, np.inf))

    def equalize(self, pair: Pair) -> float:
        """Rescale the pair's shared channels so both weight ranges become sqrt(r1 r2); returns max |s - 1|."""
        w1, w2 = self.weight[id(pair.first)], self.weight[id(pair.second)]
        r1 = np.abs(w1.reshape(len(w1), -1)).max(axis=1)
        r2 = np.abs(input_channels(w2, _groups(pair.second))).max(axis=1)
        s = np.ones_like(r1)
        live = (r1 > 0) & (r2 > 0)
        s[live] = np.sqrt(r1[live] / r2[live])
        low, high = self.bounds[id(pair.first)]
        total = self.scale[id(pair.first)]
        s = np.clip(s * total, low, high) / total
        self.weight[id(pair.first)] = w1 / s.reshape(-1, *[1] * (w1.ndim - 1))
        self.bias[id(pair.first)] = self.bias[id(pair.first)] / s
        self.scale[id(pair.first)] = self.scale[id(pair.first)] * s
        self.weight[id(pair.second)] = scale_input_channels(w2, _groups(pair.second), s)
        return float(np.max(np.abs(s - 1), initial=0.0))

    def absorb(self, pair: Pair, shift: np.ndarray) -> None:
        """Move `shift` (per channel) out of the first layer's bias into the second's."""
        self.bias[id(pair.first)] = self.bias[id(pair.first)] - shift
        self.bias[id(pair.second)] = self.bias[id(pair.second)] + input_shift_effect(
            self.weight[id(pair.second)], _groups(pair.second), shift)

    def write(self, graph: Graph) -> bool:
        """Replace the constants that changed by the working copies (once: ops without a bias are
        rebuilt); returns whether any did."""
        changed = False
        for op in self.ops:
            weight, bias = self.weight[id(op)].astype(np.float32), self.bias[id(op)].astype(np.float32)
            if not np.array_equal(weight, op.inputs[1].data):
                graph.set_input(op, 1, graph.add_constant(weight, op.inputs[1].name + ".equalized"))
                changed = True
            old_bias = op.inputs[2].data if len(op.inputs) == 3 else np.zeros_like(bias)
            if not np.array_equal(bias, old_bias):
                set_bias(graph, op, bias, op.name + ".bias_equalized")
                changed = True
        return changed


def replace_relu6(graph: Graph, pairs: list[Pair]) -> bool:
    """Turn the ReLU6 between pairs into ReLU; returns whether there was any."""
    replaced = False
    for pair in pairs:
        for i, op in enumerate(pair.path):
            if _is_relu6(op):
                replaced = True
                relu = graph.add_op("relu", op.inputs, names=[op.name + ".relu"], before=op)
                name = op.output.name
                graph.replace_all_uses(op.output, relu.output)
                graph.remove_op(op)
                graph.rename(relu.output, name)
                pair.path[i] = relu
    return replaced


def channel_extremes(graph: Graph, layers: list[Op], samples: list[dict], quiet: bool) -> dict:
    """Per-channel (min, max) over `samples` of each layer's result, by value name."""
    extremes = {}
    wanted = {op.output.name: 1 if op.kind == "conv2d" else op.output.type.rank - 1 for op in layers}

    def observe(value, array):
        if value.name in wanted:
            axes = tuple(i for i in range(array.ndim) if i != wanted[value.name])
            lo, hi = array.min(axis=axes), array.max(axis=axes)
            old = extremes.get(value.name)
            extremes[value.name] = (lo, hi) if old is None else (np.minimum(old[0], lo), np.maximum(old[1], hi))

    for sample in iterate(samples, "equalize-cross-layer", quiet):
        interpret(graph, sample, observe=observe)
    return extremes


@register_pass
class EqualizeCrossLayer(Pass):
    """Equalize the channel ranges of consecutive conv2d/dense layers, then absorb high biases.

    Pairs connect through ReLU, global mean pooling and flatten; the channels between them are
    rescaled so both layers' per-channel weight ranges match.

    Exact in float: W1[i] /= s_i, b1[i] /= s_i, W2[:, i] *= s_i with s_i = sqrt(r1_i / r2_i). ReLU6
    pairs are skipped by default (relu6=skip): clip(x / s, 0, 6) * s = clip(x, 0, 6 s), so only s = 1
    is exact for every input. relu6=calibrated equalizes them within bounds measured on calibration
    data (channels that reach 6 keep s = 1, others never reach the clip on that data: exact there);
    relu6=replace makes them ReLU first like Nagel et al., which changes the function above 6.
    Bias absorption needs calibration data (ctx.calibration) and a second layer without
    padding: after a ReLU it moves c_i = max(0, min z_i) (exact while z_i stays above its calibrated
    minimum), on a linear path the channel's mid-range (exact everywhere).
    """

    name = "equalize-cross-layer"
    iterations: int = option(100, "at most this many sweeps over all pairs")
    tolerance: float = option(1e-4, "stop when no channel scale moves by more than this (|s - 1|)")
    relu6: Literal["skip", "calibrated", "replace"] = option(
        "skip", "ReLU6 between a pair: skip the pair, equalize within calibrated bounds, or replace it by ReLU")
    absorb_bias: bool = option(True, "absorb high biases into the next layer (needs calibration data)")
    headroom: float = option(1.0, "relu6=calibrated: a channel grows until its calibrated maximum is "
                                       "the clip's max / headroom")
    samples: int = option(16, "calibration samples for bias absorption and relu6=calibrated")
    quiet: bool = option(False, "no progress bar")

    def run(self, graph, ctx):
        pairs = find_pairs(graph, self.relu6)
        if not pairs:
            return PassResult(graph, False)
        samples = list(ctx.calibration or [])[:self.samples]
        if self.relu6 == "calibrated" and not samples:
            raise PassError("equalize-cross-layer{relu6=calibrated} bounds the channel scales on calibration "
                            "data; none was given (use relu6=skip without data)")
        measured = self.absorb_bias or self.relu6 == "calibrated"
        extremes = channel_extremes(graph, [p.first for p in pairs], samples,
                                    self.quiet or ctx.quiet) if samples and measured else {}
        replaced = replace_relu6(graph, pairs) if self.relu6 == "replace" else False
        layers = Layers(pairs)
        for pair in pairs:
            if pair.clip_max is not None:
                layers.bound_by_clip(pair, extremes[pair.first.output.name][1].astype(np.float64), self.headroom)
        for _ in range(self.iterations):
            if max(layers.equalize(pair) for pair in pairs) < self.tolerance:
                break
        if self.absorb_bias and extremes:
            self.absorb(pairs, layers, extremes)
        changed = layers.write(graph)
        if changed:
            graph.remove_dead()
        return PassResult(graph, changed or replaced)

    @staticmethod
    def absorb(pairs: list[Pair], layers: Layers, extremes: dict) -> None:
        """Bias absorption, from channel extremes measured before equalization (an equalized
        channel is the original divided by its scale). Not through a clip with a max: moving c
        out of clip(z, 0, m) would move its bound to m - c."""
        for pair in pairs:
            if pair.clip_max is not None or (pair.second.kind == "conv2d" and any(pair.second.attrs["pads"])):
                continue
            lo, hi = (a.astype(np.float64) / layers.scale[id(pair.first)] for a in extremes[pair.first.output.name])
            shift = np.maximum(lo, 0.0) if pair.rectified else (lo + hi) / 2
            layers.absorb(pair, shift)
