"""What an op is, defined once: `OpDef` holds an op's name, operands and attributes, type
inference, traits, interpreter kernel and lowering; the registry maps names to definitions.

Passes ask traits (`op_def(kind).has(Trait.TABLE)`), never hand-kept sets of op names. The
built-in definitions live in `qpass.ops` (one module per family) and are found on first use, as
are those of the `qpass.ops` entry-point group; `define_op` registers an op from anywhere.

    define_op(OpDef("swish", infer=same_float_type, traits={Trait.ELEMENTWISE, Trait.TABLE},
                    kernel=lambda op, x: x * special.expit(x),
                    lower=lambda low, op: ...))
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import importlib
from typing import Callable, Optional, Sequence

from qpass.errors import IRError

ENTRY_POINT_GROUP = "qpass.ops"
BUILTIN_MODULES = ("qpass.ops.elementwise", "qpass.ops.nn", "qpass.ops.movement", "qpass.ops.quantization",
                   "qpass.ops.integer", "qpass.ops.math", "qpass.ops.logic", "qpass.ops.fallback",
                   "qpass.ops.transformer")


class Trait(str, enum.Enum):
    """Facts about an op that passes rely on; each says what a pass may do with the op."""

    ELEMENTWISE = "elementwise"                  # result[i] depends on operand values at i only (broadcasting)
    DATA_MOVEMENT = "data-movement"              # moves values unchanged: an integer operand passes through,
    #                                              keeping its quantization (quantize reuses the operand's)
    FOLLOWS_OPERAND = "follows-operand-type"     # the result's dtype and quantization are its operands'
    WEIGHTED = "weighted"                        # operand 1 is a weight quantized along its axis 0 (outputs)
    TABLE = "table-foldable"                     # a unary function of one value: a lookup table on 8-bit
    #                                              integers computes it exactly
    INTEGER_FORM = "has-integer-form"            # fold-fake-quant rewrites it to integer ops
    ACTIVATION = "fusable-activation"            # a clamp of the producer's requantize implements it
    FUSES_ACTIVATION = "fuses-activation"        # an ACTIVATION right after it folds into its integer form
    INTEGER = "integer"                          # an op of the integer IR (no float inside)
    EPILOGUE = "has-requantize-epilogue"         # a requantize of its i32 result fuses into it
    RETYPABLE_RESULT = "retypable-result"        # takes its 8-bit result dtype from `out_dtype`: its
    #                                              signedness may flip (integer attrs naming results shift)
    READS_QUANTIZATION = "reads-quantization"    # reads 8-bit operands only through their annotation
    POSITIVE_HOMOGENEOUS = "positive-homogeneous"  # f(s x) = s f(x) for s > 0: per-channel positive
    #                                              scaling passes through it (equalize-cross-layer)


InferFn = Callable[[Sequence[object], dict], list]
KernelFn = Callable[..., object]
LowerFn = Callable[[object, object], object]
CheckResultsFn = Callable[[Sequence[object], dict, Sequence[object]], Optional[str]]


@dataclasses.dataclass(frozen=True)
class OpDef:
    """One op kind.

    `infer(operand_types, attrs)` gives the result types or raises IRError naming the problem.
    `kernel(op, *arrays)` is the interpreter's numpy implementation (one array per result).
    `lower(lowering, op)` emits it into a TVM Relax module: it returns the Relax expression of a
    single result, or None when it bound the results itself (qpass.targets.lower.Lowering lists
    what `lowering` offers); `lower=None` means no target compiles the op, which `qpass compile`
    reports before any other work. `static_range(attrs)` is the (lo, hi) range every result
    value lies in whatever the input (None for an open end), if there is one.
    `check_results(operand_types, attrs, declared_types)` replaces the comparison with `infer`
    in verification, for an op whose result types are given rather than inferred (quantize): it
    says why the declared types are wrong, or returns None. `lowering_problem(op)` says why one
    op of a kind that has a `lower` still cannot lower (None when it can), for an op whose
    lowering depends on its attributes (onnx_node).
    """

    name: str
    infer: InferFn
    inputs: tuple[int, int] = (1, 1)
    attrs: tuple[str, ...] = ()
    optional_attrs: tuple[str, ...] = ()
    traits: frozenset = frozenset()
    kernel: Optional[KernelFn] = None
    lower: Optional[LowerFn] = None
    static_range: Optional[Callable[[dict], tuple]] = None
    doc: str = ""
    check_results: Optional[CheckResultsFn] = None
    lowering_problem: Optional[Callable[[object], Optional[str]]] = None

    def __post_init__(self):
        inputs = (self.inputs, self.inputs) if isinstance(self.inputs, int) else tuple(self.inputs)
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "traits", frozenset(Trait(t) for t in self.traits))
        object.__setattr__(self, "attrs", tuple(self.attrs))
        object.__setattr__(self, "optional_attrs", tuple(self.optional_attrs))

    def has(self, trait: Trait) -> bool:
        return trait in self.traits

    @property
    def builtin(self) -> bool:
        """Whether qpass defines the op (rather than a plugin or the user)."""
        return getattr(self.infer, "__module__", None) in BUILTIN_MODULES

    @property
    def min_inputs(self) -> int:
        return self.inputs[0]

    @property
    def max_inputs(self) -> int:
        return self.inputs[1]


class OpRegistry:
    """Name -> OpDef; the built-in families and entry-point plugins load on first lookup."""

    def __init__(self):
        self._ops: dict[str, OpDef] = {}
        self._discovered = False

    def define(self, definition: OpDef) -> OpDef:
        if not definition.builtin:
            self.discover()                  # built-ins first, so a clash always blames the newcomer
        existing = self._ops.get(definition.name)
        if existing is not None:
            raise IRError(f"op kind '{definition.name}' is already defined (by {existing.infer.__module__}); "
                          "pick another name")
        self._ops[definition.name] = definition
        return definition

    def discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
        from importlib.metadata import entry_points
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()
            except Exception as e:
                raise IRError(f"cannot load op plugin '{ep.name}' ({ep.value}) from entry-point group "
                              f"'{ENTRY_POINT_GROUP}': {type(e).__name__}: {e}") from e

    def get(self, kind: str) -> OpDef:
        self.discover()
        try:
            return self._ops[kind]
        except KeyError:
            close = difflib.get_close_matches(kind, self._ops, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise IRError(f"unknown op kind '{kind}'.{hint} Known ops: {', '.join(sorted(self._ops))}") from None

    def __contains__(self, kind: str) -> bool:
        self.discover()
        return kind in self._ops

    def __iter__(self):
        self.discover()
        return iter(sorted(self._ops))

    def definitions(self) -> list[OpDef]:
        self.discover()
        return [self._ops[k] for k in sorted(self._ops)]


OPS = OpRegistry()


def define_op(definition: OpDef) -> OpDef:
    """Register an op definition; a name defined twice is an error."""
    return OPS.define(definition)


def op_def(kind: str) -> OpDef:
    """The definition of op `kind`; an unknown kind raises IRError with the closest names."""
    return OPS.get(kind)


def has_trait(kind: str, trait: Trait) -> bool:
    """Whether op `kind` has `trait` (False for an unknown kind)."""
    return kind in OPS and OPS.get(kind).has(trait)


def kinds_with(trait: Trait) -> frozenset:
    """Every registered op kind with `trait`."""
    return frozenset(d.name for d in OPS.definitions() if d.has(trait))


def infer_types(kind: str, types: Sequence, attrs: dict) -> list:
    """Result types of op `kind` for operand `types`; raises IRError naming what is wrong."""
    d = op_def(kind)
    if not d.min_inputs <= len(types) <= d.max_inputs:
        want = d.min_inputs if d.min_inputs == d.max_inputs else f"{d.min_inputs} to {d.max_inputs}"
        raise IRError(f"{kind} takes {want} operands, got {len(types)}")
    missing = [a for a in d.attrs if a not in attrs]
    if missing:
        raise IRError(f"{kind} needs attribute(s) {', '.join(missing)}")
    unknown = sorted(set(attrs) - set(d.attrs) - set(d.optional_attrs))
    if unknown:
        raise IRError(f"{kind} has no attribute(s) {', '.join(unknown)}; it takes "
                      f"{', '.join(d.attrs + d.optional_attrs) or 'none'}")
    return d.infer(types, attrs)


def check_result_types(kind: str, inputs: Sequence, attrs: dict, declared: Sequence) -> Optional[str]:
    """Why `declared` result types disagree with op `kind` on these operands, or None (verify uses it)."""
    d = op_def(kind)
    if d.check_results is not None:
        return d.check_results(inputs, attrs, declared)
    inferred = infer_types(kind, inputs, attrs)
    if len(inferred) != len(declared):
        return f"{kind} gives {len(inferred)} results, {len(declared)} declared"
    for i, (a, b) in enumerate(zip(inferred, declared)):
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"result {i} is declared {b} but {kind} of these operands gives {a}"
    return None
