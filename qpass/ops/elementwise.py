"""Elementwise ops: unary activations and functions, clip, binary arithmetic with numpy
broadcasting, and cast.

Semantics follow the ONNX operator of the same name (Relu, Sigmoid, Tanh, Erf, Sqrt, Exp,
HardSwish, LeakyRelu, HardSigmoid, Gelu, Clip, Add, Sub, Mul, Div, Pow, Cast), and silu is
x * Sigmoid(x), which ONNX has no op for; attributes are normalized by the frontend, so an op's
meaning never depends on the opset it came from. Kernels compute in the operand's float dtype
(float32 for imported models), so results match ONNX Runtime to float rounding; integer
arithmetic wraps, and integer division truncates, like ONNX.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from qpass.errors import InterpreterError, QpassError
from qpass.ir.opdef import OpDef, Trait, define_op
from qpass.ir.types import TensorType, is_float, numpy_dtype
from qpass.ops.common import broadcast_shape, float_operand, like, same_dtype, scalar_like, trunc_div

T = Trait
TABLE_UNARY = frozenset({T.ELEMENTWISE, T.TABLE, T.INTEGER_FORM})


def _unary(kind):
    def infer(types, attrs):
        float_operand(kind, types[0])
        return [types[0].without_quant()]
    return infer


def _binary(kind):
    def infer(types, attrs):
        dtype = same_dtype(kind, types)
        return [TensorType(broadcast_shape(kind, types), dtype)]
    return infer


def _relax_unary(name):
    """Lower to the Relax op `name` of the one operand."""
    def lower(low, op):
        return getattr(low.relax.op, name)(low.get(op.inputs[0]))
    return lower


def _relax_binary(name):
    """Lower to the Relax op `name` of the two operands (Relax broadcasts like numpy)."""
    def lower(low, op):
        return getattr(low.relax.op, name)(low.get(op.inputs[0]), low.get(op.inputs[1]))
    return lower


def _lower_pow(low, op):
    """Relax power, which TVM defines for floats only (integer pow would need numpy's wrapping and
    its error on negative exponents)."""
    dtype = op.inputs[0].type.dtype
    if not is_float(dtype):
        raise QpassError(f"%{op.name}: pow of {dtype} operands has no lowering (TVM's power takes floats only); "
                         "cast the operands to f32 first")
    return _relax_binary("power")(low, op)


# --------------------------------------------------------------------------- unary functions
def _relu(op, x):
    """max(x, 0)."""
    return np.maximum(x, like(x, 0))


define_op(OpDef("relu", infer=_unary("relu"), traits=TABLE_UNARY | {T.ACTIVATION, T.POSITIVE_HOMOGENEOUS},
                kernel=_relu,
                lower=lambda low, op: low.relax.op.nn.relu(low.get(op.inputs[0])),
                static_range=lambda a: (0.0, None), doc="elementwise relu"))

# Plain unary functions: the kernel is the numpy/scipy function itself (expit cannot overflow).
_RANGES = {"sigmoid": lambda a: (0.0, 1.0), "tanh": lambda a: (-1.0, 1.0)}
for _kind, _fn in {"sigmoid": special.expit, "tanh": np.tanh, "erf": special.erf, "sqrt": np.sqrt,
                   "exp": np.exp}.items():
    define_op(OpDef(_kind, infer=_unary(_kind), traits=TABLE_UNARY, kernel=lambda op, x, fn=_fn: fn(x),
                    lower=_relax_unary(_kind), static_range=_RANGES.get(_kind), doc=f"elementwise {_kind}"))


def _hard_swish(op, x):
    """x * hard_sigmoid(x) with ONNX's alpha=1/6, beta=0.5."""
    return x * np.clip(x * like(x, 1 / 6) + like(x, 0.5), 0, 1)


def _lower_hard_sigmoid_of(low, op, alpha, beta):
    """clip(x * alpha + beta, 0, 1) of the operand, in its dtype (shared by hard_sigmoid and hard_swish)."""
    r, x = low.relax.op, op.inputs[0]
    affine = r.add(r.multiply(low.get(x), scalar_like(low, alpha, x)), scalar_like(low, beta, x))
    return r.clip(affine, 0.0, 1.0)


def _lower_hard_swish(low, op):
    return low.relax.op.multiply(low.get(op.inputs[0]), _lower_hard_sigmoid_of(low, op, 1 / 6, 0.5))


define_op(OpDef("hard_swish", infer=_unary("hard_swish"), traits=TABLE_UNARY, kernel=_hard_swish,
                lower=_lower_hard_swish, doc="elementwise hard_swish"))


def _silu(op, x):
    """x * sigmoid(x), in the order ONNX's Mul(x, Sigmoid(x)) computes it."""
    return x * special.expit(x)


define_op(OpDef("silu", infer=_unary("silu"), traits=TABLE_UNARY, kernel=_silu,
                lower=lambda low, op: low.relax.op.multiply(low.get(op.inputs[0]),
                                                            low.relax.op.sigmoid(low.get(op.inputs[0]))),
                doc="x * sigmoid(x) (swish); recognize-activations finds it in x * Sigmoid(x)"))


def _leaky_relu(op, x):
    """x for x >= 0, alpha * x below."""
    return np.where(x >= 0, x, x * like(x, op.attrs["alpha"]))


define_op(OpDef("leaky_relu", infer=_unary("leaky_relu"), attrs=("alpha",),
                traits=TABLE_UNARY | {T.POSITIVE_HOMOGENEOUS},
                kernel=_leaky_relu,
                # TOPI's select(x > 0, x, alpha * x) differs from the kernel only at x == 0, where both are 0
                lower=lambda low, op: low.relax.op.nn.leakyrelu(low.get(op.inputs[0]), float(op.attrs["alpha"]))))


def _hard_sigmoid(op, x):
    """max(0, min(1, alpha * x + beta))."""
    return np.clip(x * like(x, op.attrs["alpha"]) + like(x, op.attrs["beta"]), 0, 1)


define_op(OpDef("hard_sigmoid", infer=_unary("hard_sigmoid"), attrs=("alpha", "beta"), traits=TABLE_UNARY,
                kernel=_hard_sigmoid, static_range=lambda a: (0.0, 1.0), doc="max(0, min(1, alpha * x + beta))",
                lower=lambda low, op: _lower_hard_sigmoid_of(low, op, op.attrs["alpha"], op.attrs["beta"])))


def _gelu(op, x):
    """0.5 * x * (1 + erf(x / sqrt(2))), or its tanh approximation when approximate='tanh'."""
    approximate = op.attrs.get("approximate", "none")
    if approximate == "tanh":
        inner = like(x, np.sqrt(2 / np.pi)) * (x + like(x, 0.044715) * x * x * x)
        return like(x, 0.5) * x * (1 + np.tanh(inner))
    if approximate != "none":
        raise InterpreterError(f"gelu: approximate={approximate!r} is not one of 'none', 'tanh'")
    return like(x, 0.5) * x * (1 + special.erf(x * like(x, np.sqrt(0.5))))


def _lower_gelu(low, op):
    """Relax nn.gelu (0.5 x (1 + erf(x / sqrt 2))) or nn.gelu_tanh, the kernel's two formulas."""
    approximate = op.attrs.get("approximate", "none")
    forms = {"none": low.relax.op.nn.gelu, "tanh": low.relax.op.nn.gelu_tanh}
    if approximate not in forms:
        raise QpassError(f"%{op.name}: gelu approximate={approximate!r} has no lowering; use 'none' or 'tanh'")
    return forms[approximate](low.get(op.inputs[0]))


define_op(OpDef("gelu", infer=_unary("gelu"), optional_attrs=("approximate",), traits=TABLE_UNARY, kernel=_gelu,
                lower=_lower_gelu, doc="approximate='none' (erf) or 'tanh'"))


# --------------------------------------------------------------------------- clip
def _clip(op, x):
    """Clamp to [min, max]; a missing bound is open."""
    if "min" in op.attrs:
        x = np.maximum(x, like(x, op.attrs["min"]))
    if "max" in op.attrs:
        x = np.minimum(x, like(x, op.attrs["max"]))
    return x


def _lower_clip(low, op):
    lo, hi = op.attrs.get("min"), op.attrs.get("max")
    return low.relax.op.clip(low.get(op.inputs[0]), -3.4e38 if lo is None else lo, 3.4e38 if hi is None else hi)


define_op(OpDef("clip", infer=lambda t, a: [t[0].without_quant()], optional_attrs=("min", "max"),
                traits=TABLE_UNARY | {T.ACTIVATION}, kernel=_clip, lower=_lower_clip,
                static_range=lambda a: (a.get("min"), a.get("max")),
                doc="clamp to [min, max]; a missing bound is open"))


# --------------------------------------------------------------------------- binary arithmetic
def _div(op, a, b):
    """a / b; integer division truncates toward zero like ONNX Div."""
    if a.dtype.kind in "iu":
        return trunc_div(a, b)
    return np.divide(a, b)


_BINARY = {  # kind: (kernel, Relax op or lowering, traits)
    "add": (lambda op, a, b: np.add(a, b), "add", {T.ELEMENTWISE, T.INTEGER_FORM, T.FUSES_ACTIVATION}),
    "sub": (lambda op, a, b: np.subtract(a, b), "subtract", {T.ELEMENTWISE}),
    "mul": (lambda op, a, b: np.multiply(a, b), "multiply", {T.ELEMENTWISE, T.INTEGER_FORM}),
    "div": (_div, "divide", {T.ELEMENTWISE}),
    "pow": (lambda op, a, b: np.power(a, b), _lower_pow, {T.ELEMENTWISE}),
}
for _kind, (_kernel, _lowering, _traits) in _BINARY.items():
    define_op(OpDef(_kind, infer=_binary(_kind), inputs=2, traits=_traits, kernel=_kernel,
                    lower=_lowering if callable(_lowering) else _relax_binary(_lowering),
                    doc=f"elementwise {_kind} with numpy broadcasting"))


# --------------------------------------------------------------------------- cast
def _cast(op, x):
    """Convert to IR dtype `to` (float -> int truncates toward zero)."""
    return x.astype(numpy_dtype(op.attrs["to"]))


define_op(OpDef("cast", infer=lambda t, a: [TensorType(t[0].shape, a["to"])], attrs=("to",),
                traits={T.ELEMENTWISE}, kernel=_cast,
                lower=lambda low, op: low.relax.op.astype(low.get(op.inputs[0]), low.dtype(op.attrs["to"]))))
