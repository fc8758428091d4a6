"""Pictures of the IR: a layered drawing of a graph as SVG, and a self-contained HTML page around it.

Ops are boxes coloured by the dtype of their result, laid out top to bottom in layers (longest
path from the inputs, networkx's topological generations), ordered within a layer by the
barycenter heuristic; edges that skip layers run through invisible waypoints so they bend around
boxes instead of crossing them. Constants are not drawn: each op lists its constant operands in
its details (SVG `<title>` tooltips, and the side panel of the HTML page). Nothing is fetched
from the network, and the same graph always gives the same bytes.

    qpass view model.onnx --html model.html
"""

from __future__ import annotations

import dataclasses
import html
import json
import statistics
from pathlib import Path
from typing import Optional

import networkx as nx

from qpass.tools.commands import command, load_model
from qpass.errors import QpassError
from qpass.ir.graph import Graph, Op, Value
from qpass.ir.serialize import atomic_write
from qpass.ir.types import MissingData, QuantParams, TensorType, dtype_bits

# Fill colour per dtype; a narrower `bits` annotation takes the colour of the dtype that wide.
COLOURS = {"f32": "#cfe2ff", "f16": "#c5f6fa", "i64": "#dee2e6", "i32": "#ffd8a8", "i16": "#ffec99",
           "i8": "#b2f2bb", "u8": "#8ce99a", "i4": "#d0bfff", "u4": "#fcc2d7"}
_BOUNDARY_COLOUR = "#ffffff"                 # graph inputs and the return node
_UNKNOWN_COLOUR = "#f8f9fa"
_CHAR_WIDTH, _LINE_HEIGHT, _PAD = 6.7, 14, 8
_BOX_HEIGHT = 3 * _LINE_HEIGHT + _PAD
_LAYER_GAP, _BOX_GAP, _WAYPOINT_WIDTH, _MARGIN, _LEGEND_HEIGHT = 36, 22, 8, 16, 44
_MAX_LABEL = 30
_SWEEPS = 6


@dataclasses.dataclass
class _Node:
    """One drawn box (or, with `lines` empty, a waypoint of an edge that skips layers)."""

    id: str
    lines: list[str]
    colour: str
    details: list[tuple[str, str]]
    stripe: Optional[str] = None              # colour of a quantized weight operand's dtype
    rounded: bool = False                     # graph inputs and the return node
    width: float = _WAYPOINT_WIDTH
    layer: int = 0
    x: float = 0.0

    @property
    def y(self) -> float:
        return _LEGEND_HEIGHT + _MARGIN + self.layer * (_BOX_HEIGHT + _LAYER_GAP)


# =========================================================================== describing values
def _number(x) -> str:
    return f"{float(x):.6g}"


def describe_quant(q: QuantParams) -> str:
    """Quantization parameters in one line; per-channel and per-group ones summarized."""
    bits = f", {q.bits}-bit" if q.bits else ""
    where = f" axis={q.axis}" if q.axis is not None else ""
    where += f", group_size={q.group_size}" if q.group_size else ""
    if isinstance(q.scale, MissingData) or isinstance(q.zero_point, MissingData):
        return f"{q.granularity}{where}{bits}: scales not loaded (no .npz beside the .qir)"
    if q.axis is None:
        return f"scale={_number(q.scale)}, zp={int(q.zero_point)}{bits}"
    zp_lo, zp_hi = int(q.zero_point.min(initial=0)), int(q.zero_point.max(initial=0))
    zp = f"zp={zp_lo}" if zp_lo == zp_hi else f"zp in [{zp_lo}, {zp_hi}]"
    scales = (f"{q.scale.size} scales in [{_number(q.scale.min())}, {_number(q.scale.max())}]"
              if q.scale.size else "no scales")
    return f"{q.granularity}{where}{bits}: {scales}, {zp}"


def describe_type(t: TensorType) -> str:
    """`i8[1,16,8,8]` plus its quantization parameters, summarized."""
    return str(t) if t.quant is None else f"{t}  {describe_quant(t.quant)}"


def _attr_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        if len(value) <= 8:
            return "[" + ", ".join(_attr_text(v) for v in value) + "]"
        numbers = [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
        spread = f", min {_attr_text(min(numbers))}, max {_attr_text(max(numbers))}" \
            if len(numbers) == len(value) else ""
        return "[" + ", ".join(_attr_text(v) for v in value[:4]) + f", … ({len(value)} values{spread})]"
    return _number(value) if isinstance(value, float) else str(value)


def _colour_key(t: TensorType) -> str:
    if t.quant is not None and t.quant.bits and t.quant.bits < dtype_bits(t.dtype):
        narrow = f"{t.dtype[0]}{t.quant.bits}"
        if narrow in COLOURS:
            return narrow
    return t.dtype


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_LABEL else text[:_MAX_LABEL - 1] + "…"


def _box(id: str, lines: list[str], colour: str, details: list[tuple[str, str]], **fields) -> _Node:
    lines = [_clip(line) for line in lines]
    width = max(len(line) for line in lines) * _CHAR_WIDTH + 2 * _PAD
    return _Node(id, lines, colour, details, width=max(width, 72), **fields)


def _operand_row(value: Value) -> str:
    kind = "const " if value.is_constant else ""
    return f"%{value.name}: {kind}{describe_type(value.type)}"


def _op_box(id: str, op: Op) -> tuple[_Node, list[str]]:
    """The box of `op`, and the dtype keys it shows (its result's, and its quantized weight's)."""
    keys = [_colour_key(op.outputs[0].type)]
    results = str(op.outputs[0].type) + (f" +{len(op.outputs) - 1}" if len(op.outputs) > 1 else "")
    weight = next((v for v in op.inputs if v.is_constant and v.type.quant is not None), None)
    if weight is not None:
        keys.append(_colour_key(weight.type))
        results += f" w:{keys[1]}"
    details = [("op", f"{op.kind} %{op.name}")]
    details += [("result", _operand_row(v)) for v in op.outputs]
    details += [("operand", _operand_row(v)) for v in op.inputs]
    details += [(f"attr {k}", _attr_text(op.attrs[k])) for k in sorted(op.attrs)]
    stripe = COLOURS.get(keys[1], _UNKNOWN_COLOUR) if weight is not None else None
    return _box(id, [op.kind, f"%{op.name}", results], COLOURS.get(keys[0], _UNKNOWN_COLOUR), details,
                stripe=stripe), keys


# =========================================================================== building the picture
class _Picture:
    """The boxes, edges and layout of one graph."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.nodes: dict[str, _Node] = {}
        self.dag = nx.DiGraph()                                    # boxes and the values between them
        self.edge_values: dict[tuple[str, str], list[Value]] = {}
        self.legend: set[str] = set()
        self._collect()
        self.layout = nx.DiGraph()                                 # the dag with waypoints on long edges
        self.chains: dict[tuple[str, str], list[str]] = {}         # edge -> its nodes, waypoints included
        self._layer()
        self.layers = self._order()
        self._place()

    # ----------------------------------------------------------------- nodes and edges
    def _add(self, node: _Node) -> None:
        self.nodes[node.id] = node
        self.dag.add_node(node.id)

    def _connect(self, source: str, target: str, value: Value) -> None:
        self.dag.add_edge(source, target)
        self.edge_values.setdefault((source, target), []).append(value)

    def _collect(self) -> None:
        source: dict[str, str] = {}                                # value name -> id of the box defining it
        for i, value in enumerate(self.graph.inputs):
            self._add(_box(f"in{i}", ["input", f"%{value.name}", str(value.type)], _BOUNDARY_COLOUR,
                           [("input", f"%{value.name}"), ("type", describe_type(value.type))], rounded=True))
            source[value.name] = f"in{i}"
        for i, op in enumerate(self.graph.ops):
            box, keys = _op_box(f"n{i}", op)
            self._add(box)
            self.legend.update(keys)
            for value in op.inputs:
                if value.name in source:
                    self._connect(source[value.name], box.id, value)
            source.update((v.name, box.id) for v in op.outputs)
        names = ", ".join(f"%{v.name}" for v in self.graph.outputs)
        self._add(_box("out", ["return", names], _BOUNDARY_COLOUR,
                       [("return", names)] + [("output", _operand_row(v)) for v in self.graph.outputs],
                       rounded=True))
        for value in self.graph.outputs:
            if value.name in source:
                self._connect(source[value.name], "out", value)

    # ----------------------------------------------------------------- layout
    def _layer(self) -> None:
        """Layers by longest path from the sources; edges spanning layers get one waypoint per layer."""
        for depth, generation in enumerate(nx.topological_generations(self.dag)):
            for id in generation:
                self.nodes[id].layer = depth
        self.layout.add_nodes_from(self.dag)
        for source, target in self.dag.edges:
            chain = [source]
            for layer in range(self.nodes[source].layer + 1, self.nodes[target].layer):
                waypoint = _Node(f"w{len(self.nodes)}", [], "", [], layer=layer)
                self.nodes[waypoint.id] = waypoint
                chain.append(waypoint.id)
            chain.append(target)
            nx.add_path(self.layout, chain)
            self.chains[(source, target)] = chain

    def _order(self) -> list[list[str]]:
        """Each layer's nodes left to right, by the barycenter of their neighbours, sweeping down and up."""
        layers: list[list[str]] = [[] for _ in range(max(node.layer for node in self.nodes.values()) + 1)]
        for id, node in self.nodes.items():               # insertion order: program order first
            layers[node.layer].append(id)
        position = {id: i for row in layers for i, id in enumerate(row)}

        def sort(layer: list[str], neighbours) -> None:
            def barycenter(id):
                around = [position[n] for n in neighbours(id)]
                return statistics.fmean(around) if around else position[id]
            layer.sort(key=barycenter)
            position.update((id, i) for i, id in enumerate(layer))
        for _ in range(_SWEEPS):
            for layer in layers[1:]:
                sort(layer, self.layout.predecessors)
            for layer in reversed(layers[:-1]):
                sort(layer, self.layout.successors)
        return layers

    def _place(self) -> None:
        """x coordinates: each box near the mean of its neighbours, boxes in a layer kept apart."""
        for layer in self.layers:
            self._spread(layer, {id: 0.0 for id in layer})
        for _ in range(_SWEEPS):
            for rows, neighbours in ((self.layers[1:], self.layout.predecessors),
                                     (reversed(self.layers[:-1]), self.layout.successors)):
                for layer in rows:
                    wanted = {id: statistics.fmean([self.nodes[n].x for n in neighbours(id)] or [self.nodes[id].x])
                              for id in layer}
                    self._spread(layer, wanted)
        left = min(node.x - node.width / 2 for node in self.nodes.values())
        for node in self.nodes.values():
            node.x += _MARGIN - left

    def _spread(self, layer: list[str], wanted: dict[str, float]) -> None:
        """Put the boxes of `layer` at `wanted` x as closely as keeping them apart allows."""
        nodes = [self.nodes[id] for id in layer]
        previous = None
        for node in nodes:
            node.x = wanted[node.id]
            if previous is not None:
                node.x = max(node.x, previous.x + (previous.width + node.width) / 2 + _BOX_GAP)
            previous = node
        shift = statistics.fmean(wanted[node.id] - node.x for node in nodes)
        for node in nodes:
            node.x += shift

    @property
    def size(self) -> tuple[int, int]:
        right = max(node.x + node.width / 2 for node in self.nodes.values())
        bottom = max(node.y + _BOX_HEIGHT for node in self.nodes.values())
        return int(right + _MARGIN), int(bottom + _MARGIN)


# =========================================================================== SVG
_SVG_STYLE = """
.qpass-graph text { font: 11px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; fill: #212529; }
.qpass-graph .kind { font-weight: bold; }
.qpass-graph .node rect { stroke: #495057; stroke-width: 1; }
.qpass-graph .node:hover rect, .qpass-graph .node.selected rect { stroke: #d9480f; stroke-width: 2.5; }
.qpass-graph .node.match rect { stroke: #1c7ed6; stroke-width: 3; }
.qpass-graph .edge { fill: none; stroke: #868e96; stroke-width: 1.2; }
.qpass-graph .edge.selected { stroke: #d9480f; stroke-width: 2.5; }
"""


def _text(x: float, y: float, content: str, css: str = "") -> str:
    attr = f' class="{css}"' if css else ""
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="middle"{attr}>{html.escape(content)}</text>'


def _tooltip(details: list[tuple[str, str]]) -> str:
    return html.escape("\n".join(f"{label}: {text}" for label, text in details))


def _svg_node(node: _Node) -> str:
    left, top = node.x - node.width / 2, node.y
    rounding = 18 if node.rounded else 4
    parts = [f'<g class="node" id="{node.id}"><title>{_tooltip(node.details)}</title>',
             f'<rect x="{left:.1f}" y="{top:.1f}" width="{node.width:.1f}" height="{_BOX_HEIGHT}" '
             f'rx="{rounding}" fill="{node.colour}"/>']
    for i, line in enumerate(node.lines):
        parts.append(_text(node.x, top + _PAD / 2 + _LINE_HEIGHT * (i + 0.8), line, "kind" if i == 0 else ""))
    if node.stripe:
        parts.append(f'<rect x="{left + 1.5:.1f}" y="{top + 1.5:.1f}" width="5" height="{_BOX_HEIGHT - 3}" '
                     f'fill="{node.stripe}" stroke="none"/>')
    parts.append("</g>")
    return "".join(parts)


def _svg_edge(picture: _Picture, source: str, target: str) -> str:
    chain = [picture.nodes[id] for id in picture.chains[(source, target)]]
    points = [(chain[0].x, chain[0].y + _BOX_HEIGHT)]
    points += [(n.x, n.y + _BOX_HEIGHT / 2) for n in chain[1:-1]]
    points.append((chain[-1].x, chain[-1].y))
    path = f"M{points[0][0]:.1f},{points[0][1]:.1f}"
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        middle = (y0 + y1) / 2
        path += f" C{x0:.1f},{middle:.1f} {x1:.1f},{middle:.1f} {x1:.1f},{y1:.1f}"
    values = "\n".join(f"%{v.name}: {describe_type(v.type)}" for v in picture.edge_values[(source, target)])
    return (f'<path class="edge" data-from="{source}" data-to="{target}" d="{path}" '
            f'marker-end="url(#qpass-arrow)"><title>{html.escape(values)}</title></path>')


def _svg_legend(picture: _Picture) -> tuple[str, float]:
    """The title and the colour key, and the x where they end."""
    graph = picture.graph
    title = f"@{graph.name}: {len(graph.ops)} ops"
    parts = [f'<text x="{_MARGIN}" y="{_MARGIN + 12}" class="kind">{html.escape(title)}</text>']
    x = _MARGIN + len(title) * _CHAR_WIDTH + 24
    for key in sorted(picture.legend, key=lambda k: (list(COLOURS).index(k) if k in COLOURS else len(COLOURS), k)):
        parts.append(f'<rect x="{x:.1f}" y="{_MARGIN}" width="14" height="14" rx="2" '
                     f'fill="{COLOURS.get(key, _UNKNOWN_COLOUR)}" stroke="#495057"/>')
        parts.append(f'<text x="{x + 20:.1f}" y="{_MARGIN + 11}">{html.escape(key)}</text>')
        x += 20 + len(key) * _CHAR_WIDTH + 16
    return '<g class="legend">' + "".join(parts) + "</g>", x


def _svg(picture: _Picture) -> str:
    legend, legend_end = _svg_legend(picture)
    width, height = picture.size
    width = max(width, int(legend_end + _MARGIN))
    edges = "\n".join(_svg_edge(picture, s, t) for s, t in picture.chains)
    boxes = "\n".join(_svg_node(n) for n in picture.nodes.values() if n.lines)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="qpass-graph" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">\n<style>{_SVG_STYLE}</style>\n'
            '<defs><marker id="qpass-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
            'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#868e96"/>'
            f'</marker></defs>\n<rect width="{width}" height="{height}" fill="#ffffff"/>\n'
            f'{legend}\n<g class="edges">\n{edges}\n</g>\n<g class="nodes">\n{boxes}\n</g>\n</svg>\n')


def graph_svg(graph: Graph) -> str:
    """The graph drawn as a standalone SVG document (tooltips show each op's details)."""
    return _svg(_Picture(graph))


# =========================================================================== HTML
_PAGE_STYLE = """
body { margin: 0; font: 13px system-ui, sans-serif; color: #212529; display: flex; flex-direction: column;
       height: 100vh; }
header { padding: 6px 12px; border-bottom: 1px solid #dee2e6; display: flex; gap: 12px; align-items: center; }
header h1 { font-size: 15px; margin: 0; }
main { flex: 1; display: flex; min-height: 0; }
#canvas { flex: 1; overflow: auto; background: #f8f9fa; }
#canvas svg { display: block; margin: 0 auto; }
#panel { width: 380px; overflow: auto; border-left: 1px solid #dee2e6; padding: 8px 12px; }
#panel table { border-collapse: collapse; width: 100%; }
#panel td { vertical-align: top; padding: 3px 4px; border-bottom: 1px solid #f1f3f5;
            font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; word-break: break-all; }
#panel td:first-child { color: #868e96; white-space: nowrap; word-break: normal; }
"""

_PAGE_SCRIPT = """
const details = JSON.parse(document.getElementById('qpass-details').textContent);
const svg = document.querySelector('#canvas svg');
const panelTitle = document.getElementById('panel-title'), panelRows = document.getElementById('panel-rows');
let pinned = null, matches = [], matchIndex = -1;
function show(id) {
  const rows = details[id] || [];
  panelTitle.textContent = rows.length ? rows[0][1] : '';
  panelRows.replaceChildren(...rows.map(([label, text]) => {
    const tr = document.createElement('tr');
    for (const cell of [label, text]) { const td = document.createElement('td'); td.textContent = cell; tr.append(td); }
    return tr;
  }));
}
function select(id) {
  pinned = id;
  svg.querySelectorAll('.selected').forEach(e => e.classList.remove('selected'));
  if (!id) return;
  document.getElementById(id).classList.add('selected');
  svg.querySelectorAll(`.edge[data-from="${id}"], .edge[data-to="${id}"]`).forEach(e => e.classList.add('selected'));
  show(id);
}
svg.querySelectorAll('.node').forEach(node => {
  node.addEventListener('mouseenter', () => { if (!pinned) show(node.id); });
  node.addEventListener('click', event => { event.stopPropagation(); select(node.id); });
});
svg.addEventListener('click', () => select(null));
document.getElementById('find').addEventListener('input', event => {
  const query = event.target.value.toLowerCase();
  matches = [];
  svg.querySelectorAll('.node').forEach(node => {
    const hit = query && node.textContent.toLowerCase().includes(query);
    node.classList.toggle('match', Boolean(hit));
    if (hit) matches.push(node);
  });
  matchIndex = -1;
  document.getElementById('found').textContent = query ? `${matches.length} found` : '';
});
document.getElementById('find').addEventListener('keydown', event => {
  if (event.key !== 'Enter' || !matches.length) return;
  matchIndex = (matchIndex + 1) % matches.length;
  matches[matchIndex].scrollIntoView({block: 'center', inline: 'center'});
  select(matches[matchIndex].id);
});
const size = [svg.width.baseVal.value, svg.height.baseVal.value];
function scaleTo(scale) {
  svg.setAttribute('width', size[0] * scale);
  svg.setAttribute('height', size[1] * scale);
}
const zoom = factor => scaleTo(svg.width.baseVal.value / size[0] * factor);
const fitWidth = () => scaleTo(document.getElementById('canvas').clientWidth / size[0]);
const first = svg.querySelector('.node');
first.scrollIntoView({block: 'nearest', inline: 'center'});
show(first.id);
"""


def _script_json(data) -> str:
    """JSON that is safe inside a <script> element."""
    return json.dumps(data, ensure_ascii=False, sort_keys=True).replace("</", "<\\/")


def graph_html(graph: Graph) -> str:
    """A self-contained HTML page showing the graph: hover or click an op for its details."""
    picture = _Picture(graph)
    details = {id: node.details for id, node in picture.nodes.items() if node.lines}
    inputs = ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
    heading = html.escape(f"@{graph.name}({inputs})")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>qpass: @{html.escape(graph.name)}</title>
<style>{_PAGE_STYLE}</style></head>
<body>
<header><h1>{heading}</h1><span>{len(graph.ops)} ops, {len(graph.constants())} constants</span>
<input id="find" placeholder="find op (Enter: next)" size="24"><span id="found"></span>
<button onclick="zoom(1/1.25)">&minus;</button><button onclick="zoom(1.25)">+</button>
<button onclick="fitWidth()">fit width</button></header>
<main><div id="canvas">{_svg(picture)}</div>
<aside id="panel"><h2 id="panel-title"></h2><table><tbody id="panel-rows"></tbody></table></aside></main>
<script type="application/json" id="qpass-details">{_script_json(details)}</script>
<script>{_PAGE_SCRIPT}</script>
</body></html>
"""


# =========================================================================== CLI
def check_writable(path: str, what: str) -> None:
    """Fail early, naming `path`, when `what` could not be written there."""
    directory = Path(path).resolve().parent
    if not directory.is_dir():
        raise QpassError(f"cannot write {what} {path}: the directory {directory} does not exist; "
                         "create it or choose another path")
    if Path(path).is_dir():
        raise QpassError(f"cannot write {what} {path}: it is a directory; give a file name")


def write_text_file(path: str, text: str, what: str) -> None:
    """Write `text` to `path` whole or not at all; failures name the path and the fix."""
    check_writable(path, what)
    try:
        atomic_write(path, text.encode())
    except OSError as e:
        raise QpassError(f"cannot write {what} {path}: {e.strerror or e}; choose a writable path") from None


@command("view", "draw the IR of an ONNX model or .qir file as an HTML page or an SVG picture")
def _view(parser):
    parser.add_argument("model", help="an .onnx model or a .qir file")
    output = parser.add_mutually_exclusive_group(required=True)
    output.add_argument("--html", metavar="OUT.html", help="write an interactive page (hover ops for details)")
    output.add_argument("--svg", metavar="OUT.svg", help="write a standalone SVG picture")
    parser.add_argument("--input-shape", action="append", metavar="NAME=DxD...", help="fix a dynamic input shape")

    def run(args):
        path, what, render = ((args.html, "the HTML page", graph_html) if args.html
                              else (args.svg, "the SVG picture", graph_svg))
        check_writable(path, what)                          # before any work
        graph = load_model(args.model, args.input_shape)
        write_text_file(path, render(graph), what)
        print(f"wrote {what} {path} ({len(graph.ops)} ops of graph @{graph.name})")
        return 0
    return run
