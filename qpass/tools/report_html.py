"""The compile report for people: a text summary for the terminal and a self-contained report.html.

The page (no network: styles inline, charts and the graph as inline SVG) opens with a summary card
(agreement or accuracy, size, latency, compile time), then the per-output and per-layer SQNR, a
picture of the integer graph coloured by bit width (the viewer's `graph_svg`), the ops left in
float grouped by reason with what would fold them, the other warnings, and links to the files of
the artifact beside it.
"""

from __future__ import annotations

import html
import math
from typing import Optional

from qpass.quant.report import format_float_op_groups, output_lines
from qpass.tools.plot import bar_chart_svg


# bars by weight dtype, darker shades of the graph picture's colours (qpass.tools.viewer.COLOURS)
BAR_COLOURS = {"i8": "#37b24d", "u8": "#2f9e44", "i4": "#7950f2", "u4": "#e64980", "f32": "#4c6ef5"}


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def _groups(report: dict) -> list[dict]:
    """The ops left in float, grouped (reports from before grouping have only the per-op dict)."""
    if "float_op_groups" in report:
        return report["float_op_groups"]
    from qpass.quant.report import float_op_groups
    return float_op_groups(report.get("quantization", {}).get("float_ops", {}))


def summary_lines(report: dict) -> list[str]:
    lines = [f"model {report['model']['name']} ({report['model']['kind']}, {report['model']['ops']} ops) -> "
             f"{report['target']} [{report['micro_kernel'] or 'plain loops'}]"]
    size = report["size"]
    if size["float_weight_bytes"]:
        lines.append(f"weights: {_kb(size['float_weight_bytes'])} float -> {_kb(size['weight_bytes'])} "
                     f"({size['weight_bytes'] / size['float_weight_bytes']:.1%})")
    else:
        lines.append(f"weights: {_kb(size['weight_bytes'])} (integer IR input: no float model to compare with)")
    q = report.get("quantization", {}).get("summary")
    if q:
        lines.append(f"vs float on {q['samples']} calibration samples: output SQNR {q['output_sqnr_db']} dB, "
                     f"top-1 agreement {q['top1_agreement']:.1%}")
        lines += [f"  {line}" for line in output_lines(q)]
    run = report.get("run", {})
    if run.get("runs_here"):
        if "comparison" in run:
            lines.append(f"ran here ({run['how']}): {run['comparison']}")
        elif "matches_interpreter" in run:
            lines.append(f"ran here ({run['how']}): {'bit-exact with' if run['matches_interpreter'] else 'DIFFERS from'}"
                         f" the reference interpreter")
        if "latency" in run:
            lines.append(f"latency: {run['latency']['median_ms']:.2f} ms median "
                         f"(p10 {run['latency']['p10_ms']:.2f}, p90 {run['latency']['p90_ms']:.2f})")
    elif run:
        lines.append(f"not run here: {run['how']}")
    seconds = report.get("compile_seconds")
    if seconds:
        lines.append(f"compile: {seconds['total']:.1f} s (passes {seconds['passes']:.1f} s, build {seconds['build']:.1f} s)")
    lines += [f"warning: {w}" for w in report["warnings"]]
    lines += format_float_op_groups(_groups(report))
    return lines


def format_compile_report(report: dict) -> str:
    return "\n".join(summary_lines(report))


# =========================================================================== HTML
def _e(value) -> str:
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list], css: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='{css}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _db(value) -> str:
    if value is None:
        return "n/a"
    return "exact" if value == math.inf else f"{value:.1f} dB"


def _tile(label: str, value: str, note: str = "", tone: str = "") -> str:
    return (f"<div class='tile {tone}'><div class='label'>{_e(label)}</div><div class='value'>{value}</div>"
            f"<div class='note'>{note}</div></div>")


def _quality_tile(report: dict) -> str:
    accuracy = report.get("accuracy")
    if accuracy:
        figures = " &rarr; ".join(f"{_e(kind)} {value:.1%}" for kind, value in accuracy["top1"].items())
        note = f"top-1 on {accuracy['samples']} labelled samples"
        if "top1_agreement" in accuracy:
            note += f"; agreement {accuracy['top1_agreement']:.1%}"
        return _tile("Accuracy", figures, _e(note), "good")
    q = report.get("quantization", {}).get("summary")
    if q:
        tone = "good" if q["top1_agreement"] >= 0.95 else "warn"
        return _tile("Agreement with float", f"{q['top1_agreement']:.1%}",
                     _e(f"top-1 of {q['output']} on {q['samples']} calibration samples; SQNR "
                        f"{_db(q['output_sqnr_db'])}"), tone)
    return _tile("Agreement with float", "&mdash;", "no calibration data: nothing to compare")


def _size_tile(report: dict) -> str:
    size = report["size"]
    if size["float_weight_bytes"]:
        ratio = size["weight_bytes"] / size["float_weight_bytes"]
        return _tile("Weights", f"{_kb(size['float_weight_bytes'])} &rarr; {_kb(size['weight_bytes'])}",
                     _e(f"{ratio:.1%} of float ({1 / ratio:.1f}x smaller)") if ratio else "", "good")
    return _tile("Weights", _kb(size["weight_bytes"]), _e(size.get("note", "")))


def _latency_tile(report: dict) -> str:
    run = report.get("run", {})
    if run.get("runs_here") and "latency" in run:
        after = run["latency"]["median_ms"]
        before = run.get("float_latency", {}).get("median_ms")
        value = (f"{before:.2f} &rarr; {after:.2f} ms" if before else f"{after:.2f} ms")
        note = (f"median, p10 {run['latency']['p10_ms']:.2f} / p90 {run['latency']['p90_ms']:.2f} ms"
                + ("" if before else "; the float model was not timed"))
        return _tile("Latency", value, _e(note))
    if run:
        return _tile("Latency", "&mdash;", _e(f"not run here: {run['how']}"))
    return _tile("Latency", "&mdash;", "not run (qpass compile times it where the target runs)")


def _exact_tile(report: dict) -> str:
    run = report.get("run", {})
    if "matches_interpreter" in run:
        ok = run["matches_interpreter"]
        return _tile("Compiled code", "bit-exact" if ok else "DIFFERS",
                     _e(f"vs the reference interpreter ({run['how']})"), "good" if ok else "bad")
    seconds = report.get("compile_seconds")
    if seconds:
        return _tile("Compile time", f"{seconds['total']:.1f} s",
                     _e(f"passes {seconds['passes']:.1f} s, build {seconds['build']:.1f} s"))
    return ""


def _summary_card(report: dict) -> str:
    model = report["model"]
    groups = _groups(report)
    left = sum(g["count"] for g in groups)
    facts = [f"{model['kind']} model", f"{model['ops']} ops",
             f"{model.get('integer_ops', '?')} integer ops in the result", f"target {report['target']}",
             f"kernel {report['micro_kernel'] or 'plain loops'}"]
    if left:
        facts.append(f"{left} op{'s' if left > 1 else ''} left in float")
    tiles = "".join([_quality_tile(report), _size_tile(report), _latency_tile(report), _exact_tile(report)])
    return (f"<section class='card summary' id='summary'><h1>{_e(model['name'])}</h1>"
            f"<p class='facts'>{' &middot; '.join(_e(f) for f in facts)}</p>"
            f"<div class='tiles'>{tiles}</div></section>")


def _outputs_section(q: dict) -> str:
    outputs = q.get("outputs") or []
    if not outputs:
        return ""
    rows = [[o["name"], _db(o["sqnr_db"]),
             f"{o['float_range'][0]:.4g} to {o['float_range'][1]:.4g}" if o.get("float_range") else "-"]
            for o in outputs]
    return ("<section class='card' id='outputs'><h2>Each output vs float</h2>"
            "<p class='hint'>SQNR per graph output: an output with a small range (scores) gets its own figure, "
            "so a large one (boxes) cannot hide its loss.</p>"
            + _table(["output", "SQNR", "float range"], rows, "narrow") + "</section>")


def _layers_section(q: dict) -> str:
    layers = q.get("layers", [])
    if not layers:
        return ""
    labels = [layer["name"] for layer in layers]
    kinds = sorted({layer["weight_dtype"] or "no weights" for layer in layers})
    series = {f"{kind} weights" if kind != "no weights" else kind:
              [layer["sqnr_db"] if (layer["weight_dtype"] or "no weights") == kind else float("nan")
               for layer in layers] for kind in kinds}
    chart = bar_chart_svg(labels, series, "SQNR of each quantized layer vs the float model", "dB",
                          {name: BAR_COLOURS.get(name.split()[0], "#adb5bd") for name in series})
    table = _table(["layer", "op", "dtype", "weights", "granularity", "scale", "SQNR dB"],
                   [[x["name"], x["op"], x["dtype"], x["weight_dtype"] or "-", x["weight_granularity"] or "-",
                     f"{x['scale']:.4g}", x["sqnr_db"]] for x in layers], "layers")
    return ("<section class='card' id='layers'><h2>Layers</h2>"
            "<p class='hint'>Each bar: the dequantized integer result against the float model's value "
            "(higher is better; hover a bar for its value).</p>"
            f"<div class='chart'>{chart}</div><details><summary>All {len(layers)} layers</summary>{table}"
            "</details></section>")


def _graph_section(graph) -> str:
    if graph is None:
        return ""
    from qpass.tools.viewer import graph_svg
    return ("<section class='card' id='graph'><h2>The integer graph</h2>"
            "<p class='hint'>Coloured by dtype and bit width (the key is at the top); hover an op for its "
            "types and quantization. <code>qpass view model.qir --html graph.html</code> opens it with "
            f"search and a details panel.</p><div class='graph'>{graph_svg(graph)}</div></section>")


def _float_section(groups: list[dict]) -> str:
    if not groups:
        return ""
    items = []
    for g in groups:
        names = ", ".join(f"%{n}" for n in g["examples"])
        more = f" and {g['count'] - len(g['examples'])} more" if g["count"] > len(g["examples"]) else ""
        items.append(f"<li><div class='group-head'><span class='count'>{g['count']}</span>"
                     f"<span class='reason'>{_e(g['reason'])}</span></div>"
                     f"<div class='examples'>e.g. <code>{_e(names)}</code>{_e(more)}</div>"
                     f"<div class='fix'><b>What would fold them:</b> {_e(g['hint'])}</div></li>")
    total = sum(g["count"] for g in groups)
    return (f"<section class='card' id='float-ops'><h2>Left in float: {total} op{'s' if total > 1 else ''} "
            f"in {len(groups)} group{'s' if len(groups) > 1 else ''}</h2><ul class='groups'>{''.join(items)}"
            "</ul></section>")


def _warnings_section(warnings: list[str]) -> str:
    if not warnings:
        return ""
    return ("<section class='card' id='warnings'><h2>Warnings</h2><ul class='warnings'>"
            + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul></section>")


def _files_section(report: dict) -> str:
    files = [("model.qir", "the integer IR the library implements (text; qpass show / qpass view read it)"),
             ("model.npz", "its constants"), ("model.so", "the library (tvm.runtime.load_module)"),
             ("report.json", "this report as data"), ("meta.json", "target, inputs and outputs")]
    if report["target"].startswith("aarch64"):
        files.append(("qpass-run", "the C++ runner for the device"))
    rows = "".join(f"<li><a href='{name}'>{name}</a> <span>{_e(what)}</span></li>" for name, what in files)
    return f"<section class='card' id='files'><h2>Files</h2><ul class='files'>{rows}</ul></section>"


def _details_section(report: dict) -> str:
    passes = _table(["pass", "ms", "changed"], [[p["pass"], p["ms"], p["changed"]] for p in report["passes"]])
    kernels = _table(["kernel", "op", "schedule"], [[k["kernel"], k["op"], k["schedule"]]
                                                   for k in report["kernels"]])
    note = f"<p class='hint'>{_e(report['passes_note'])}</p>" if report.get("passes_note") else ""
    return (f"<section class='card' id='passes'><h2>Passes</h2>{note}{passes}</section>"
            f"<section class='card' id='kernels'><h2>Kernels</h2>{kernels}</section>")


_STYLE = """
:root { --ink: #212529; --muted: #6c757d; --line: #e9ecef; --accent: #1c7ed6; }
* { box-sizing: border-box; }
body { margin: 0; background: #f1f3f5; color: var(--ink); font: 14px/1.5 system-ui, -apple-system, "Segoe UI",
       Roboto, sans-serif; }
header.top { background: #1b2a3a; color: #fff; padding: 14px 32px; display: flex; align-items: baseline; gap: 16px; }
header.top .brand { font-weight: 700; letter-spacing: .02em; }
header.top nav a { color: #a5d8ff; margin-right: 14px; text-decoration: none; font-size: 13px; }
main { max-width: 1180px; margin: 0 auto; padding: 20px 24px 48px; }
.card { background: #fff; border-radius: 10px; box-shadow: 0 1px 3px rgba(0,0,0,.08); padding: 18px 22px;
        margin: 0 0 18px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 0 0 10px; }
.facts { color: var(--muted); margin: 0 0 14px; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(230px, 1fr)); gap: 12px; }
.tile { border: 1px solid var(--line); border-left: 5px solid #adb5bd; border-radius: 8px; padding: 10px 14px; }
.tile.good { border-left-color: #37b24d; } .tile.warn { border-left-color: #f59f00; }
.tile.bad { border-left-color: #e03131; }
.tile .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .05em; }
.tile .value { font-size: 22px; font-weight: 650; margin: 2px 0; }
.tile .note { color: var(--muted); font-size: 12px; }
.hint { color: var(--muted); margin: 0 0 10px; }
.chart, .graph { overflow-x: auto; }
.graph { max-height: 720px; overflow: auto; border: 1px solid var(--line); border-radius: 6px; background: #f8f9fa; }
.graph svg { display: block; margin: 0 auto; }
table { border-collapse: collapse; margin: 6px 0; font-size: 13px; }
th { text-align: left; background: #f8f9fa; color: #495057; font-weight: 600; }
td, th { border-bottom: 1px solid var(--line); padding: 4px 10px; }
table.layers td:first-child, table.narrow td:first-child { font-family: ui-monospace, Menlo, Consolas, monospace; }
details summary { cursor: pointer; color: var(--accent); margin: 8px 0; }
ul.groups { list-style: none; padding: 0; margin: 0; }
ul.groups li { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; margin: 0 0 10px; }
.group-head { display: flex; gap: 10px; align-items: baseline; }
.count { background: #fff3bf; color: #8f5d00; border-radius: 12px; padding: 0 10px; font-weight: 700; }
.reason { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px; }
.examples { color: var(--muted); margin: 4px 0; font-size: 13px; }
.fix { font-size: 13px; }
ul.warnings li { margin: 3px 0; }
ul.files { list-style: none; padding: 0; margin: 0; }
ul.files li { margin: 4px 0; } ul.files a { font-family: ui-monospace, Menlo, Consolas, monospace;
  color: var(--accent); margin-right: 8px; }
ul.files span { color: var(--muted); }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12.5px; }
"""


def render_report_html(report: dict, graph: Optional[object] = None) -> str:
    """A self-contained page (no network) of the compile report; `graph`, the integer IR, adds its picture."""
    q = report.get("quantization", {})
    groups = _groups(report)
    sections = [_summary_card(report), _outputs_section(q.get("summary", {})) if len(
        q.get("summary", {}).get("outputs") or []) > 1 else "", _layers_section(q), _graph_section(graph),
                _float_section(groups), _warnings_section(report["warnings"]), _files_section(report),
                _details_section(report)]
    nav = [("summary", "Summary"), ("layers", "Layers"), ("graph", "Graph"), ("float-ops", "Float ops"),
           ("warnings", "Warnings"), ("files", "Files"), ("passes", "Passes")]
    body = "".join(sections)
    links = "".join(f"<a href='#{id}'>{label}</a>" for id, label in nav if f"id='{id}'" in body)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>qpass report: {_e(report['model']['name'])}</title><style>{_STYLE}</style></head><body>"
            f"<header class='top'><span class='brand'>qpass compile report</span><nav>{links}</nav></header>"
            f"<main>{body}</main></body></html>")
