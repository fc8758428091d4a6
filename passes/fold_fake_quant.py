"""fold-fake-quant: rewrite dequantize -> float op -> quantize sandwiches into integer ops.

Works on graphs written by `quantize` and on QDQ models imported from other tools. Each rule
looks at one `quantize` and the float op feeding it; operands must come from `dequantize`.
What cannot become integer stays float between a dequantize and a quantize, and
ctx.analyses.float_ops says which ops and why.
"""

from __future__ import annotations

import numpy as np

from qpass import Pass, PassResult, register_pass
from qpass.ir.fixed_point import quantize_multiplier
from qpass.interpreter import evaluate, run_op
from qpass.ir.types import TensorType, dtype_range, is_float
from qpass.quant import MOVE_KINDS, TABLE_KINDS
from qpass.quant.params import dequantize_array, quantize_array



class NoMatch(Exception):
    """A rule does not apply; the message says why (kept for the report)."""


def int_source(graph, value):
    """The integer value a float operand was dequantized from."""
    producer = graph.producer(value)
    if producer is None or producer.kind != "dequantize":
        raise NoMatch(f"operand %{value.name} is not dequantized from an integer")
    return producer.inputs[0]


def per_tensor(value):
    quant = value.type.quant
    if quant is None or quant.axis is not None:
        raise NoMatch(f"%{value.name} is not quantized per tensor")
    return float(quant.scale), int(quant.zero_point)


def clamp_of(act, out_type) -> dict:
    """{"clamp": [lo, hi]} in the output's integer domain that a ReLU/Clip imposes, or {} for none."""
    full = lo, hi = dtype_range(out_type.dtype, out_type.quant.bits)
    if act is None:
        return {}
    scale, zp = float(out_type.quant.scale), int(out_type.quant.zero_point)
    low = 0.0 if act.kind == "relu" else act.attrs.get("min")
    high = None if act.kind == "relu" else act.attrs.get("max")
    if low is not None:
        lo = max(lo, min(hi, int(np.rint(low / scale)) + zp))
    if high is not None:
        hi = min(hi, max(lo, int(np.rint(high / scale)) + zp))
    return {} if (lo, hi) == full else {"clamp": [lo, hi]}


def multiplier_attrs(real) -> dict:
    m, s = quantize_multiplier(np.atleast_1d(real))
    return {"multiplier": [int(x) for x in m], "shift": [int(x) for x in s]}


def fold_weight_quantizes(graph) -> bool:
    """quantize(float constant) becomes an integer constant."""
    changed = False
    for op in graph.find_ops("quantize"):
        if op.inputs[0].is_constant:
            (data,) = run_op(op, [op.inputs[0].data])
            const = graph.add_constant(data, op.output.name, dtype=op.output.type.dtype, quant=op.output.type.quant)
            replace(graph, op, const)
            changed = True
    return changed


def replace(graph, op, value) -> None:
    """`value` (a new op's result) takes the place, and the name, of `op`'s single result."""
    name = op.output.name
    graph.replace_all_uses(op.output, value)
    graph.remove_op(op)
    graph.rename(value, name)


def float_bias(graph, value) -> np.ndarray:
    """A bias's real values: a float constant, or a dequantized integer constant (QDQ models)."""
    if value.is_constant:
        return value.data
    producer = graph.producer(value)
    if producer is not None and producer.kind == "dequantize" and producer.inputs[0].is_constant:
        source = producer.inputs[0]
        return dequantize_array(source.data, source.type.quant)
    raise NoMatch("bias is not constant")


# --------------------------------------------------------------------------- rules
def split_activation(graph, op):
    """(producer, activation) when `op` is a ReLU/Clip fused onto its producer, else (op, None)."""
    if op.kind not in ("relu", "clip"):
        return op, None
    producer = graph.producer(op.inputs[0])
    if producer is None or len(graph.users(producer.output)) != 1:
        raise NoMatch("the activation's producer has other readers")
    return producer, op


def rule_conv_dense(graph, q, op):
    op, act = split_activation(graph, op)
    if op.kind not in ("conv2d", "dense"):
        raise NoMatch("not a conv2d/dense")
    x, w = int_source(graph, op.inputs[0]), int_source(graph, op.inputs[1])
    if not w.is_constant:
        raise NoMatch("weights are not constant")
    if w.type.quant.group_size is not None:
        raise NoMatch("per-group weights need a per-group accumulator (not supported yet)")
    sx, _ = per_tensor(x)
    sy, _ = per_tensor(q.output)
    sw = np.asarray(w.type.quant.scale, np.float64)
    inputs = [x, w]
    if len(op.inputs) == 3:
        bias = float_bias(graph, op.inputs[2])
        bias = np.rint(bias.astype(np.float64) / (sx * sw))
        inputs.append(graph.add_constant(np.clip(bias, -2**31, 2**31 - 1).astype(np.int32), op.name + ".bias_i32"))
    acc = graph.add_op("q" + op.kind, inputs, op.attrs, names=[op.name + ".acc"], before=q)
    axis = 1 if op.kind == "conv2d" else acc.output.type.rank - 1
    attrs = {**multiplier_attrs(sx * sw / sy), "out_dtype": q.output.type.dtype, "axis": axis,
             **clamp_of(act, q.output.type)}
    return graph.add_op("requantize", [acc.output], attrs, types=[q.output.type], names=[op.name + ".rq"],
                        before=q).output


def rule_add_mul(graph, q, op):
    op, act = split_activation(graph, op)
    if op.kind not in ("add", "mul"):
        raise NoMatch("not an add/mul")
    a, b = int_source(graph, op.inputs[0]), int_source(graph, op.inputs[1])
    (sa, _), (sb, _), (sy, _) = per_tensor(a), per_tensor(b), per_tensor(q.output)
    attrs = {"out_dtype": q.output.type.dtype, **clamp_of(act, q.output.type)}
    if op.kind == "mul":
        attrs.update(multiplier_attrs(sa * sb / sy))
    else:
        big = multiplier_attrs(max(sa, sb) / sy)
        shift = big["shift"][0]
        ma, mb = (int(np.rint(s / sy * 2.0 ** shift)) for s in (sa, sb))
        attrs.update(multiplier=[ma, mb], shift=[shift])
    return graph.add_op("q" + op.kind, [a, b], attrs, types=[q.output.type], names=[op.name + ".q"],
                        before=q).output


def rule_reduce_mean(graph, q, op):
    if op.kind != "reduce_mean":
        raise NoMatch("not a reduce_mean")
    x = int_source(graph, op.inputs[0])
    (sx, _), (sy, _) = per_tensor(x), per_tensor(q.output)
    count = int(np.prod([x.type.shape[a] for a in op.attrs["axes"]]))
    attrs = {**op.attrs, **multiplier_attrs(sx / (count * sy)), "out_dtype": q.output.type.dtype}
    return graph.add_op("qreduce_mean", [x], attrs, types=[q.output.type], names=[op.name + ".q"],
                        before=q).output


def rule_move(graph, q, op):
    if op.kind not in MOVE_KINDS:
        raise NoMatch("not a data-movement op")
    x = int_source(graph, op.inputs[0])
    moved_type = TensorType(op.output.type.shape, x.type.dtype, x.type.quant)
    moved = graph.add_op(op.kind, [x], op.attrs, types=[moved_type], names=[op.name + ".int"], before=q)
    return requantize_to(graph, moved.output, q)


def rule_lut(graph, q, op):
    if op.kind not in TABLE_KINDS:
        raise NoMatch("no table form")
    x = int_source(graph, op.inputs[0])
    per_tensor(x)
    lo, hi = dtype_range(x.type.dtype, x.type.quant.bits)
    if hi - lo > 255:
        raise NoMatch("table lookups need an operand of at most 8 bits")
    codes = np.arange(lo, hi + 1)
    reals = dequantize_array(codes, x.type.quant)
    (outs,) = evaluate(op.kind, [reals], op.attrs)
    table = quantize_array(outs, q.output.type.quant, q.output.type.dtype)
    return graph.add_op("lut", [x], {"table": [int(v) for v in table], "out_dtype": q.output.type.dtype},
                        types=[q.output.type], names=[op.name + ".lut"], before=q).output


def rule_concat(graph, q, op):
    if op.kind != "concat":
        raise NoMatch("not a concat")
    per_tensor(q.output)
    parts = []
    for operand in op.inputs:
        x = int_source(graph, operand)
        per_tensor(x)
        parts.append(x if x.type == TensorType(x.type.shape, q.output.type.dtype, q.output.type.quant)
                     else requantize_to(graph, x, q, shape=x.type.shape))
    return graph.add_op("concat", parts, op.attrs, types=[q.output.type], names=[op.name + ".int"],
                        before=q).output


def requantize_to(graph, x, q, shape=None):
    """`x` re-expressed with q's parameters: itself when they match, else a requantize's result."""
    want = TensorType(shape or q.output.type.shape, q.output.type.dtype, q.output.type.quant)
    if x.type == want:
        return x
    (sx, _), (sy, _) = per_tensor(x), per_tensor(q.output)
    attrs = {**multiplier_attrs(sx / sy), "out_dtype": want.dtype}
    return graph.add_op("requantize", [x], attrs, types=[want], names=[x.name + ".rq"], before=q).output


def explain(kind: str, why: list[str]) -> str:
    """Why no rule folded an op: the reasons of the rules that knew the op kind, else 'no integer form'."""
    relevant = [w for w in dict.fromkeys(why) if not w.startswith("not ") and w != "no table form"]
    return f"{kind}: " + ("; ".join(relevant) if relevant else "has no integer form")


RULES = (rule_conv_dense, rule_add_mul, rule_reduce_mean, rule_move, rule_lut, rule_concat)


@register_pass
class FoldFakeQuant(Pass):
    """Turn dequantize -> op -> quantize into integer ops (qconv2d + requantize, qadd, lut, ...), fold
    quantized weights into integer constants, and turn quantize(dequantize(x)) into x or a requantize."""

    name = "fold-fake-quant"

    def run(self, graph, ctx):
        changed = fold_weight_quantizes(graph)
        reasons = {}
        for q in graph.find_ops("quantize"):
            producer = graph.producer(q.inputs[0])
            if producer is None or producer.kind == "dequantize":
                continue
            why = []
            for rule in RULES:
                try:
                    new = rule(graph, q, producer)
                except NoMatch as e:
                    why.append(str(e))
                    continue
                replace(graph, q, new)
                changed = True
                break
            else:
                reasons[producer.name] = explain(producer.kind, why)
        for q in graph.find_ops("quantize"):
            dq = graph.producer(q.inputs[0])
            if dq is None or dq.kind != "dequantize":
                continue
            try:
                new = requantize_to(graph, dq.inputs[0], q)
            except NoMatch:
                continue
            if new is dq.inputs[0]:                       # the pair cancels
                graph.replace_all_uses(q.output, new)
                graph.remove_op(q)
            else:
                replace(graph, q, new)
            changed = True
        if changed:
            graph.remove_dead()
        for op in graph.ops:                          # every float op left, sandwiched or not
            if op.kind not in ("quantize", "dequantize") and is_float(op.outputs[0].type.dtype):
                reasons.setdefault(op.name, explain(op.kind, []))
        ctx.analyses.float_ops = {name: reasons[name] for name in sorted(reasons) if graph.has_value(name)}
        return PassResult(graph, changed)
