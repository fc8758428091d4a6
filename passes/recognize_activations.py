"""recognize-activations: the activations exporters spell out in arithmetic become one op.

ONNX exporters decompose activations: hard-swish as `x * Clip(x + 3, 0, 6) / 6`, GELU as
`0.5 * x * (1 + Erf(x / sqrt 2))`, SiLU as `x * Sigmoid(x)`. Left so, each is three to five float
ops that stay float after quantization (a product of two activations has no 8-bit table); as
`hard_swish`, `gelu` or `silu` it is one unary op that fold-fake-quant turns into a lookup table.
A product is read as its factors (through single-use mul and divide-by-constant ops, in any
order), so every ordering and `/ c` versus `* (1/c)` matches; constants must equal the
activation's to float32 rounding. Intermediate values other ops also read are kept.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from qpass import Pass, PassResult, register_pass
from qpass.ir.rewrite import Match, NoMatch, Rule, apply_rules
from qpass.ir.types import is_float

_RTOL = 1e-5        # float32 spellings of 1/6, 1/sqrt(2), sqrt(2/pi) ... (7 significant digits)


def scalar(value) -> Optional[float]:
    """The number a constant holds in every element, or None."""
    if not value.is_constant or value.type.size == 0 or not is_float(value.type.dtype):
        return None
    flat = np.asarray(value.data).reshape(-1)
    return float(flat[0]) if np.all(flat == flat[0]) else None


def near(number: Optional[float], want: float) -> bool:
    """Whether a constant equals `want` to float32 rounding."""
    return number is not None and math.isclose(number, want, rel_tol=_RTOL)


def producer(graph, value, *kinds):
    """The op producing `value`, which must be one of `kinds`."""
    op = graph.producer(value)
    if op is None or op.kind not in kinds:
        raise NoMatch(f"%{value.name} is not the result of {' or '.join(kinds)}")
    return op


def factors(graph, value, top=True) -> tuple[list, float]:
    """(run-time factors, constant factor) of `value` read as a product: mul and divide-by-constant
    ops are opened when they are the anchor (`top`) or have no other reader."""
    op = graph.producer(value)
    single = len(graph.users(value)) == 1 and not graph.is_output(value)
    if op is not None and op.kind in ("mul", "div") and (top or single):
        a, b = op.inputs
        if op.kind == "mul":
            (fa, ca), (fb, cb) = factors(graph, a, False), factors(graph, b, False)
            return fa + fb, ca * cb
        divisor = scalar(b)
        if divisor:
            fa, ca = factors(graph, a, False)
            return fa, ca / divisor
    number = scalar(value)
    return ([], number) if number is not None else ([value], 1.0)


def offset(graph, value) -> tuple[object, float]:
    """(x, c) for value = x + c (either operand order) or x - c."""
    op = producer(graph, value, "add", "sub")
    a, b = op.inputs
    if scalar(b) is not None:
        return a, scalar(b) * (1 if op.kind == "add" else -1)
    if op.kind == "add" and scalar(a) is not None:
        return b, scalar(a)
    raise NoMatch(f"%{value.name} does not add a constant")


def relu6_of(graph, value):
    """x for value = min(relu(x), 6), min(max(x, 0), 6), max(min(x, 6), 0) or clip(relu(x), max=6)."""
    outer = producer(graph, value, "min", "max", "clip")
    if outer.kind == "clip":
        if set(outer.attrs) != {"max"} or not near(outer.attrs["max"], 6.0):
            raise NoMatch("not a clip to at most 6")
        return producer(graph, outer.inputs[0], "relu").inputs[0]
    bound = 6.0 if outer.kind == "min" else 0.0
    inner, number = _constant_operand(outer)
    if number is None or not near(number, bound):
        raise NoMatch(f"{outer.kind} is not with {bound}")
    inner_op = graph.producer(inner)
    if outer.kind == "min" and inner_op is not None and inner_op.kind == "relu":
        return inner_op.inputs[0]
    inner_op = producer(graph, inner, "max" if outer.kind == "min" else "min")
    x, number = _constant_operand(inner_op)
    if number is None or not near(number, 6.0 - bound):
        raise NoMatch("the inner bound is not the other end of [0, 6]")
    return x


def _constant_operand(op) -> tuple[object, Optional[float]]:
    """(the other operand, the number) of a binary op with one constant operand (None: no constant)."""
    if len(op.inputs) != 2:
        raise NoMatch(f"{op.kind} of {len(op.inputs)} operands")
    a, b = op.inputs
    return (a, scalar(b)) if scalar(b) is not None else (b, scalar(a))


def clip06_of(graph, value):
    """x for value = clip(x + 3, 0, 6)."""
    clip = producer(graph, value, "clip")
    if clip.attrs.get("min") != 0.0 or not near(clip.attrs.get("max"), 6.0):
        raise NoMatch("the clip is not to [0, 6]")
    x, c = offset(graph, clip.inputs[0])
    if not near(c, 3.0):
        raise NoMatch("the clip is not of x + 3")
    return x


def one_plus(graph, value, kind):
    """The operand of `kind` for value = 1 + kind(t) (either order)."""
    t, c = offset(graph, value)
    if not near(c, 1.0):
        raise NoMatch("not 1 + ...")
    return producer(graph, t, kind).inputs[0]


def _two(values) -> list:
    """The two run-time factors of a product (NoMatch for any other count)."""
    if len(values) != 2:
        raise NoMatch(f"a product of {len(values)} run-time values, not 2")
    return values


def _either(values, find):
    """x, where `find` of one of the two factors gives x and x is the other factor."""
    reasons = []
    for this, other in (values, values[::-1]):
        try:
            if find(this) is other:
                return other
            reasons.append(f"%{this.name} is not of %{other.name}")
        except NoMatch as e:
            reasons.append(str(e))
    raise NoMatch("; ".join(reasons))


def match_relu6(graph, op):
    """min(relu(x), 6) and friends -> clip(x, 0, 6)."""
    return Match(x=relu6_of(graph, op.output), kind="clip", attrs={"min": 0.0, "max": 6.0})


def match_hard_swish(graph, op):
    """x * clip(x + 3, 0, 6) / 6 (any order, / 6 or * (1/6)), or x * hard_sigmoid(x)."""
    values, c = factors(graph, op.output)
    values = _two(values)
    if near(c, 1 / 6):
        x = _either(values, lambda v: clip06_of(graph, v))
    elif near(c, 1.0):
        def of_hard_sigmoid(v):
            hs = producer(graph, v, "hard_sigmoid")
            if not (near(hs.attrs["alpha"], 1 / 6) and near(hs.attrs["beta"], 0.5)):
                raise NoMatch("the hard_sigmoid is not hard-swish's (alpha 1/6, beta 0.5)")
            return hs.inputs[0]
        x = _either(values, of_hard_sigmoid)
    else:
        raise NoMatch(f"constant factor {c} is neither 1/6 nor 1")
    return Match(x=x, kind="hard_swish", attrs={})


def match_hard_sigmoid(graph, op):
    """clip(x + 3, 0, 6) / 6 (or * (1/6)) -> hard_sigmoid(alpha=1/6, beta=0.5)."""
    values, c = factors(graph, op.output)
    if len(values) != 1 or not near(c, 1 / 6):
        raise NoMatch("not one value times 1/6")
    return Match(x=clip06_of(graph, values[0]), kind="hard_sigmoid", attrs={"alpha": 1 / 6, "beta": 0.5})


def match_silu(graph, op):
    """x * sigmoid(x) (either order) -> silu."""
    x = _either(list(op.inputs), lambda v: producer(graph, v, "sigmoid").inputs[0])
    return Match(x=x, kind="silu", attrs={})


def _erf_argument(graph, value):
    """x for value = 1 + erf(x / sqrt 2) (or erf(x * (1/sqrt 2)))."""
    values, c = factors(graph, one_plus(graph, value, "erf"))
    if len(values) != 1 or not near(c, math.sqrt(0.5)):
        raise NoMatch("erf's operand is not x / sqrt(2)")
    return values[0]


def _tanh_argument(graph, value):
    """x for value = 1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)), x^3 as x*x*x or pow(x, 3)."""
    values, c = factors(graph, one_plus(graph, value, "tanh"))
    if len(values) != 1 or not near(c, math.sqrt(2 / math.pi)):
        raise NoMatch("tanh's operand is not sqrt(2/pi) * (...)")
    total = producer(graph, values[0], "add")
    for x, cubic in (total.inputs, total.inputs[::-1]):
        terms, k = factors(graph, cubic)
        if len(terms) == 1 and graph.producer(terms[0]) is not None and graph.producer(terms[0]).kind == "pow":
            power = graph.producer(terms[0])
            terms = [power.inputs[0]] * 3 if scalar(power.inputs[1]) == 3.0 else terms
        if near(k, 0.044715) and len(terms) == 3 and all(t is x for t in terms):
            return x
    raise NoMatch("tanh's operand is not sqrt(2/pi) * (x + 0.044715 * x^3)")


def match_gelu(graph, op):
    """0.5 * x * (1 + erf(x / sqrt 2)) (any order) or its tanh form -> gelu."""
    values, c = factors(graph, op.output)
    values = _two(values)
    if not near(c, 0.5):
        raise NoMatch(f"constant factor {c} is not 0.5")
    for argument, approximate in ((_erf_argument, "none"), (_tanh_argument, "tanh")):
        try:
            x = _either(values, lambda v: argument(graph, v))
        except NoMatch:
            continue
        return Match(x=x, kind="gelu", attrs={} if approximate == "none" else {"approximate": "tanh"})
    raise NoMatch("neither factor is 1 + erf(x / sqrt 2) nor 1 + tanh(...) of the other")


def recognized(match_fn, anchors):
    """match_fn at ops of the `anchors` kinds, checked to give a float result of the anchor's shape."""
    def match(graph, op):
        if op.kind not in anchors:
            raise NoMatch(f"not {' or '.join(anchors)}")
        found = match_fn(graph, op)
        x, y = found.x.type, op.outputs[0].type
        if x.shape != y.shape or x.dtype != y.dtype or not is_float(x.dtype):
            raise NoMatch(f"%{found.x.name} is {x}, the result {y}: the pattern broadcasts")
        return found
    return match


def replace(graph, op, m):
    """The recognized op over x takes the anchor's place and name."""
    new = graph.add_op(m.kind, [m.x], m.attrs, names=[m.kind], before=op)
    graph.replace_op(op, new.output)


_PRODUCTS = ("mul", "div")
RULES = tuple(Rule(name, recognized(fn, anchors), replace) for name, fn, anchors in (
    ("relu6", match_relu6, ("min", "max", "clip")), ("hard-swish", match_hard_swish, _PRODUCTS),
    ("hard-sigmoid", match_hard_sigmoid, _PRODUCTS), ("silu", match_silu, ("mul",)),
    ("gelu", match_gelu, _PRODUCTS)))


@register_pass
class RecognizeActivations(Pass):
    """Rewrite decomposed activations (hard-swish, hard-sigmoid, GELU erf/tanh, SiLU, ReLU6 as min/max)
    into the one op each stands for, so quantization gives each a lookup table."""

    name = "recognize-activations"

    def run(self, graph, ctx):
        start = graph.revision
        for _ in range(4):              # a rewrite can complete a larger pattern (hard_sigmoid -> hard_swish)
            if not apply_rules(graph, RULES).changed:
                break
        changed = graph.revision != start
        if changed:
            graph.remove_dead()
        return PassResult(graph, changed)
