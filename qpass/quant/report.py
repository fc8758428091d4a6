"""The quantization report: per layer bit-width, granularity, scale and SQNR against the float model."""

from __future__ import annotations

import json

import numpy as np

from qpass.interpreter import interpret
from qpass.ir.graph import Graph
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
        if op.output.name not in watched:
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
                   "top1_agreement": float(np.mean(ref.argmax(1) == q.argmax(1)))}
    return {"summary": summary, "layers": layers, "float_ops": dict(float_ops or {}),
            "bitwidth": dict(bitwidth or {})}


def format_report(report: dict) -> str:
    """A readable table of the report."""
    lines = []
    s = report["summary"]
    if s:
        lines.append(f"output {s['output']}: SQNR {s['output_sqnr_db']} dB, top-1 agreement "
                     f"{s['top1_agreement']:.1%} on {s['samples']} samples")
    width = max([len(layer["name"]) for layer in report["layers"]] + [5])
    lines.append(f"{'layer':<{width}}  {'op':<12} {'out':<4} {'weights':<16} {'scale':>11}  {'SQNR dB':>8}")
    for layer in report["layers"]:
        weights = f"{layer['weight_dtype']} {layer['weight_granularity']}" if layer["weight_dtype"] else "-"
        lines.append(f"{layer['name']:<{width}}  {layer['op']:<12} {layer['dtype']:<4} {weights:<16} "
                     f"{layer['scale']:>11.4g}  {layer['sqnr_db']:>8}")
    for name, why in report["float_ops"].items():
        lines.append(f"left in float: {name}: {why}")
    return "\n".join(lines)


def dumps(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=True)
