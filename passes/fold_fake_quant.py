"""fold-fake-quant: rewrite dequantize -> float op -> quantize sandwiches into integer ops.

Works on graphs written by `quantize` and on QDQ models imported from other tools. Each rule
looks at one `quantize` and the float op feeding it; operands must come from `dequantize`.
Rules match first (checking every operand and parameter) and only then rewrite, so a rule that
does not apply leaves no op behind. What cannot become integer stays float between a dequantize
and a quantize, and ctx.analyses.float_ops says which ops and why.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from qpass import Pass, PassResult, register_pass
from qpass.interpreter import evaluate, run_op
from qpass.ir.fixed_point import quantize_multiplier
from qpass.ir.opdef import Trait, has_trait
from qpass.ir.rewrite import Match, NoMatch, Rule, apply_rules
from qpass.ir.types import TensorType, dtype_range, is_float
from qpass.quant.params import dequantize_array, quantize_array


def int_source(graph, value):
    """The integer value a float operand was dequantized from."""
    producer = graph.producer(value)
    if producer is None or producer.kind != "dequantize":
        raise NoMatch(f"operand %{value.name} is not dequantized from an integer")
    return producer.inputs[0]


def per_tensor(value):
    """(scale, zero point) of a per-tensor quantized value."""
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
    """The fixed-point multiplier/shift attributes that scale by `real` (a scalar or per channel)."""
    m, s = quantize_multiplier(np.atleast_1d(real))
    return {"multiplier": [int(x) for x in m], "shift": [int(x) for x in s]}


def float_bias(graph, value) -> np.ndarray:
    """A bias's real values: a float constant, or a dequantized integer constant (QDQ models)."""
    if value.is_constant:
        return value.data
    producer = graph.producer(value)
    if producer is not None and producer.kind == "dequantize" and producer.inputs[0].is_constant:
        source = producer.inputs[0]
        return dequantize_array(source.data, source.type.quant)
    raise NoMatch("bias is not constant")


def target_type(q, shape=None) -> TensorType:
    """q's result dtype and quantization, at `shape` (q's own by default)."""
    out = q.output.type
    return TensorType(out.shape if shape is None else shape, out.dtype, out.quant)


def rescale(x, have: TensorType, q, shape=None):
    """The attributes of a requantize taking `x` (of type `have`) to q's parameters, or None when
    it has them already; raises NoMatch unless both are per tensor."""
    want = target_type(q, shape)
    if have == want:
        return None
    (sx, _), (sy, _) = per_tensor(x), per_tensor(q.output)
    return {**multiplier_attrs(sx / sy), "out_dtype": want.dtype}


def requantized(graph, x, attrs, q, shape=None):
    """`x` re-expressed with q's parameters (`attrs` from `rescale`): itself for None, else a
    requantize placed ahead of q."""
    if attrs is None:
        return x
    return graph.add_op("requantize", [x], attrs, types=[target_type(q, shape)], names=[x.name + ".rq"],
                        before=q).output


# --------------------------------------------------------------------------- rules
def folding(name, match, build) -> Rule:
    """A rule whose rewrite builds the integer value that replaces (and takes the name of) q."""
    return Rule(name, match, lambda graph, q, m: graph.replace_op(q, build(graph, q, m)))


def sandwiched(graph, q):
    """The float op whose result q quantizes."""
    producer = graph.producer(q.inputs[0])
    if producer is None or producer.kind == "dequantize":
        raise NoMatch("not a float op's result")
    return producer


def split_activation(graph, op):
    """(producer, activation) when `op` is a ReLU/Clip fused onto its producer, else (op, None)."""
    if not has_trait(op.kind, Trait.ACTIVATION):
        return op, None
    producer = graph.producer(op.inputs[0])
    if producer is None or len(graph.users(producer.output)) != 1:
        raise NoMatch("the activation's producer has other readers")
    return producer, op


def match_conv_dense(graph, q):
    """conv2d/dense (+ ReLU/Clip) over dequantized activations and constant weights, per-tensor output."""
    op, act = split_activation(graph, sandwiched(graph, q))
    if not has_trait(op.kind, Trait.WEIGHTED) or has_trait(op.kind, Trait.INTEGER):
        raise NoMatch("not a conv2d/dense")
    x, w = int_source(graph, op.inputs[0]), int_source(graph, op.inputs[1])
    if not w.is_constant:
        raise NoMatch("weights are not constant")
    if w.type.quant.group_size is not None:
        raise NoMatch("per-group weights need a per-group accumulator (not supported yet)")
    sx, _ = per_tensor(x)
    sy, _ = per_tensor(q.output)
    sw = np.asarray(w.type.quant.scale, np.float64)
    bias, headroom = None, None
    if len(op.inputs) == 3:
        real = float_bias(graph, op.inputs[2]).astype(np.float64)
        headroom = _bias_headroom(w, sw, real, sx)
        if headroom is not None:
            sw = headroom[1]
        bias = np.rint(real / (sx * sw))
        bias = np.clip(bias, -2**31, 2**31 - 1).astype(np.int32)
    return Match(op=op, act=act, x=x, w=w, bias=bias, headroom=headroom, rescale=multiplier_attrs(sx * sw / sy))


BIAS_LIMIT = 2 ** 30      # |int32 bias| at most: the rest of the accumulator holds sum(x * w) and zero points


def _bias_headroom(w, sw, bias: np.ndarray, sx: float):
    """(weights, scales) for per-channel weights whose bias in units of sx * sw would not fit
    BIAS_LIMIT (a channel whose weights are all but zero, so its scale is tiny): those channels get
    the smallest scale that fits and their weights requantize to that coarser grid (they round to
    about 0 either way), so the bias stays what the float model adds where clipping it would
    silence the channel. None when every channel fits."""
    quant = w.type.quant
    if quant.axis != 0 or sw.ndim != 1:
        return None
    needed = np.abs(bias) / (sx * BIAS_LIMIT)
    if not np.any(sw < needed):
        return None
    scale = np.maximum(sw, needed).astype(np.float32).astype(np.float64)
    shape = (-1,) + (1,) * (w.data.ndim - 1)
    zero = np.asarray(quant.zero_point, np.float64).reshape(shape)
    lo, hi = dtype_range(w.type.dtype) if quant.bits is None else (-(1 << (quant.bits - 1)), (1 << (quant.bits - 1)) - 1)
    real = (w.data.astype(np.float64) - zero) * sw.reshape(shape)
    data = np.clip(np.rint(real / scale.reshape(shape)) + zero, lo, hi).astype(w.data.dtype)
    return data, scale


def build_conv_dense(graph, q, m):
    """qconv2d/qdense with an i32 bias, then a requantize carrying the activation's clamp."""
    op, inputs = m.op, [m.x, m.w]
    if m.headroom is not None:
        data, scale = m.headroom
        inputs[1] = graph.add_constant(data, m.w.name + ".headroom", dtype=m.w.type.dtype,
                                       quant=dataclasses.replace(m.w.type.quant, scale=scale.astype(np.float32)))
    if m.bias is not None:
        inputs.append(graph.add_constant(m.bias, op.name + ".bias_i32"))
    acc = graph.add_op("q" + op.kind, inputs, op.attrs, names=[op.name + ".acc"], before=q)
    axis = 1 if op.kind == "conv2d" else acc.output.type.rank - 1
    attrs = {**m.rescale, "out_dtype": q.output.type.dtype, "axis": axis, **clamp_of(m.act, q.output.type)}
    return graph.add_op("requantize", [acc.output], attrs, types=[q.output.type], names=[op.name + ".rq"],
                        before=q).output


def match_matmul(graph, q):
    """matmul of two per-tensor dequantized 8-bit activations (attention's Q @ K^T, P @ V)."""
    op = sandwiched(graph, q)
    if op.kind != "matmul":
        raise NoMatch("not a matmul")
    a, b = int_source(graph, op.inputs[0]), int_source(graph, op.inputs[1])
    if a.type.rank < 2 or b.type.rank < 2:
        raise NoMatch("qmatmul needs operands of rank >= 2")
    (sa, _), (sb, _), (sy, _) = per_tensor(a), per_tensor(b), per_tensor(q.output)
    return Match(op=op, a=a, b=b, rescale=multiplier_attrs(sa * sb / sy))


def build_matmul(graph, q, m):
    """qmatmul (i32 accumulator), then a requantize to q's parameters (fuse-requant joins them)."""
    acc = graph.add_op("qmatmul", [m.a, m.b], names=[m.op.name + ".acc"], before=q)
    return graph.add_op("requantize", [acc.output], {**m.rescale, "out_dtype": q.output.type.dtype},
                        types=[q.output.type], names=[m.op.name + ".rq"], before=q).output


def match_add_mul(graph, q):
    """add/mul (+ ReLU/Clip) of two per-tensor dequantized values."""
    op, act = split_activation(graph, sandwiched(graph, q))
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
    return Match(op=op, operands=[a, b], attrs=attrs)


def build_add_mul(graph, q, m):
    """qadd/qmul with the rescaling multipliers."""
    return graph.add_op("q" + m.op.kind, m.operands, m.attrs, types=[q.output.type], names=[m.op.name + ".q"],
                        before=q).output


def match_reduce_mean(graph, q):
    """reduce_mean of a per-tensor dequantized value."""
    op = sandwiched(graph, q)
    if op.kind != "reduce_mean":
        raise NoMatch("not a reduce_mean")
    x = int_source(graph, op.inputs[0])
    (sx, _), (sy, _) = per_tensor(x), per_tensor(q.output)
    count = int(np.prod([x.type.shape[a] for a in op.attrs["axes"]]))
    return Match(op=op, x=x, attrs={**op.attrs, **multiplier_attrs(sx / (count * sy)),
                                    "out_dtype": q.output.type.dtype})


def build_reduce_mean(graph, q, m):
    """qreduce_mean, the count folded into its multiplier."""
    return graph.add_op("qreduce_mean", [m.x], m.attrs, types=[q.output.type], names=[m.op.name + ".q"],
                        before=q).output


def match_move(graph, q):
    """A data-movement op of a dequantized value (requantized after, if q's parameters differ)."""
    op = sandwiched(graph, q)
    if not has_trait(op.kind, Trait.DATA_MOVEMENT):
        raise NoMatch("not a data-movement op")
    x = int_source(graph, op.inputs[0])
    moved = TensorType(op.output.type.shape, x.type.dtype, x.type.quant)
    return Match(op=op, x=x, moved=moved, rescale=rescale(x, moved, q))


def build_move(graph, q, m):
    """The same movement on the integer value, then a requantize if needed."""
    moved = graph.add_op(m.op.kind, [m.x], m.op.attrs, types=[m.moved], names=[m.op.name + ".int"], before=q)
    return requantized(graph, moved.output, m.rescale, q)


def match_lut(graph, q):
    """A table-foldable unary op of a per-tensor dequantized value of at most 8 bits."""
    op = sandwiched(graph, q)
    if not has_trait(op.kind, Trait.TABLE):
        raise NoMatch("no table form")
    x = int_source(graph, op.inputs[0])
    per_tensor(x)
    lo, hi = dtype_range(x.type.dtype, x.type.quant.bits)
    if hi - lo > 255:
        raise NoMatch("table lookups need an operand of at most 8 bits")
    return Match(op=op, x=x, codes=np.arange(lo, hi + 1))


def build_lut(graph, q, m):
    """A lookup table: the op evaluated on every integer code, quantized with q's parameters."""
    (outs,) = evaluate(m.op.kind, [dequantize_array(m.codes, m.x.type.quant)], m.op.attrs)
    table = quantize_array(outs, q.output.type.quant, q.output.type.dtype)
    return graph.add_op("lut", [m.x], {"table": [int(v) for v in table], "out_dtype": q.output.type.dtype},
                        types=[q.output.type], names=[m.op.name + ".lut"], before=q).output


def match_concat(graph, q):
    """concat of per-tensor dequantized values only."""
    op = sandwiched(graph, q)
    if op.kind != "concat":
        raise NoMatch("not a concat")
    per_tensor(q.output)
    parts = []
    for operand in op.inputs:                     # every operand is checked before anything is built
        x = int_source(graph, operand)
        per_tensor(x)
        parts.append((x, rescale(x, x.type, q, shape=x.type.shape)))
    return Match(op=op, parts=parts)


def build_concat(graph, q, m):
    """An integer concat of the operands, each requantized to q's parameters where they differ."""
    parts = [requantized(graph, x, attrs, q, shape=x.type.shape) for x, attrs in m.parts]
    return graph.add_op("concat", parts, m.op.attrs, types=[q.output.type], names=[m.op.name + ".int"],
                        before=q).output


def match_constant_quantize(graph, q):
    """A quantize of a constant (a weight)."""
    if not q.inputs[0].is_constant:
        raise NoMatch("not a constant")
    return Match()


def fold_constant_quantize(graph, q, m):
    """quantize(float constant) becomes an integer constant."""
    (data,) = run_op(q, [q.inputs[0].data])
    const = graph.add_constant(data, q.output.name, dtype=q.output.type.dtype, quant=q.output.type.quant)
    graph.replace_op(q, const)


def match_requantize_pair(graph, q):
    """quantize(dequantize(x)) with per-tensor parameters, or equal ones."""
    dq = graph.producer(q.inputs[0])
    if dq is None or dq.kind != "dequantize":
        raise NoMatch("not a dequantize's result")
    x = dq.inputs[0]
    return Match(x=x, rescale=rescale(x, x.type, q))


def fold_requantize_pair(graph, q, m):
    """quantize(dequantize(x)) becomes x when the parameters agree (it keeps its name), else a requantize."""
    if m.rescale is None:
        graph.replace_op(q, m.x, rename=False)
    else:
        graph.replace_op(q, requantized(graph, m.x, m.rescale, q))


def explain(kind: str, why: list[str]) -> str:
    """Why no rule folded an op: the reasons of the rules that knew the op kind, else 'no integer form'."""
    relevant = [w for w in dict.fromkeys(why) if not w.startswith("not ") and w != "no table form"]
    return f"{kind}: " + ("; ".join(relevant) if relevant else "has no integer form")


WEIGHTS = (Rule("constant-quantize", match_constant_quantize, fold_constant_quantize),)
SANDWICHES = (folding("conv-dense", match_conv_dense, build_conv_dense),
              folding("matmul", match_matmul, build_matmul),
              folding("add-mul", match_add_mul, build_add_mul),
              folding("reduce-mean", match_reduce_mean, build_reduce_mean),
              folding("move", match_move, build_move),
              folding("lut", match_lut, build_lut),
              folding("concat", match_concat, build_concat))
PAIRS = (Rule("requantize-pair", match_requantize_pair, fold_requantize_pair),)


@register_pass
class FoldFakeQuant(Pass):
    """Turn dequantize -> op -> quantize into integer ops (qconv2d + requantize, qmatmul, qadd, lut, ...), fold
    quantized weights into integer constants, and turn quantize(dequantize(x)) into x or a requantize."""

    name = "fold-fake-quant"

    def run(self, graph, ctx):
        start = graph.revision
        apply_rules(graph, WEIGHTS, anchor_kind="quantize")
        reasons = {}
        for q, why in apply_rules(graph, SANDWICHES, anchor_kind="quantize").failures.items():
            producer = graph.producer(q.inputs[0])
            if producer is not None and producer.kind != "dequantize":
                reasons[producer.name] = explain(producer.kind, why)
        apply_rules(graph, PAIRS, anchor_kind="quantize")
        changed = graph.revision != start
        if changed:
            graph.remove_dead()
        for op in graph.ops:                          # every float op left, sandwiched or not
            if op.kind not in ("quantize", "dequantize") and is_float(op.outputs[0].type.dtype) \
                    and not (op.kind == "cast" and is_float(op.inputs[0].type.dtype)):   # f16 <-> f32 boundary
                reasons.setdefault(op.name, explain(op.kind, []))
        reasons.update(ctx.analyses.custom.get("quantize", {}).get("float_ops", {}))   # quantize kept these float
        ctx.analyses.float_ops = {name: reasons[name] for name in sorted(reasons) if graph.has_value(name)}
        return PassResult(graph, changed)
