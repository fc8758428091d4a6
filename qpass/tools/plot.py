"""Dependency-free SVG charts for reports (per-layer SQNR, bit widths).

The SVG is standalone (it opens in a browser as a file) and also embeds inline in HTML. Output is
deterministic: the same data gives the same bytes.
"""

from __future__ import annotations

import math
from html import escape
from typing import Optional

PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")
LABEL_CHARS = 40            # longer labels keep their end (the specific part of a dotted name); the
                            # full label is the tooltip
FONT = "font-family=\"sans-serif\" font-size=\"11\""


def _short(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else "…" + label[-(LABEL_CHARS - 1):]


def _nice_step(span: float, ticks: int = 6) -> float:
    """A 1, 2 or 5 times a power of ten step giving about `ticks` ticks over `span`."""
    raw = span / ticks if span > 0 else 1.0
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _axis(values: list[float]) -> tuple[float, float, float]:
    """(low, high, step) of a y axis that includes 0 and every finite value."""
    finite = [v for v in values if math.isfinite(v)] or [0.0]
    low, high = min(0.0, min(finite)), max(0.0, max(finite))
    if low == high:
        high = low + 1.0
    step = _nice_step(high - low)
    return math.floor(low / step) * step, math.ceil(high / step) * step, step


def _number(value: float) -> str:
    return f"{value:.6g}"


def bar_chart_svg(labels: list[str], series: dict[str, list[float]], title: str, y_label: str,
                  colours: Optional[dict[str, str]] = None) -> str:
    """Grouped bars: one group per label, one bar per series (in the order given), with a legend;
    `colours` (series name -> colour) overrides the palette.

    Labels under the axis are rotated and, when long, shortened to their end (the bar's tooltip
    has the full label and value). Values that are not finite (inf, NaN) draw no bar.
    """
    for name, values in series.items():
        if len(values) != len(labels):
            raise ValueError(f"series {name!r} has {len(values)} values for {len(labels)} labels")
    group = max(18.0, 10.0 * len(series) + 6)
    bar = (group - 6) / max(len(series), 1)
    longest = 6.2 * max((len(_short(label)) for label in labels), default=1)     # px at font size 11
    left, top, plot_h = max(64.0, 0.5 * longest), 48.0, 260.0                     # labels run down-left at 60°
    bottom = 16 + longest * 0.87
    legend_h = 18.0 * len(series)
    width = left + group * max(len(labels), 1) + 24
    width = max(width, 360.0)
    height = top + plot_h + bottom + legend_h + 16
    low, high, step = _axis([v for values in series.values() for v in values])
    fill = [(colours or {}).get(name, PALETTE[k % len(PALETTE)]) for k, name in enumerate(series)]

    def y(value: float) -> float:
        return top + plot_h * (high - value) / (high - low)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_number(width)}" height="{_number(height)}" '
           f'viewBox="0 0 {_number(width)} {_number(height)}" role="img">',
           f"<title>{escape(title)}</title>",
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{_number(width / 2)}" y="22" text-anchor="middle" font-family="sans-serif" '
           f'font-size="15" font-weight="bold">{escape(title)}</text>',
           f'<text transform="translate({_number(left - 44)} {_number(top + plot_h / 2)}) rotate(-90)" '
           'text-anchor="middle" '
           f"{FONT}>{escape(y_label)}</text>"]
    ticks = int(round((high - low) / step))
    for i in range(ticks + 1):
        value = low + i * step
        out.append(f'<line x1="{_number(left)}" x2="{_number(width - 16)}" y1="{_number(y(value))}" '
                   f'y2="{_number(y(value))}" stroke="{"#444" if abs(value) < step / 2 else "#ddd"}"/>')
        out.append(f'<text x="{_number(left - 6)}" y="{_number(y(value) + 4)}" text-anchor="end" {FONT}>'
                   f"{_number(round(value, 10))}</text>")
    for index, label in enumerate(labels):
        x0 = left + index * group + 3
        for k, (name, values) in enumerate(series.items()):
            value = values[index]
            if not math.isfinite(value):
                continue
            y_top, y_bottom = sorted((y(value), y(0.0)))
            out.append(f'<rect x="{_number(x0 + k * bar)}" y="{_number(y_top)}" width="{_number(bar)}" '
                       f'height="{_number(max(y_bottom - y_top, 0.5))}" fill="{fill[k]}">'
                       f"<title>{escape(label)}: {escape(name)} {_number(value)}</title></rect>")
        anchor_x, anchor_y = x0 + (group - 6) / 2 + 4, top + plot_h + 10
        out.append(f'<text transform="translate({_number(anchor_x)} {_number(anchor_y)}) rotate(-60)" '
                   f'text-anchor="end" {FONT}><title>{escape(label)}</title>{escape(_short(label))}</text>')
    legend_y = top + plot_h + bottom + 8
    for k, name in enumerate(series):
        row = legend_y + 18 * k
        out.append(f'<rect x="{_number(left)}" y="{_number(row)}" width="12" height="12" fill="{fill[k]}"/>')
        out.append(f'<text x="{_number(left + 18)}" y="{_number(row + 10)}" {FONT}>{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
