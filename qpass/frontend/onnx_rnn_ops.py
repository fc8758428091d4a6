"""Converters of ONNX LSTM, GRU and RNN: unrolled over the (static) sequence into qpass's own ops.

Each time step is two dense ops (the input projection X_t W^T + Wb and the recurrence
H_{t-1} R^T + Rb, weights constant) and the gates' elementwise ops, so the projections quantize
like any other dense layer and the whole recurrence compiles. Directions run separately and are
stacked as ONNX orders them. Variants qpass does not unroll (activations other than the
defaults, clipping, peepholes, explicit sequence lengths, layout=1, weights computed at run
time) import as one onnx_node instead (`node.unsupported`).

Gate orders (ONNX): LSTM i, o, f, c; GRU z, r, h; RNN one gate.
"""

from __future__ import annotations

import numpy as np

from qpass.frontend.onnx_node import Node, converter, shape_of

_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}


def _check_variant(node: Node, inputs: int) -> None:
    directions = 2 if node.attr("direction", "forward") == "bidirectional" else 1
    acts = node.attr("activations")
    if acts is not None and [a if isinstance(a, str) else a.decode() for a in acts] != \
            _DEFAULT_ACTIVATIONS[node.op_type] * directions:
        raise node.unsupported(f"activations {acts} are not the defaults qpass unrolls")
    if node.attr("clip") is not None:
        raise node.unsupported("clip has no unrolled form")
    if node.attr("layout", 0):
        raise node.unsupported("layout=1 (batch first) has no unrolled form")
    if node.input(4) is not None:
        raise node.unsupported("explicit sequence lengths have no unrolled form")
    if node.op_type == "LSTM" and node.input(7) is not None:
        raise node.unsupported("peepholes have no unrolled form")
    for index in (1, 2, 3):
        if node.input(index) is not None and not isinstance(node.input(index), np.ndarray):
            raise node.unsupported("its weights are computed at run time")


class _Step:
    """Emits the ops of one direction's time steps."""

    def __init__(self, node: Node, direction: int, hidden: int):
        self.node, self.d, self.hidden = node, direction, hidden
        self.count = 0

    def name(self, what: str) -> str:
        self.count += 1
        return f"d{self.d}.{what}{self.count}"

    def emit(self, kind, inputs, attrs=None, what="op"):
        return self.node.emit(kind, inputs, attrs, suffix=self.name(what))

    def gate(self, gates, index: int):
        """Gate `index` of a [batch, gates * hidden] projection."""
        h = self.hidden
        return self.emit("slice", [gates], {"starts": [index * h], "ends": [(index + 1) * h], "axes": [1],
                                            "steps": [1]}, what="gate")

    def dense(self, x, weight, bias, what):
        return self.emit("dense", [x, self.node.named(np.ascontiguousarray(weight), f"d{self.d}.{what}.weight"),
                                   self.node.named(np.ascontiguousarray(bias), f"d{self.d}.{what}.bias")],
                         what=what)


def _unroll(node: Node):
    op = node.op_type
    _check_variant(node, len(node.inputs))
    x = node.input(0)
    if len(shape_of(x)) != 3:
        raise node.fail(f"its input X has shape {list(shape_of(x))}; ONNX {op} takes [seq_length, batch, input_size]")
    seq, batch, _ = shape_of(x)
    hidden = int(node.attr("hidden_size"))
    gates = _GATES[op]
    w, r = np.asarray(node.input(1), np.float32), np.asarray(node.input(2), np.float32)
    directions = w.shape[0]
    b = node.input(3)
    b = np.zeros((directions, 2 * gates * hidden), np.float32) if b is None else np.asarray(b, np.float32)
    initial_h, initial_c = node.input(5), node.input(6) if op == "LSTM" else None
    reverse = node.attr("direction", "forward") == "reverse"
    linear_before_reset = bool(node.attr("linear_before_reset", 0))
    steps = [node.emit("reshape", [node.emit("slice", [x], {"starts": [t], "ends": [t + 1], "axes": [0], "steps": [1]},
                                             suffix=f"x{t}")], {"shape": [batch, shape_of(x)[2]]}, suffix=f"x{t}.flat")
             for t in range(seq)]
    ys, last_h, last_c = [], [], []
    for d in range(directions):
        step = _Step(node, d, hidden)
        wb, rb = b[d, :gates * hidden], b[d, gates * hidden:]

        def state(initial, what):
            if initial is None:
                return node.named(np.zeros((batch, hidden), np.float32), f"d{d}.{what}0")
            if isinstance(initial, np.ndarray):
                return node.named(np.ascontiguousarray(initial[d]), f"d{d}.{what}0")
            one = step.emit("slice", [initial], {"starts": [d], "ends": [d + 1], "axes": [0], "steps": [1]}, what=what)
            return step.emit("reshape", [one], {"shape": [batch, hidden]}, what=what)

        h, c = state(initial_h, "h"), state(initial_c, "c") if op == "LSTM" else None
        order = range(seq - 1, -1, -1) if reverse or d == 1 else range(seq)
        outputs = {}
        for t in order:
            xw = step.dense(steps[t], w[d], wb, "xw")
            if op == "GRU":
                h = _gru_step(step, xw, h, r[d], rb, linear_before_reset)
            else:
                hr = step.dense(h, r[d], rb, "hr")
                pre = step.emit("add", [xw, hr], what="pre")
                if op == "RNN":
                    h = step.emit("tanh", [pre], what="h")
                else:
                    i, o, f, g = (step.gate(pre, k) for k in range(4))
                    i, o, f = (step.emit("sigmoid", [v], what="sig") for v in (i, o, f))
                    g = step.emit("tanh", [g], what="cand")
                    c = step.emit("add", [step.emit("mul", [f, c], what="fc"), step.emit("mul", [i, g], what="ig")],
                                  what="c")
                    h = step.emit("mul", [o, step.emit("tanh", [c], what="tc")], what="h")
            outputs[t] = h
        ys.append([outputs[t] for t in range(seq)])
        last_h.append(h)
        last_c.append(c)
    def stacked(states, shape, axis, what):
        parts = [node.emit("reshape", [v], {"shape": shape}, suffix=f"{what}{i}") for i, v in enumerate(states)]
        return parts[0] if len(parts) == 1 else node.emit("concat", parts, {"axis": axis}, suffix=what)

    y_steps = [stacked([ys[d][t] for d in range(directions)], [1, 1, batch, hidden], 1, f"y{t}.")
               for t in range(seq)]
    y = node.emit("reshape", [y_steps[0] if seq == 1 else node.emit("concat", y_steps, {"axis": 0}, suffix="y")],
                  {"shape": [seq, directions, batch, hidden]})
    results = [y, stacked(last_h, [1, batch, hidden], 0, "y_h.")]
    if op == "LSTM":
        results.append(stacked(last_c, [1, batch, hidden], 0, "y_c."))
    return results


def _gru_step(step: _Step, xw, h, r, rb, linear_before_reset: bool):
    """One GRU step: z = σ(Xz + Hz), r = σ(Xr + Hr), ĥ = tanh(Xh + (r ⊙ H) Rh^T + Rbh) (or
    Xh + r ⊙ (H Rh^T + Rbh) with linear_before_reset), H' = (1 - z) ⊙ ĥ + z ⊙ H."""
    hidden = step.hidden
    zr_weight, zr_bias = r[: 2 * hidden], rb[: 2 * hidden]
    h_weight, h_bias = r[2 * hidden:], rb[2 * hidden:]
    hzr = step.dense(h, zr_weight, zr_bias, "hzr")
    z = step.emit("sigmoid", [step.emit("add", [step.gate(xw, 0), step.gate(hzr, 0)], what="z")], what="z")
    reset = step.emit("sigmoid", [step.emit("add", [step.gate(xw, 1), step.gate(hzr, 1)], what="r")], what="r")
    if linear_before_reset:
        hh = step.emit("mul", [reset, step.dense(h, h_weight, h_bias, "hh")], what="rhh")
    else:
        hh = step.dense(step.emit("mul", [reset, h], what="rh"), h_weight, h_bias, "hh")
    candidate = step.emit("tanh", [step.emit("add", [step.gate(xw, 2), hh], what="cand")], what="cand")
    keep = step.emit("mul", [z, h], what="zh")
    one_minus = step.emit("sub", [step.node.named(np.ones((1,), np.float32), "one"), z], what="1mz")
    return step.emit("add", [step.emit("mul", [one_minus, candidate], what="zc"), keep], what="h")


@converter("LSTM", "GRU", "RNN")
def recurrent(node: Node):
    """ONNX LSTM / GRU / RNN (float, default activations) -> unrolled dense and gate ops."""
    return _unroll(node)
