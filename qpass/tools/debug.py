"""The quantization debugger: where does a quantized model lose accuracy, and what to try.

`debug_model` quantizes a float graph to its fake-quant form (the pipeline up to fold-fake-quant)
and reports per conv/dense layer: the weight SQNR, the SQNR of the layer's quantized output
against the float model, the model's output SQNR when only that layer is quantized (its weights
and output activation; and its weights alone, which tells which of the two costs), the bit width
and how much the weight ranges differ across channels; then the layers that cost most, with
suggestions in words. `qpass debug` writes the report as JSON and SVG charts.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional, Union

import numpy as np

from qpass.tools.commands import add_quantization_options, command, load_model
from qpass.errors import QpassError
from qpass.interpreter import interpret, run_op
from qpass.ir.graph import Graph, Op, Value
from qpass.ir.types import TensorType, dtype_bits
from qpass.passmgr.manager import PassContext, run_passes
from qpass.passmgr.pipeline import parse_pipeline
from qpass.quant import is_float_layer, quantized_weight, set_bias
from qpass.quant.calibration import Samples, load_calibration
from qpass.quant.report import sqnr_db

FLOAT_REWRITES_END = "range-analysis"        # passes before it rewrite the float model (canonicalize, CLE)
WORST = 5                                    # layers named in the summary
COSTLY_DB = 6.0                              # a layer this far below the median sensitivity gets a suggestion
SPREAD = 10.0                                # channel range ratio above which equalization is suggested
WEIGHT_SHARE_DB = 3.0                        # weights alone within this of the layer's cost: weights cause it


def constant_value(graph: Graph, value: Value) -> np.ndarray:
    """The array of a value computed from constants only (e.g. dequantize(quantize(w)))."""
    if value.is_constant:
        return value.data
    producer = graph.producer(value)
    if producer is None:
        raise QpassError(f"%{value.name} is not computed from constants")
    return run_op(producer, [constant_value(graph, v) for v in producer.inputs])[producer.outputs.index(value)]


def _float_name(name: str) -> str:
    """The float model's name of a value (quantize renames a graph output `x` to `x.float`)."""
    return name[:-len(".float")] if name.endswith(".float") else name


def _layer_output(graph: Graph, op: Op) -> Value:
    """The value after the layer and its fused ReLU/Clip, the one that is quantized."""
    value = op.output
    users = graph.users(value)
    if len(users) == 1 and users[0].kind in ("relu", "clip"):
        value = users[0].output
    return value


def _fake_quant(graph: Graph, value: Value) -> Optional[Op]:
    """The quantize op that reads `value`, if it is fake-quantized."""
    return next((user for user in graph.users(value) if user.kind == "quantize"), None)


def _channel_range_ratio(weight: np.ndarray, groups: int, per_tensor: bool) -> float:
    """max / median of per-channel max |w|: over output channels for per-tensor weights, over input
    channels otherwise (a per-channel row still mixes its input channels)."""
    if per_tensor:
        ranges = np.abs(weight.reshape(len(weight), -1)).max(axis=1)
    elif weight.ndim == 2:
        ranges = np.abs(weight).max(axis=0)
    else:
        out, per_group = weight.shape[:2]
        ranges = np.abs(weight.reshape(groups, out // groups, per_group, -1)).max(axis=(1, 3)).reshape(-1)
    median = float(np.median(ranges))
    return float(ranges.max() / median) if median > 0 else float("inf")


def _with_layer_quantized(reference: Graph, fake: Graph, op: Op, activation: bool) -> tuple[Graph, list[Value]]:
    """The float model with only `op`'s weight and bias (and output activation when `activation`)
    as in the fake-quant model, and the constants that differ from the float model's."""
    graph = reference.copy()
    target = graph.producer(graph.value(_float_name(op.output.name)))
    weight = graph.add_constant(constant_value(fake, op.inputs[1]), op.inputs[1].name + ".dq")
    graph.set_input(target, 1, weight)
    changed = [weight]
    if len(op.inputs) == 3:       # quantize or correct-bias may have given a bias-less layer a bias
        set_bias(graph, target, constant_value(fake, op.inputs[2]), op.inputs[2].name)
        changed.append(graph.producer(graph.value(_float_name(op.output.name))).inputs[2])
    quantize = _fake_quant(fake, _layer_output(fake, op)) if activation else None
    if quantize is not None:
        value = graph.value(_float_name(quantize.inputs[0].name))
        users = graph.users(value)
        q = graph.add_op("quantize", [value], types=[quantize.output.type], names=[value.name + ".q"],
                         before=users[0] if users else None)
        dq = graph.add_op("dequantize", [q.output], names=[value.name + ".dq"], before=users[0] if users else None)
        graph.replace_all_uses(value, dq.output, exclude=q)
    graph.remove_dead()
    return graph, changed


def _float_values(reference: Graph, sample: dict) -> dict[str, np.ndarray]:
    """Every value of the float model on `sample`, by name (inputs, constants and op results)."""
    values = {v.name: np.asarray(sample[v.name]).astype(v.type.numpy_dtype, copy=False) for v in reference.inputs}
    values.update((v.name, v.data) for v in reference.constants())
    interpret(reference, sample, observe=lambda v, a: values.__setitem__(v.name, a))
    return values


def _run_from_change(graph: Graph, changed: list[Value], values: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The outputs of `graph`, a copy of the float model with `changed` constants and new ops, given
    the float model's `values` on one sample: only the ops downstream of a change run (through the
    interpreter's kernels, so the results equal a whole-model run bit for bit)."""
    dirty = {id(v): v.data for v in changed}
    for op in graph.ops:
        if any(id(v) in dirty for v in op.inputs) or any(v.name not in values for v in op.outputs):
            arrays = [dirty[id(v)] if id(v) in dirty else values[v.name] for v in op.inputs]
            dirty.update((id(v), a) for v, a in zip(op.outputs, run_op(op, arrays)))
    return [dirty[id(v)] if id(v) in dirty else values[v.name] for v in graph.outputs]


def _flat(arrays) -> np.ndarray:
    return np.concatenate([a.reshape(-1) for a in arrays])


def _sqnr(signal: float, noise: float) -> float:
    return float("inf") if noise == 0 else 10 * math.log10(signal / noise) if signal > 0 else float("-inf")


def _finite(value: float) -> Optional[float]:
    """Rounded for the report; None for inf and NaN, which JSON cannot hold."""
    return round(value, 2) if math.isfinite(value) else None


def debug_model(graph: Graph, calibration: Samples, bits: Union[int, str] = 8, method: str = "percentile",
                samples: int = 8, pipeline: Optional[str] = None, quiet: bool = True) -> dict:
    """Per-layer quantization figures of `graph` and suggestions (see the module docstring).

    `pipeline` replaces `qpass.quantization_pipeline(bits, method)`; the passes before
    range-analysis make the float reference, those up to fold-fake-quant the fake-quant model.
    All calibration samples calibrate; the first `samples` of them measure.
    """
    from qpass.api import quantization_pipeline
    passes = parse_pipeline(pipeline or quantization_pipeline(bits, method))
    names = [p.name for p in passes]
    if FLOAT_REWRITES_END not in names:
        raise QpassError(f"the pipeline {pipeline!r} has no range-analysis step, so nothing gets quantized")
    split = names.index(FLOAT_REWRITES_END)
    end = names.index("fold-fake-quant") if "fold-fake-quant" in names else len(passes)
    calibration = load_calibration(calibration, graph)
    measured = calibration[:samples]
    ctx = PassContext(calibration=calibration, quiet=quiet)
    with ctx:
        reference = run_passes(graph.copy(), passes[:split], ctx)
        fake = run_passes(reference.copy(), passes[split:end], ctx)
    layers = [op for op in fake.ops if is_float_layer(op) and quantized_weight(fake, op) is not None]
    if not layers:
        raise QpassError(f"graph @{graph.name} has no conv2d/dense layer with quantized weights to debug")
    watched = {}
    for op in layers:
        quantize = _fake_quant(fake, _layer_output(fake, op))
        if quantize is not None:
            watched[op.name] = (_float_name(quantize.inputs[0].name), fake.users(quantize.output)[0].output.name)
    # One float run per sample gives every value the what-ifs start from; each what-if then runs
    # only the ops after its layer.
    what_ifs = {(op.name, act): _with_layer_quantized(reference, fake, op, act) for op in layers for act in (True, False)}
    watched_names = {quant_name for _, quant_name in watched.values()}
    signal, noise = dict.fromkeys(watched, 0.0), dict.fromkeys(watched, 0.0)
    float_parts, fake_parts = [], []
    what_if_parts: dict[tuple, list] = {key: [] for key in what_ifs}
    for sample in measured:
        values = _float_values(reference, sample)
        quantized: dict[str, np.ndarray] = {}

        def keep(value, array, names=watched_names, store=quantized):
            if value.name in names:
                store[value.name] = array
        fake_out = interpret(fake, sample, observe=keep)
        for key, (float_name, quant_name) in watched.items():
            ref = values[float_name].astype(np.float64)
            signal[key] += float(np.sum(ref ** 2))
            noise[key] += float(np.sum((ref - quantized[quant_name]) ** 2))
        float_parts.append(_flat(values[v.name] for v in reference.outputs))
        fake_parts.append(_flat(fake_out.values()))
        for key, (graph_, changed) in what_ifs.items():
            what_if_parts[key].append(_flat(_run_from_change(graph_, changed, values)))
        del values, quantized
    activation = {key: _sqnr(signal[key], noise[key]) for key in watched}
    float_out = np.concatenate(float_parts)
    alone = {key: _finite(sqnr_db(float_out, np.concatenate(parts))) for key, parts in what_if_parts.items()}
    report_layers = [_layer_figures(reference, fake, op, activation.get(op.name), alone[op.name, True],
                                    alone[op.name, False]) for op in layers]
    worst = sorted(report_layers, key=lambda layer: _sort_key(layer["sensitivity_db"]))[:WORST]
    return {
        "model": graph.name, "bits": bits, "pipeline": ",".join(str(p) for p in passes[:end]),
        "samples": len(measured),
        "summary": {"output_sqnr_db": _finite(sqnr_db(float_out, np.concatenate(fake_parts)))},
        "layers": report_layers, "worst": [layer["name"] for layer in worst],
        "suggestions": suggestions(report_layers, worst),
    }


def _sort_key(value: Optional[float]) -> float:
    return float("inf") if value is None else value


def _layer_figures(reference: Graph, fake: Graph, op: Op, activation: Optional[float],
                   sensitivity: Optional[float], weight_sensitivity: Optional[float]) -> dict:
    """One layer's entry of the report (`activation`: its output's SQNR in the fake-quant model;
    the sensitivities: the model output's SQNR with the layer alone quantized, and its weights alone)."""
    weight_type: TensorType = quantized_weight(fake, op).type
    float_weight = reference.producer(reference.value(_float_name(op.output.name))).inputs[1].data
    return {
        "name": _float_name(op.name), "op": op.kind,
        "bits": weight_type.quant.bits or dtype_bits(weight_type.dtype),
        "granularity": weight_type.quant.granularity,
        "weight_sqnr_db": _finite(sqnr_db(float_weight, constant_value(fake, op.inputs[1]))),
        "activation_sqnr_db": _finite(activation) if activation is not None else None,
        "sensitivity_db": sensitivity, "weight_sensitivity_db": weight_sensitivity,
        "channel_range_ratio": _finite(_channel_range_ratio(
            float_weight, op.attrs.get("groups", 1), weight_type.quant.granularity == "per-tensor")),
    }


def suggestions(layers: list[dict], worst: list[dict]) -> list[str]:
    """What to try, in words, for the layers that cost clearly more than the typical one.

    The weights are the cause when quantizing them alone costs nearly as much as quantizing the
    weights and the output activation together; otherwise the activation's range is.
    """
    sensitivities = [layer["sensitivity_db"] for layer in layers if layer["sensitivity_db"] is not None]
    if not sensitivities:
        return []
    median = float(np.median(sensitivities))
    out = []
    for layer in worst:
        cost = layer["sensitivity_db"]
        if cost is None or cost > median - COSTLY_DB:
            continue
        name = layer["name"]
        head = f"{name} is among the costliest layers ({cost} dB output SQNR when only it is quantized, " \
               f"median {median:.1f} dB)"
        weights_cost = layer["weight_sensitivity_db"]
        spread = layer["channel_range_ratio"]
        if weights_cost is not None and weights_cost < cost + WEIGHT_SHARE_DB:
            fixes = [f"keep it at 8 bits with quantize{{keep-int8=[{name}]}} (--bits 4) or "
                     f"assign-bitwidth{{keep-int8=[{name}]}} (--bits mixed)"] if layer["bits"] < 8 else []
            if spread is None or spread > SPREAD:
                fixes.append(f"equalize its channels with equalize-cross-layer (cle=True): their weight ranges "
                             f"differ {spread}x")
            fixes.append(f"keep its weights float with quantize{{keep-float=[{name}]}}")
            out.append(f"{head}; its weights cause it: " + ", or ".join(fixes) + ".")
        else:
            out.append(f"{head}; its output activation's range causes it: try another observer, e.g. "
                       "range-analysis{method=mse}, or equalize-cross-layer (cle=True), whose bias absorption "
                       "narrows channels with a large offset.")
    return out


def format_debug(report: dict) -> str:
    """A short table of the report, worst layers and suggestions."""
    width = max([len(layer["name"]) for layer in report["layers"]] + [5])
    lines = [f"output SQNR {report['summary']['output_sqnr_db']} dB on {report['samples']} samples",
             f"{'layer':<{width}}  {'bits':>4}  {'weight dB':>9}  {'act dB':>7}  {'alone dB':>8}  "
             f"{'w alone':>7}  {'spread':>7}"]
    for layer in report["layers"]:
        lines.append(f"{layer['name']:<{width}}  {layer['bits']:>4}  {_cell(layer['weight_sqnr_db']):>9}  "
                     f"{_cell(layer['activation_sqnr_db']):>7}  {_cell(layer['sensitivity_db']):>8}  "
                     f"{_cell(layer['weight_sensitivity_db']):>7}  {_cell(layer['channel_range_ratio']):>7}")
    lines.append("costs most: " + ", ".join(report["worst"]))
    lines += [f"- {s}" for s in report["suggestions"]]
    return "\n".join(lines)


def _cell(value) -> str:
    return "n/a" if value is None else str(value)


def charts(report: dict) -> dict[str, str]:
    """File name -> SVG: SQNR per layer and bit width per layer."""
    from qpass.tools.plot import bar_chart_svg
    labels = [layer["name"] for layer in report["layers"]]

    def values(key):
        return [float("nan") if layer[key] is None else float(layer[key]) for layer in report["layers"]]
    return {
        "sqnr.svg": bar_chart_svg(labels, {"weights": values("weight_sqnr_db"),
                                           "output activation": values("activation_sqnr_db"),
                                           "model output, this layer alone": values("sensitivity_db")},
                                  f"SQNR per layer ({report['model']}, bits={report['bits']})", "SQNR (dB)"),
        "bits.svg": bar_chart_svg(labels, {"weight bits": values("bits")},
                                  f"Weight bit width per layer ({report['model']})", "bits"),
    }


def write_report(report: dict, outdir) -> list[Path]:
    """Write debug.json and the charts into `outdir` (created if missing; each file written whole)."""
    from qpass.ir.serialize import atomic_write
    outdir = Path(outdir)
    outdir.mkdir(exist_ok=True)
    files = {"debug.json": json.dumps(report, indent=2, sort_keys=True) + "\n", **charts(report)}
    for name, text in files.items():
        atomic_write(outdir / name, text.encode())
    return [outdir / name for name in files]


def _check_outdir(path: str) -> None:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise QpassError(f"-o {path}: it is a file; give a directory for debug.json and the charts")
    if not out.resolve().parent.is_dir():
        raise QpassError(f"-o {path}: the parent directory {out.resolve().parent} does not exist")


@command("debug", "find the layers that cost a quantized model its accuracy (JSON + SVG charts)")
def _debug(parser):
    parser.add_argument("model", help="an .onnx model or a .qir file")
    add_quantization_options(parser)
    parser.add_argument("--samples", type=int, default=8, help="calibration samples used to measure")
    parser.add_argument("--pipeline", "-p", help="debug this pipeline instead of the default one")
    parser.add_argument("--input-shape", action="append", metavar="NAME=DxD...", help="fix a dynamic input shape")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR",
                        help="write debug.json, sqnr.svg and bits.svg here")

    def run(args):
        if args.samples < 1:
            raise QpassError(f"--samples {args.samples}: measure on at least one sample")
        _check_outdir(args.output)
        if args.pipeline:
            parse_pipeline(args.pipeline)                       # bad names fail before any work
        graph = load_model(args.model, args.input_shape)
        bits = int(args.bits) if args.bits.isdigit() else args.bits
        report = debug_model(graph, args.calib, bits, args.method, args.samples, args.pipeline)
        for path in write_report(report, args.output):
            print(f"wrote {path}", file=sys.stderr)
        print(format_debug(report))
        return 0
    return run
