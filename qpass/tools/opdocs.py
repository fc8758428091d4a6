"""docs/ops.md, generated from the op definitions (`qpass ops --markdown > docs/ops.md`), and the
`qpass ops` command that prints the same table."""

from __future__ import annotations

import sys

from qpass.ir.opdef import OPS, OpDef, Trait
from qpass.tools.commands import command

HEADER = """# Ops

Generated from the op definitions (`qpass/ops/`) by `qpass ops --markdown > docs/ops.md`; a test
checks that this page is current. Every op has one definition: operands, attributes, result-type
inference, traits, interpreter kernel and lowering. Traits are what passes ask about an op:

{traits}

| op | what it computes | operands | attributes ([optional]) | traits | interpreter | lowering | result range |
|---|---|---|---|---|---|---|---|
"""

TRAIT_MEANINGS = {
    Trait.ELEMENTWISE: "each result element depends on the operand elements at its position (broadcasting)",
    Trait.DATA_MOVEMENT: "moves values without changing them; an integer operand passes through with its "
                         "quantization",
    Trait.FOLLOWS_OPERAND: "the result's dtype and quantization are its operands'",
    Trait.WEIGHTED: "operand 1 is a weight with output channels on axis 0",
    Trait.TABLE: "a function of one value: a lookup table computes it exactly on 8-bit integers",
    Trait.INTEGER_FORM: "fold-fake-quant rewrites it into integer ops",
    Trait.ACTIVATION: "the clamp of its producer's requantize can implement it",
    Trait.FUSES_ACTIVATION: "an activation right after it folds into its integer form",
    Trait.INTEGER: "an op of the integer IR: exact integer arithmetic",
    Trait.EPILOGUE: "a requantize of its int32 result fuses into it",
    Trait.RETYPABLE_RESULT: "takes its 8-bit result dtype from `out_dtype`, so its signedness may change",
    Trait.READS_QUANTIZATION: "reads 8-bit operands only through their quantization annotation",
    Trait.POSITIVE_HOMOGENEOUS: "f(s x) = s f(x) for s > 0, so per-channel positive scaling passes through it",
}


def _operands(d: OpDef) -> str:
    lo, hi = d.inputs
    if lo == hi:
        return str(lo)
    return f"{lo} or more" if hi >= 1 << 16 else f"{lo} to {hi}"


def _row(d: OpDef) -> str:
    attrs = ", ".join(list(d.attrs) + [f"[{a}]" for a in d.optional_attrs]) or "-"
    traits = ", ".join(sorted(t.value for t in d.traits)) or "-"
    rng = "-"
    if d.static_range is not None:
        lo, hi = d.static_range({"min": "min", "max": "max"})
        rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
    return (f"| `{d.name}` | {d.doc or '-'} | {_operands(d)} | {attrs} | {traits} | {'yes' if d.kernel else 'none'} | "
            f"{'yes' if d.lower else 'none'} | {rng} |")


def ops_markdown() -> str:
    """The whole of docs/ops.md."""
    traits = "\n".join(f"- `{t.value}`: {TRAIT_MEANINGS[t]}" for t in Trait)
    return HEADER.format(traits=traits) + "\n".join(_row(d) for d in OPS.definitions() if d.builtin) + "\n"


@command("ops", "list every op with its traits, and whether the interpreter and the targets implement it")
def _ops(parser):
    parser.add_argument("--markdown", action="store_true", help="the docs/ops.md page instead of a plain list")

    def run(args):
        if args.markdown:
            sys.stdout.write(ops_markdown())
            return 0
        for d in OPS.definitions():
            missing = [what for what, there in (("kernel", d.kernel), ("lowering", d.lower)) if there is None]
            note = f"  (no {' or '.join(missing)})" if missing else ""
            print(f"{d.name:18} {', '.join(sorted(t.value for t in d.traits)) or '-'}{note}")
        return 0
    return run
