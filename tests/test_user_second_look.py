"""Issue 16, the user's second look: what a new user hit, one test (or a few) per item.

QDQ models are built here with onnx.helper (Q/DQ around one conv, optionally a float softmax
after the last dequantize); integer results are compared bit for bit, float ones within float
rounding (said where).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qpass
from qpass.api import FOLD_QDQ, default_pipeline, model_kind, quantization_pipeline
from qpass.compiler import CompiledModel, check_and_time, compare_outputs
from qpass.errors import QpassError
from qpass.ir import load, print_graph, save
from qpass.passmgr.pipeline import parse_pipeline
from qpass.tools.cli import main, summary

DIGITS = Path(qpass.__path__[0]) / "data" / "digits_cnn.onnx"


def qdq_model(softmax: bool = False) -> onnx.ModelProto:
    """x -> Q/DQ (u8) -> Conv with per-channel i8 weights and an i32 bias -> Q/DQ, then a float softmax."""
    rng = np.random.default_rng(5)
    w = rng.integers(-127, 128, (6, 4, 3, 3)).astype(np.int8)
    w_scale, x_scale = np.linspace(0.002, 0.01, 6).astype(np.float32), np.float32(0.03)
    last = "yd" if softmax else "y"
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("DequantizeLinear", ["b", "bs"], ["bd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "bd"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["c", "ys"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys"], [last])]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["yd"], ["y"], axis=1))
    constants = {"xs": x_scale, "xz": np.uint8(128), "w": w, "ws": w_scale, "wz": np.zeros(6, np.int8),
                 "b": np.arange(-3, 3, dtype=np.int32) * 50, "bs": w_scale * x_scale, "ys": np.float32(0.05)}
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(a), n) for n, a in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def sample(seed: int = 0) -> dict:
    return {"x": np.random.default_rng(seed).standard_normal((1, 4, 9, 9)).astype(np.float32)}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """qdq.onnx, qdq_softmax.onnx, its integer IR softmax.qir (+ .npz), calib.npz and a plain file."""
    folder = tmp_path_factory.mktemp("second_look")
    onnx.save(qdq_model(), folder / "qdq.onnx")
    onnx.save(qdq_model(softmax=True), folder / "qdq_softmax.onnx")
    save(qpass.quantize(qpass.import_onnx(folder / "qdq_softmax.onnx"), None), folder / "softmax.qir")
    np.savez(folder / "calib.npz", x=np.stack([sample(i)["x"] for i in range(4)]))
    (folder / "afile").write_text("a file, not a folder")
    return folder


@pytest.fixture(scope="module")
def compiled_softmax(files) -> CompiledModel:
    return qpass.compile(files / "qdq_softmax.onnx", "x86_64-linux-gnu")


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """`qpass ARGS` in this process: (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:                      # argparse's usage errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_clean_failure(code: int, err: str, *fragments: str) -> None:
    assert code not in (0, None), err
    assert "Traceback" not in err and "internal error" not in err, err
    assert err.count("error:") == 1, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture
def no_work(monkeypatch):
    """Make loading a model fail loudly: a check that must come before any work runs first."""
    import qpass.compiler
    import qpass.tools.cli

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the output place was checked")
    monkeypatch.setattr(qpass.compiler, "_load", refuse)
    monkeypatch.setattr(qpass.tools.cli, "load_model", refuse)


# =========================================================================== 1. quantize(qdq_graph, None)
def test_quantize_folds_a_qdq_model_without_calibration(files):
    graph = qpass.import_onnx(files / "qdq.onnx")
    assert model_kind(graph) == "qdq"
    folded = qpass.quantize(graph, None)          # was: TypeError: 'NoneType' object is not iterable
    assert model_kind(folded) == "integer"
    assert [op.kind for op in folded.ops] == ["quantize", "qconv2d", "dequantize"]
    assert print_graph(folded) == print_graph(qpass.run_passes(graph.copy(), FOLD_QDQ))
    # the folded integer conv computes what the Q/DQ model means, to within one output step (0.05)
    x = sample(1)
    want = qpass.interpret(graph, x)["y"]
    got = qpass.interpret(folded, x)["y"]
    assert np.abs(got - want).max() <= 0.05 + 1e-6
    assert print_graph(graph) == print_graph(qpass.import_onnx(files / "qdq.onnx"))    # input unchanged


def test_quantize_a_float_graph_without_calibration_says_how_to_give_it():
    graph = qpass.import_onnx(DIGITS)
    with pytest.raises(QpassError, match=r"@digits_cnn is a float model: quantize needs calibration data "
                                         r"\(calibration is None\); give calibration data.*calibration=\.\.\."):
        qpass.quantize(graph, None)


def test_quantize_integer_ir_says_there_is_nothing_to_do(files):
    with pytest.raises(QpassError, match="integer IR already.*nothing to quantize.*qpass compile"):
        qpass.quantize(load(files / "softmax.qir"), None)


def test_quantize_cli_folds_a_qdq_model(files, tmp_path, capsys):
    code, out, err = run_cli(capsys, "quantize", files / "qdq.onnx", "--calib", files / "calib.npz",
                             "-o", tmp_path / "q.qir", "--quiet")
    assert code == 0, err
    assert print_graph(load(tmp_path / "q.qir")) == print_graph(qpass.quantize(qpass.import_onnx(files / "qdq.onnx"),
                                                                                None))


# =========================================================================== 2. output places checked first
@pytest.mark.parametrize("where, fragments", [
    ("/proc/qpass-out", ("cannot write the artifact directory /proc/qpass-out", "nothing can be created in /proc",
                         "choose a writable place for -o")),
    ("{files}/afile/out", ("afile is a file, not a directory", "choose another -o")),
    ("{tmp}/missing/out", ("missing does not exist; create it first", "-o")),
])
def test_compile_refuses_an_unwritable_output_before_any_work(where, fragments, files, tmp_path, capsys, no_work):
    where = where.replace("{files}", str(files)).replace("{tmp}", str(tmp_path))
    code, _, err = run_cli(capsys, "compile", files / "softmax.qir", "-o", where)
    assert_clean_failure(code, err, *fragments)


def test_compile_refuses_to_replace_a_file_even_with_force(files, capsys, no_work):
    code, _, err = run_cli(capsys, "compile", files / "softmax.qir", "-o", files / "afile", "--force")
    assert_clean_failure(code, err, "afile: it is a file, not a directory")
    assert (files / "afile").read_text() == "a file, not a folder"


@pytest.mark.parametrize("command", ["compile", "quantize"])
@pytest.mark.parametrize("where, fragment", [("/proc/qpass-dumps", "nothing can be created in /proc"),
                                             ("{files}/afile", "it is a file"),
                                             ("{files}/afile/deeper", "afile is a file")])
def test_dump_ir_place_is_checked_before_any_work(command, where, fragment, files, tmp_path, capsys, no_work):
    where = where.replace("{files}", str(files))
    extra = ["--calib", files / "calib.npz"] if command == "quantize" else []
    code, _, err = run_cli(capsys, command, files / "qdq.onnx", *extra, "-o", tmp_path / "out", "--dump-ir", where)
    assert_clean_failure(code, err, "cannot create the IR dump directory", fragment, "writable --dump-ir")
    assert not list(tmp_path.iterdir())


def test_python_api_checks_output_places(files, compiled_softmax, monkeypatch):
    with pytest.raises(QpassError, match="nothing can be created in /proc"):
        compiled_softmax.save("/proc/qpass-out")
    with pytest.raises(QpassError, match="afile is a file"):
        compiled_softmax.save(files / "afile" / "out")
    import qpass.compiler
    monkeypatch.setattr(qpass.compiler, "_load", lambda *a: pytest.fail("loaded before checking dump_ir"))
    with pytest.raises(QpassError, match="cannot create the IR dump directory /proc/d"):
        qpass.compile(files / "qdq.onnx", dump_ir="/proc/d")


# =========================================================================== 3. float outputs within rounding
def test_float_output_after_dequantize_matches_within_float_rounding(compiled_softmax):
    """The softmax after the last dequantize runs in float in TVM and in numpy: within float rounding."""
    run = check_and_time(compiled_softmax, sample(2), repeat=1)
    assert run["runs_here"], run
    assert run["matches_interpreter"] is True, run
    assert run["outputs"]["y"]["rule"] == "float rounding"
    assert run["max_abs_difference"] < 1e-6
    assert run["comparison"] in ("bit-exact with the reference interpreter",
                                 "matches the reference interpreter: float outputs within float rounding "
                                 f"(max |diff| {run['max_abs_difference']:.2g})")


@pytest.mark.slow
def test_ppocr_classifier_softmax_output_is_within_float_rounding():
    """The issue's case: PP-OCR's direction classifier ends in a float softmax after a dequantize."""
    from assets import ppocr_model
    graph = qpass.import_onnx(ppocr_model("ch_ppocr_mobile_v2.0_cls_infer.onnx"), input_shapes={"x": (1, 3, 48, 192)})
    rng = np.random.default_rng(0)
    samples = [{"x": rng.uniform(-1, 1, (1, 3, 48, 192)).astype(np.float32)} for _ in range(2)]
    compiled = qpass.compile(graph, calibration=samples)
    run = check_and_time(compiled, samples[0], repeat=1)
    assert run["matches_interpreter"] is True, run
    assert [o["rule"] for o in run["outputs"].values()] == ["float rounding"]
    assert "DIFFERS" not in run["comparison"]


def test_compare_outputs_rules():
    want = {"p": np.array([0.25, 0.75], np.float32), "q": np.array([3, -4], np.int8)}
    exact = compare_outputs({k: v.copy() for k, v in want.items()}, want)
    assert exact["bit_exact"] and exact["matches_interpreter"]
    assert exact["comparison"] == "bit-exact with the reference interpreter"

    rounded = compare_outputs({"p": want["p"] + np.float32(6e-8), "q": want["q"].copy()}, want)
    assert rounded["matches_interpreter"] is True and rounded["bit_exact"] is False
    assert rounded["comparison"] == ("matches the reference interpreter: integer outputs bit-exact; float outputs "
                                     "within float rounding (max |diff| 6e-08)")

    off_by_one = compare_outputs({"p": want["p"], "q": want["q"] + np.int8(1)}, want)
    assert off_by_one["matches_interpreter"] is False
    assert off_by_one["comparison"] == "DIFFERS from the reference interpreter: q (int8) is not bit-exact (max |diff| 1)"

    far = compare_outputs({"p": want["p"] + np.float32(1e-3), "q": want["q"]}, want)
    assert far["matches_interpreter"] is False
    assert "p (float32) differs beyond float rounding (max |diff| 0.001)" in far["comparison"]

    nan = np.array([np.nan, 1.0], np.float32)
    assert compare_outputs({"p": nan.copy()}, {"p": nan})["bit_exact"] is True
    assert compare_outputs({"p": np.array([0.0, 1.0], np.float32)}, {"p": nan})["matches_interpreter"] is False


# =========================================================================== 4 and 5. compiling integer IR
def test_compiling_integer_ir_reports_and_dumps_what_it_did(files, tmp_path, capsys):
    out, dumps = tmp_path / "out", tmp_path / "dumps"
    code, stdout, err = run_cli(capsys, "compile", files / "softmax.qir", "-o", out, "--dump-ir", dumps,
                                "--print-ir-after-all", "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["size"]["float_weight_bytes"] is None
    assert report["size"]["weight_bytes"] == 6 * 4 * 3 * 3
    assert "no float model" in report["size"]["note"]
    assert report["passes"] == []
    assert report["passes_note"] == "the input is integer IR already; no quantization passes ran"
    assert json.loads((out / "report.json").read_text())["passes_note"] == report["passes_note"]
    # the dumps: the input, and the legalized IR that the library implements
    assert sorted(p.name for p in dumps.iterdir()) == ["00-input.qir", "01-legalize-activations.diff",
                                                       "01-legalize-activations.qir", "index.html"]
    assert (dumps / "00-input.qir").read_text() == print_graph(load(files / "softmax.qir"))
    assert (dumps / "01-legalize-activations.qir").read_text() == print_graph(load(out / "model.qir"))
    assert "// ----- IR after legalize-activations{dtype=" in err and "} (changed) ----- //" in err


def test_compile_dumps_continue_through_the_legalization(files, tmp_path):
    dumps = tmp_path / "dumps"
    compiled = qpass.compile(files / "qdq_softmax.onnx", dump_ir=dumps)
    names = sorted(p.name for p in dumps.glob("*.qir"))
    assert names[0] == "00-input.qir" and names[-1].endswith("-legalize-activations.qir"), names
    assert len(names) == len(set(n[:2] for n in names))                 # one number per dump, none reused
    assert (dumps / names[-1]).read_text() == print_graph(compiled.graph)
    assert [p["pass"] for p in compiled.report["passes"]] == [str(p) for p in parse_pipeline(FOLD_QDQ)]


# =========================================================================== 6. passes, view, show
def test_passes_prints_whole_first_paragraphs(capsys):
    code, out, _ = run_cli(capsys, "passes")
    assert code == 0
    lines = out.splitlines()
    line = lines[lines.index("assign-bitwidth") + 1]
    assert "when only that layer's weights go to int4" in line and line.endswith("scipy/HiGHS).")
    assert summary("First line\n    goes on here.\n\n    Second paragraph.") == "First line goes on here."


def test_view_html_says_what_it_wrote(files, tmp_path, capsys):
    page = tmp_path / "v.html"
    code, out, err = run_cli(capsys, "view", files / "softmax.qir", "--html", page)
    assert code == 0, err
    assert page.is_file() and f"wrote the HTML page {page}" in out


def test_show_html_also_prints_the_ir(files, tmp_path, capsys):
    page = tmp_path / "s.html"
    code, out, err = run_cli(capsys, "show", files / "softmax.qir", "--html", page)
    assert code == 0, err
    assert out == print_graph(load(files / "softmax.qir"))
    assert page.is_file() and f"wrote the HTML page {page}" in err


# =========================================================================== 7. --print-pipeline
def test_compile_print_pipeline_prints_what_compile_runs(files, tmp_path, capsys):
    code, out, err = run_cli(capsys, "compile", DIGITS, "--print-pipeline", "--bits", "mixed", "--budget", "0.5")
    assert code == 0, err
    assert out.strip() == quantization_pipeline("mixed", budget=0.5)
    assert "assign-bitwidth{budget=0.5}" in out
    assert "assign-bitwidth" in [p.name for p in parse_pipeline(out.strip())]   # pastes into --pipeline
    code, out, err = run_cli(capsys, "compile", files / "qdq.onnx", "--print-pipeline")
    assert (code, out.strip()) == (0, FOLD_QDQ)
    code, out, err = run_cli(capsys, "compile", files / "softmax.qir", "--print-pipeline")
    assert (code, out) == (0, "") and "no passes: the input is integer IR already" in err
    code, out, err = run_cli(capsys, "compile", files / "qdq.onnx", "--print-pipeline", "-p", "fold-constants")
    assert (code, out.strip()) == (0, "fold-constants")
    assert not list(tmp_path.iterdir())


def test_quantize_print_pipeline(files, capsys):
    code, out, err = run_cli(capsys, "quantize", DIGITS, "--print-pipeline", "--bits", "4", "--method", "mse")
    assert code == 0, err
    assert out.strip() == quantization_pipeline(4, "mse") == default_pipeline("float", 4, "mse")
    code, out, err = run_cli(capsys, "quantize", files / "qdq.onnx", "--print-pipeline")
    assert (code, out.strip()) == (0, FOLD_QDQ)


def test_compile_and_quantize_without_output_say_what_is_missing(files, capsys):
    code, _, err = run_cli(capsys, "compile", files / "softmax.qir")
    assert_clean_failure(code, err, "-o OUTDIR is required", "--print-pipeline")
    code, _, err = run_cli(capsys, "quantize", DIGITS)
    assert_clean_failure(code, err, "--calib PATH and -o OUT.qir are required", "--print-pipeline")
