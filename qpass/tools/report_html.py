"""The compile report for people: a text summary for the terminal and a self-contained report.html."""

from __future__ import annotations

import html

from qpass.tools.plot import bar_chart_svg


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def summary_lines(report: dict) -> list[str]:
    lines = [f"model {report['model']['name']} ({report['model']['kind']}, {report['model']['ops']} ops) -> "
             f"{report['target']} [{report['micro_kernel'] or 'plain loops'}]"]
    size = report["size"]
    if size["float_weight_bytes"]:
        lines.append(f"weights: {_kb(size['float_weight_bytes'])} float -> {_kb(size['weight_bytes'])} "
                     f"({size['weight_bytes'] / size['float_weight_bytes']:.1%})")
    q = report.get("quantization", {}).get("summary")
    if q:
        lines.append(f"vs float on {q['samples']} calibration samples: output SQNR {q['output_sqnr_db']} dB, "
                     f"top-1 agreement {q['top1_agreement']:.1%}")
    run = report.get("run", {})
    if run.get("runs_here"):
        if "matches_interpreter" in run:
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
    return lines


def format_compile_report(report: dict) -> str:
    return "\n".join(summary_lines(report))


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_report_html(report: dict) -> str:
    """A self-contained page (no network): summary, per-layer table, SQNR plot, passes, kernels."""
    parts = [f"<h1>qpass compile report: {html.escape(report['model']['name'])}</h1>",
             "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(report)) + "</ul>"]
    layers = report.get("quantization", {}).get("layers", [])
    if layers:
        parts.append("<h2>Layers</h2>")
        parts.append(bar_chart_svg([layer["name"] for layer in layers],
                                   {"SQNR (dB)": [layer["sqnr_db"] for layer in layers]},
                                   "SQNR of each quantized layer vs the float model", "dB"))
        parts.append(_table(["layer", "op", "dtype", "weights", "granularity", "scale", "SQNR dB"],
                            [[x["name"], x["op"], x["dtype"], x["weight_dtype"] or "-", x["weight_granularity"] or "-",
                              f"{x['scale']:.4g}", x["sqnr_db"]] for x in layers]))
    parts.append("<h2>Passes</h2>")
    parts.append(_table(["pass", "ms", "changed"], [[p["pass"], p["ms"], p["changed"]] for p in report["passes"]]))
    parts.append("<h2>Kernels</h2>")
    parts.append(_table(["kernel", "op", "schedule"], [[k["kernel"], k["op"], k["schedule"]]
                                                       for k in report["kernels"]]))
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px}th{background:#eee}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>qpass report</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>")
