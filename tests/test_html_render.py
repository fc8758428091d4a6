"""The HTML pages: the graph viewer and the IR dump index, their structure, and how they render.

Rendering uses headless Chromium, which draws the pages and runs their scripts; those tests skip
when Chromium is not installed (Debian: apt-get install chromium).
"""

import re
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import qpass
from graphs import conv_relu
from qpass import Graph, PassContext, QuantParams, TensorType
from qpass.tools.cli import main
from qpass.passmgr.instruments import DumpIR, DumpStep, dump_index_html
from qpass.tools.viewer import COLOURS, describe_quant, graph_html, graph_svg

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DIGITS = Path(__file__).resolve().parent.parent / "qpass" / "data" / "digits_cnn.onnx"
WINDOW = (1200, 900)

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get "
                                                             "install chromium); the HTML pages are not rendered")
SVG = "{http://www.w3.org/2000/svg}"


def odd_graph() -> Graph:
    """A split (two results), a dead op, a per-channel quantized constant and outputs that are not op results."""
    g = Graph("odd")
    x = g.add_input("x", TensorType((2, 4), "f32"))
    quant = QuantParams(np.array([0.5, 0.25], np.float32), np.zeros(2, np.int32), axis=0, bits=4)
    w = g.add_constant(np.ones((2, 4), np.int8), "w", dtype="i4", quant=quant)
    left, right = g.add_op("split", [x], {"axis": 1, "sizes": [1, 3]}, names=["left", "right"]).outputs
    g.add_op("relu", [left], names=["dead"])
    weight = g.add_op("dequantize", [w], names=["weight"]).output
    g.set_outputs([g.add_op("tanh", [right], names=["y"]).output, weight, x, w])
    return g


def chromium(tmp_path: Path, *args: str) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--window-size={WINDOW[0]},{WINDOW[1]}"]
    result = subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def render(page: Path, tmp_path: Path, fragment: str = "") -> tuple[str, Image.Image]:
    """The DOM after the page's scripts ran, and a screenshot."""
    url = page.resolve().as_uri() + fragment
    dom = chromium(tmp_path, "--dump-dom", url)
    screenshot = tmp_path / f"{page.stem}.png"
    chromium(tmp_path, f"--screenshot={screenshot}", url)
    return dom, Image.open(screenshot).convert("RGB")


def hex_colour(text: str) -> tuple[int, int, int]:
    return tuple(int(text[i:i + 2], 16) for i in (1, 3, 5))


def assert_drawn(image: Image.Image, *colours: str) -> None:
    """Not blank: many colours, a good share of non-white pixels, and each of `colours` somewhere."""
    assert image.size == WINDOW
    pixels = np.asarray(image).reshape(-1, 3)
    present = {tuple(p) for p in np.unique(pixels, axis=0)}
    assert len(present) > 30, f"only {len(present)} colours: the page looks blank"
    assert np.mean(np.any(pixels < 245, axis=1)) > 0.02, "the page is almost all white"
    for colour in colours:
        assert hex_colour(colour) in present, f"{colour} is not drawn"


@pytest.fixture(scope="module")
def quantized():
    from qpass.tools.demo import bundled_test_set
    images = bundled_test_set()[0][:4]
    graph = qpass.import_onnx(DIGITS)
    return graph, images


def test_svg_is_well_formed_deterministic_and_annotated():
    svg = graph_svg(conv_relu())
    assert svg == graph_svg(conv_relu())
    root = ElementTree.fromstring(svg)
    nodes = root.findall(f".//{SVG}g[@class='node']")
    assert [n.get("id") for n in nodes] == ["in0", "n0", "n1", "out"]
    conv = nodes[1].find(f"{SVG}title").text
    assert "op: conv2d %conv" in conv and "attr pads: [1, 1, 1, 1]" in conv and "operand: %w: const f32[4,3,3,3]" in conv
    assert len(root.findall(f".//{SVG}path[@class='edge']")) == 3


def test_odd_graphs_draw():
    g = odd_graph()
    g.verify()
    root = ElementTree.fromstring(graph_svg(g))
    ids = [n.get("id") for n in root.findall(f".//{SVG}g[@class='node']")]
    assert ids == ["in0", "n0", "n1", "n2", "n3", "out"]
    page = graph_html(g)
    assert "per-channel axis=0, 4-bit: 2 scales in [0.25, 0.5], zp=0" in page and "w:i4" in page
    empty = Graph("empty")
    empty.set_outputs([empty.add_input("x", TensorType((1,), "f32"))])
    assert 'id="out"' in graph_html(empty)


def test_quant_params_are_summarized():
    per_tensor = QuantParams(np.float32(0.0235), np.int32(-3))
    assert describe_quant(per_tensor) == "scale=0.0235, zp=-3"
    per_group = QuantParams(np.full((2, 3), 0.5, np.float32), np.arange(6, dtype=np.int32).reshape(2, 3), axis=1,
                            group_size=2)
    assert describe_quant(per_group) == "per-group axis=1, group_size=2: 6 scales in [0.5, 0.5], zp in [0, 5]"


def test_view_command_writes_pages(tmp_path, capsys):
    assert main(["view", str(DIGITS), "--svg", str(tmp_path / "digits.svg")]) == 0
    ElementTree.parse(tmp_path / "digits.svg")
    assert main(["view", str(DIGITS), "--html", str(tmp_path / "digits.html")]) == 0
    assert (tmp_path / "digits.html").read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.html", "digits.svg"]


def test_dump_index_keeps_ir_text_inside_its_script():
    steps = [DumpStep(0, "input", None, True, "00-input.qir", "", 0),
             DumpStep(1, "my-pass", 0.001, True, "01-my-pass.qir", "+ </script><b>bold</b>\n", 1)]
    page = dump_index_html(steps, ["graph @a", 'graph @b  # </script><script>alert("x")</script>'])
    assert page.count("</script>") == 2 and "<b>bold</b>" not in page
    assert "<li class=\"changed\"><span>01</span><span>my-pass</span><span class=\"time\">1.00 ms</span></li>" in page


@needs_chromium
def test_viewer_page_renders(quantized, tmp_path):
    graph, images = quantized
    mixed = qpass.quantize(graph, {"input": images}, bits="mixed", quiet=True)
    page = tmp_path / "graph.html"
    page.write_text(graph_html(mixed))
    dom, image = render(page, tmp_path)
    assert len(re.findall(r'<g class="node" id="n\d+"', dom)) == len(mixed.ops)
    assert 'id="in0"' in dom and 'id="out"' in dom and dom.count('class="edge"') >= len(mixed.ops)
    assert '<h2 id="panel-title">%input</h2>' in dom                    # the script filled the side panel
    assert "<td>type</td><td>f32[1,1,8,8]</td>" in dom
    assert_drawn(image, COLOURS["i8"], COLOURS["f32"])


@needs_chromium
def test_dump_index_renders(quantized, tmp_path):
    graph, images = quantized
    dump = DumpIR(tmp_path / "dumps")
    qpass.quantize(graph, {"input": images}, ctx=PassContext([dump]), quiet=True)
    step = next(s.index for s in dump.steps if s.label.startswith("quantize"))
    dom, image = render(dump.directory / "index.html", tmp_path, f"#step-{step}")
    assert dom.count("<li class=") == len(dump.steps)                     # the input and every pass
    assert re.search(rf'<h2 id="step-title">{step:02d} quantize[^<]*</h2>', dom), dom[:2000]
    assert "changed the IR" in dom and '<span class="add">+' in dom and '<span class="del">-' in dom
    assert "graph @digits_cnn" in dom                                   # the full IR text of the step
    assert_drawn(image, "#d3f9d8", "#ffe3e3")                            # added and removed diff lines


@needs_chromium
def test_compile_report_renders(tmp_path):
    """report.html of a real compile: its summary, layer table and SQNR plot are on the page."""
    data = np.load(DIGITS.parent / "digits_test.npz")
    compiled = qpass.compile(DIGITS, "x86_64-linux-gnu", [{"input": data["images"][i:i + 1]} for i in range(8)])
    out = compiled.save(tmp_path / "out")
    dom, image = render(out / "report.html", tmp_path)
    assert "qpass compile report" in dom and "SQNR of each quantized layer" in dom
    rows = re.findall(r"<tr><td>([^<]+\.q)</td><td>(qconv2d|qdense)</td>", dom)  # the layer table
    assert len(rows) == 5, rows                                      # 4 convolutions and the classifier
    assert dom.count("<rect") >= 5                                   # a bar per layer
    # the summary card, the graph picture of the integer IR, and links to the artifact's files
    assert '<section class="card summary" id="summary"><h1>digits_cnn</h1>' in dom
    assert "Agreement with float" in dom and "Weights" in dom and "bit-exact" not in dom  # not run here
    assert len(re.findall(r'<g class="node" id="n\d+"', dom)) == len(compiled.graph.ops)
    assert '<a href="model.qir">model.qir</a>' in dom and (out / "model.qir").is_file()
    assert "http://" not in (out / "report.html").read_text().replace("http://www.w3.org/2000/svg", "")
    assert_drawn(image, "#37b24d", "#1b2a3a")                        # the int8 bars and the header


@needs_chromium
def test_compile_report_groups_float_ops_and_outputs(tmp_path):
    """A report with ops left in float and two outputs: the groups and the per-output table render."""
    from test_report import compile_report, paddle_like_net, samples as random_samples
    from qpass.quant.report import float_op_groups
    from qpass.tools.report_html import render_report_html
    graph = paddle_like_net()
    ctx = PassContext()
    integer = qpass.quantize(graph, random_samples(graph, 4), ctx=ctx, quiet=True)
    groups = float_op_groups(ctx.analyses.float_ops, integer)
    summary = {"output": "probs", "samples": 4, "output_sqnr_db": 30.0, "top1_agreement": 1.0,
               "outputs": [{"name": "boxes", "sqnr_db": 30.0, "float_range": [0.0, 320.0]},
                           {"name": "scores", "sqnr_db": 12.5, "float_range": [0.0, 1.0]}]}
    page = tmp_path / "report.html"
    page.write_text(render_report_html(compile_report(float_op_groups=groups,
                                                      quantization={"summary": summary, "layers": []}), integer))
    dom, image = render(page, tmp_path)
    assert dom.count('<span class="count">') == len(groups) and "What would fold them:" in dom
    assert "<td>scores</td><td>12.5 dB</td>" in dom
    assert "bit-exact" in dom and "0.25 ms" in dom
    assert_drawn(image, "#1b2a3a", COLOURS["i8"])                   # the header, int8 ops of the graph
