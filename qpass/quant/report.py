"""The quantization report: per layer bit-width, granularity, scale and SQNR against the float model."""

from __future__ import annotations

import json
import re
from typing import Optional

import numpy as np

from qpass.interpreter import interpret
from qpass.ir.graph import Graph, Op
from qpass.ir.opdef import Trait, op_def
from qpass.quant.params import dequantize_array


def is_layer(op) -> bool:
    """An op the report gives a row: one that computes new integer values (integer ops, and ops
    such as concat that join quantized operands), not one that only moves them."""
    d = op_def(op.kind)
    return d.has(Trait.INTEGER) or (d.has(Trait.INTEGER_FORM) and d.has(Trait.FOLLOWS_OPERAND)
                                    and not d.has(Trait.DATA_MOVEMENT))


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    noise = float(np.sum((reference.astype(np.float64) - test) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else (10 * np.log10(signal / noise) if signal > 0 else float("-inf"))


def _float_name(name: str) -> str:
    """The float value a quantized value stands for (`conv.q` -> `conv`)."""
    return name[:-2] if name.endswith(".q") else name


def quantization_report(float_graph: Graph, quantized: Graph, samples: list[dict], float_ops: dict | None = None,
                        bitwidth: dict | None = None) -> dict:
    """Figures for each integer layer of `quantized` against the matching value of `float_graph`.

    SQNR compares the dequantized integer result with the float model's value of the same name on
    `samples`; the summary gives output SQNR and top-1 agreement of the first output.
    """
    watched = {}
    for op in quantized.ops:
        if is_layer(op) and op.output.type.quant is not None:
            name = _float_name(op.output.name)
            if float_graph.has_value(name):
                watched[op.output.name] = name
    ref_values = {name: [] for name in watched.values()}
    q_values = {name: [] for name in watched}
    outputs_ref, outputs_q = [], []

    def collect(store):
        def observe(value, array):
            if value.name in store:
                store[value.name].append(array)
        return observe

    for sample in samples:
        outputs_ref.append(interpret(float_graph, sample, observe=collect(ref_values)))
        outputs_q.append(interpret(quantized, sample, observe=collect(q_values)))
    layers = []
    for op in quantized.ops:
        if len(op.outputs) != 1 or op.output.name not in watched:
            continue
        t = op.output.type
        reference = np.concatenate([a.reshape(-1) for a in ref_values[watched[op.output.name]]])
        test = np.concatenate([dequantize_array(a, t.quant).reshape(-1) for a in q_values[op.output.name]])
        weight = op.inputs[1].type if op_def(op.kind).has(Trait.WEIGHTED) else None
        layers.append({
            "name": op.output.name, "op": op.kind, "dtype": t.dtype,
            "scale": float(t.quant.scale), "zero_point": int(t.quant.zero_point),
            "weight_dtype": weight.dtype if weight else None,
            "weight_granularity": weight.quant.granularity if weight else None,
            "sqnr_db": round(sqnr_db(reference, test), 2),
        })
    summary = {}
    if outputs_ref:
        name = next(iter(outputs_ref[0]))
        ref = np.concatenate([o[name].reshape(1, -1) for o in outputs_ref])
        q = np.concatenate([o[name].reshape(1, -1) for o in outputs_q])
        summary = {"output": name, "samples": len(samples), "output_sqnr_db": round(sqnr_db(ref, q), 2),
                   "top1_agreement": float(np.mean(ref.argmax(1) == q.argmax(1))),
                   "outputs": [_output_figures(out, outputs_ref, outputs_q) for out in outputs_ref[0]]}
    return {"summary": summary, "layers": layers, "float_ops": dict(float_ops or {}),
            "float_op_groups": float_op_groups(float_ops or {}, quantized),
            "bitwidth": dict(bitwidth or {})}


def _output_figures(name: str, outputs_ref: list[dict], outputs_q: list[dict]) -> dict:
    """SQNR of one graph output over all samples, with its float range: a detector's boxes (0-320)
    and sigmoid scores (0-1) each get their own figure, so the scores' loss is not hidden."""
    ref = np.concatenate([o[name].reshape(-1) for o in outputs_ref])
    q = np.concatenate([o[name].reshape(-1) for o in outputs_q])
    return {"name": name, "sqnr_db": round(sqnr_db(ref, q), 2),
            "float_range": [float(ref.min()), float(ref.max())] if ref.size else None}


# ---------------------------------------------------------------------------- ops left in float
EXAMPLES = 3                                   # op names a group shows


def _operand_role(graph: Optional[Graph], name: str) -> str:
    if graph is None or not graph.has_value(name):
        return "%<value>"
    return "%<constant>" if graph.value(name).is_constant else "%<float value>"


def _reason_template(graph: Optional[Graph], why: str) -> str:
    """`why` with each value name replaced by its role, repeated clauses dropped: ops that stay
    float for the same reason share one template."""
    clauses = re.sub(r"%([\w.:/-]+)", lambda m: _operand_role(graph, m.group(1)), why).split("; ")
    return "; ".join(dict.fromkeys(clauses))


def _op(graph: Optional[Graph], name: str) -> Optional[Op]:
    return graph.producer(graph.value(name)) if graph is not None and graph.has_value(name) else None


def _constant_operand(graph: Graph, op: Op):
    return next((v for v in op.inputs if v.is_constant), None)


def _after_layer(graph: Graph, op: Op) -> bool:
    """Whether `op` reads a conv/dense result (directly or through its dequantize)."""
    for value in op.inputs:
        producer = graph.producer(value)
        if producer is not None and producer.kind == "dequantize":
            producer = graph.producer(producer.inputs[0])
        if producer is not None and (op_def(producer.kind).has(Trait.WEIGHTED)):
            return True
    return False


def _hint(graph: Optional[Graph], kind: str, template: str, example: Optional[Op]) -> str:
    """What would make ops of this group integer: an option, a pattern to rewrite, or an integer op
    qpass lacks."""
    if "max-range-ratio" in template:
        return ("an option: quantize{max-range-ratio=0} quantizes it anyway (its small inputs then lose "
                "precision); equalize-cross-layer (cle=True) may bring the ranges closer")
    if graph is not None and example is not None:
        constant = _constant_operand(graph, example)
        users = [u for v in example.outputs for u in graph.users(v)]
        if kind in ("add", "sub") and constant is not None and constant.data.size == 1 and \
                any(u.kind == "clip" for u in users):
            return ("a pattern: this is the `x + 3` of a hard-swish / hard-sigmoid written out as "
                    "x * clip(x + 3, 0, 6) / 6 (as Paddle exports it); fusing the chain into hard_swish or "
                    "hard_sigmoid, which fold to one integer lut, would fold the add, the clip and the div "
                    "(recognize-activations fuses the exact form; this one differs from it)")
        if kind in ("add", "sub") and constant is not None and _after_layer(graph, example):
            return ("a pattern: a bias added after its conv/dense (conv(x, w) + b, as Paddle exports it); "
                    "folding the add into the layer's bias operand, as fold-batchnorm does for a batch "
                    "norm, would make it integer (no qpass pass does this yet)")
        if kind == "div" and constant is not None:
            return ("a missing integer op: qpass has no integer div; a division by a constant is a "
                    "multiplication by its reciprocal, and a mul folds (qmul, or a lut); here it is often "
                    "the / 6 of a written-out hard-swish (see the add group)")
    if "is not dequantized from an integer" in template and "%<float value>" in template:
        return ("it reads a value that another op left in float: it folds once that op does (see the "
                "other groups)")
    if "is not dequantized from an integer" in template:
        return ("a float constant operand: only conv/dense weights are quantized as constants; fold the "
                "constant into the neighbouring layer (e.g. a bias add into the conv's bias) or fuse the "
                "pattern it belongs to")
    if "has no integer form" in template and (op_def(kind).has(Trait.INTEGER_FORM) or op_def(kind).has(Trait.TABLE)):
        return (f"{kind} folds only between a dequantize and a quantize, and here an operand (a float constant, "
                "or a value left in float) is not fake-quantized: fold the constant into a neighbouring layer or "
                "fuse the pattern it belongs to")
    if "has no integer form" in template:
        return (f"a missing integer op: qpass has no integer {kind}; it runs in float between a dequantize "
                "and a quantize (cheap where its tensor is small, e.g. a softmax over a few classes)")
    return "see the reason; `qpass debug` shows what it costs"


def float_op_groups(float_ops: dict[str, str], graph: Optional[Graph] = None) -> list[dict]:
    """The ops left in float (op name -> reason, from fold-fake-quant's ctx.analyses.float_ops),
    grouped by reason: each group has the op kind, the reason with operand names replaced by their
    role, a count, a few example names, all names, and a hint of what would fold them.
    Largest groups first; `graph` (the integer graph) sharpens the reasons and hints."""
    groups: dict[str, dict] = {}
    for name in sorted(float_ops):
        why = float_ops[name]
        kind, _, _ = why.partition(":")
        template = _reason_template(graph, why)
        group = groups.setdefault(template, {"kind": kind, "reason": template, "ops": []})
        group["ops"].append(name)
    out = []
    for group in groups.values():
        group["count"] = len(group["ops"])
        group["examples"] = group["ops"][:EXAMPLES]
        group["hint"] = _hint(graph, group["kind"], group["reason"], _op(graph, group["ops"][0]))
        out.append(group)
    return sorted(out, key=lambda g: (-g["count"], g["reason"]))


def format_float_op_groups(groups: list[dict]) -> list[str]:
    """Lines for a terminal: per group its count, reason, a few example ops and the hint."""
    lines = []
    for group in groups:
        more = f", ... ({group['count'] - len(group['examples'])} more)" if group["count"] > len(group["examples"]) \
            else ""
        lines.append(f"left in float: {group['count']} op{'s' if group['count'] > 1 else ''}: {group['reason']} "
                     f"(e.g. {', '.join('%' + n for n in group['examples'])}{more})")
        lines.append(f"  what would fold them: {group['hint']}")
    return lines


def format_report(report: dict) -> str:
    """A readable table of the report."""
    lines = []
    s = report["summary"]
    if s:
        lines.append(f"output {s['output']}: SQNR {s['output_sqnr_db']} dB, top-1 agreement "
                     f"{s['top1_agreement']:.1%} on {s['samples']} samples")
        lines += [f"  {line}" for line in output_lines(s)]
    width = max([len(layer["name"]) for layer in report["layers"]] + [5])
    lines.append(f"{'layer':<{width}}  {'op':<12} {'out':<4} {'weights':<16} {'scale':>11}  {'SQNR dB':>8}")
    for layer in report["layers"]:
        weights = f"{layer['weight_dtype']} {layer['weight_granularity']}" if layer["weight_dtype"] else "-"
        lines.append(f"{layer['name']:<{width}}  {layer['op']:<12} {layer['dtype']:<4} {weights:<16} "
                     f"{layer['scale']:>11.4g}  {layer['sqnr_db']:>8}")
    groups = report.get("float_op_groups")
    if groups is None:
        groups = float_op_groups(report["float_ops"])
    lines += format_float_op_groups(groups)
    return "\n".join(lines)


def output_lines(summary: dict) -> list[str]:
    """One line per graph output (only when there are several): its SQNR and float range."""
    outputs = summary.get("outputs") or []
    if len(outputs) < 2:
        return []
    return [f"output {o['name']}: SQNR {o['sqnr_db']} dB"
            + (f" (float range {o['float_range'][0]:.4g} to {o['float_range'][1]:.4g})" if o["float_range"] else "")
            for o in outputs]


def dumps(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=True)
