"""Bad inputs on the command line: each fails with one clear error that names the culprit and a fix.

Every case checks a non-zero exit, no traceback and no internal error, the fragments that name the
argument, node or file, and that no output file (not even half of one) is left behind. The basics
of `show` and `opt` are in test_cli.py; this suite covers the rest, for every command.
"""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from qpass.tools.cli import main

DIGITS = Path(__file__).resolve().parent.parent / "qpass" / "data" / "digits_cnn.onnx"


def _relu_model(op_type: str, dims: list) -> onnx.ModelProto:
    return helper.make_model(helper.make_graph(
        [helper.make_node(op_type, ["x"], ["y"], name=f"{op_type.lower()}0")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)]), opset_imports=[helper.make_opsetid("", 18)])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Broken models, IR files and calibration data, made once."""
    from qpass.tools.demo import bundled_test_set
    images = bundled_test_set()[0][:8]
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "truncated.onnx").write_bytes(DIGITS.read_bytes()[:3000])
    (folder / "garbage.onnx").write_bytes(b"\x08\x07not a model\xff" * 20)
    onnx.save(_relu_model("SplitToSequence", [1, 4]), folder / "unsupported.onnx")
    onnx.save(_relu_model("Relu", ["batch", 4]), folder / "dynamic.onnx")
    (folder / "bad.qir").write_text("graph @m(%x: f32[2]) {\n  %y = relu(%x) f32[2]\n  return %y\n}\n")
    np.savez(folder / "good.npz", input=images)
    np.savez(folder / "int.npz", input=(images * 255).astype(np.int64))
    np.savez(folder / "names.npz", image=images)
    for name, index, value in (("nan", 2, np.nan), ("inf", 1, np.inf)):
        broken = images.copy()
        broken[index, 0, 3, 3] = value
        np.savez(folder / f"{name}.npz", input=broken)
    np.savez(folder / "no_samples.npz", input=images[:0])
    np.savez(folder / "scalar.npz", input=np.float32(1))
    np.savez(folder / "counts.npz", input=images, extra=images[:3])
    (folder / "corrupt.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    (folder / "calib.txt").write_text("0.5 0.25\n")
    for sub in ("empty", "narrow", "truncated", "adir"):
        (folder / sub).mkdir()
    np.save(folder / "narrow" / "0.npy", images[0][:, :4])
    np.save(folder / "truncated" / "0.npy", images[0])
    (folder / "truncated" / "0.npy").write_bytes((folder / "truncated" / "0.npy").read_bytes()[:100])
    (folder / "afile").write_text("a file, not a folder")
    return folder


def _files(*folders: Path) -> set[Path]:
    return {p for folder in folders for p in folder.rglob("*")}


def run_failing(args: list[str], inputs: Path, tmp_path: Path, monkeypatch, capsys) -> str:
    """Run `qpass ARGS` (in this process, in `tmp_path`); returns stderr after checking the failure is clean."""
    monkeypatch.chdir(tmp_path)
    before = _files(inputs, tmp_path)
    try:
        code = main([arg.replace("{inputs}", str(inputs)).replace("{model}", str(DIGITS)) for arg in args])
    except SystemExit as e:                          # argparse's usage errors
        code = e.code
    stderr = capsys.readouterr().err
    assert code != 0, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    assert "error:" in stderr and "\n\n" not in stderr.strip(), stderr
    assert _files(inputs, tmp_path) == before, "a failing command left files behind"
    return stderr


def quantize(model="{model}", calib="{inputs}/good.npz", output="out.qir", *extra) -> list[str]:
    return ["quantize", model, "--calib", calib, "-o", output, "--quiet", *extra]


def case(name: str, args: list[str], *fragments: str):
    return pytest.param(args, fragments, id=name)


CASES = [
    # ---------------------------------------------------------------- models that cannot be read
    case("quantize-truncated-onnx", quantize("{inputs}/truncated.onnx"),
         "truncated.onnx", "not a readable ONNX model", "complete .onnx export"),
    case("view-garbage-onnx", ["view", "{inputs}/garbage.onnx", "--html", "out.html"],
         "garbage.onnx", "not a readable ONNX model"),
    case("opt-truncated-onnx", ["opt", "{inputs}/truncated.onnx", "-p", "fold-constants", "-o", "out.qir"],
         "truncated.onnx", "not a readable ONNX model"),
    case("quantize-unsupported-op", quantize("{inputs}/unsupported.onnx"), "SplitToSequence (", "node: splittosequence0", "qpass converts"),
    case("view-unsupported-op", ["view", "{inputs}/unsupported.onnx", "--svg", "out.svg"], "SplitToSequence (", "node: splittosequence0"),
    case("opt-unsupported-op", ["opt", "{inputs}/unsupported.onnx", "-p", "fold-constants"], "SplitToSequence (", "node: splittosequence0"),
    case("quantize-dynamic-shape", quantize("{inputs}/dynamic.onnx"),
         "input 'x' has shape ['batch', 4]", "--input-shape x=1x4"),
    case("view-dynamic-shape", ["view", "{inputs}/dynamic.onnx", "--html", "out.html"], "--input-shape x=1x4"),
    case("opt-dynamic-shape", ["opt", "{inputs}/dynamic.onnx", "-p", "fold-constants"], "--input-shape x=1x4"),
    case("input-shape-unknown-name", ["view", "{model}", "--input-shape", "image=1x1x8x8", "--html", "out.html"],
         "names 'image'", "are 'input'; use those names"),
    case("input-shape-contradicts-model", ["opt", "{model}", "-p", "fold-constants", "--input-shape", "input=1x1x9x9"],
         "input_shapes['input'] = [1, 1, 9, 9] contradicts", "keep the fixed ones"),
    case("input-shape-on-qir", ["view", "{inputs}/bad.qir", "--input-shape", "x=2", "--svg", "out.svg"],
         "--input-shape applies to ONNX models"),
    case("opt-qir-syntax-error", ["opt", "{inputs}/bad.qir", "-p", "fold-constants", "-o", "out.qir"],
         "bad.qir:2:17: expected ':'", "^"),
    case("quantize-qir-syntax-error", quantize("{inputs}/bad.qir"), "bad.qir:2:17: expected ':'"),
    case("view-qir-syntax-error", ["view", "{inputs}/bad.qir", "--html", "out.html"], "bad.qir:2:17: expected ':'"),
    # ---------------------------------------------------------------- calibration data
    case("calib-wrong-dtype", quantize(calib="{inputs}/int.npz"), "input input: dtype int64", "convert", "float32"),
    case("calib-wrong-names", quantize(calib="{inputs}/names.npz"),
         "missing input(s) input", "unknown name(s) image", "The model takes input"),
    case("calib-wrong-shape-npy", quantize(calib="{inputs}/narrow"), "shape [1, 4, 8]", "model's [1, 1, 8, 8]"),
    case("calib-nan", quantize(calib="{inputs}/nan.npz"), "sample 2, input input", "NaN or Inf", "clean the data"),
    case("calib-inf", quantize(calib="{inputs}/inf.npz"), "sample 1, input input", "NaN or Inf"),
    case("calib-empty-folder", quantize(calib="{inputs}/empty"), "holds no .npy", "one file per sample"),
    case("calib-no-samples", quantize(calib="{inputs}/no_samples.npz"), "calibration data is empty", "(input)"),
    case("calib-scalar", quantize(calib="{inputs}/scalar.npz"), "'input' is a single number", "leading sample axis"),
    case("calib-sample-counts", quantize(calib="{inputs}/counts.npz"), "different sample counts"),
    case("calib-corrupt-npz", quantize(calib="{inputs}/corrupt.npz"), "cannot read calibration file", "numpy.savez"),
    case("calib-truncated-npy", quantize(calib="{inputs}/truncated"), "cannot read calibration sample", "0.npy"),
    case("calib-not-npz", quantize(calib="{inputs}/calib.txt"), "calib.txt is not an .npz", "numpy.savez"),
    # ---------------------------------------------------------------- passes, options, pipelines
    case("quantize-unknown-pass", quantize("{model}", "{inputs}/good.npz", "out.qir", "-p", "fold-constnts"),
         "unknown pass 'fold-constnts'", "Did you mean fold-constants"),
    case("quantize-malformed-pipeline",
         quantize("{model}", "{inputs}/good.npz", "out.qir", "-p", "fold-constants{max-elements=3"),
         "<pipeline>:1:", "not closed"),
    case("opt-bad-option-value", ["opt", "{model}", "-p", "fold-constants{max-elements=ten}"],
         "max-elements='ten' is not a valid int"),
    case("opt-empty-pipeline", ["opt", "{model}", "-p", " "], "the pipeline is empty"),
    case("unknown-command-line-option", ["opt", "{model}", "-p", "fold-constants", "--bogus"],
         "unrecognized arguments: --bogus"),
    case("view-without-output", ["view", "{model}"], "one of the arguments --html --svg is required"),
    # ---------------------------------------------------------------- outputs that cannot be written
    case("quantize-output-in-missing-folder", quantize(output="missing/out.qir"),
         "cannot write missing/out.qir", "does not exist"),
    case("quantize-report-in-missing-folder",
         quantize("{model}", "{inputs}/good.npz", "out.qir", "--report", "missing/report.json"),
         "cannot write missing/report.json", "does not exist"),
    case("view-html-in-missing-folder", ["view", "{model}", "--html", "missing/out.html"],
         "cannot write the HTML page missing/out.html", "does not exist"),
    case("show-html-in-missing-folder", ["show", "{model}", "--html", "missing/out.html"],
         "cannot write missing/out.html", "does not exist"),
    case("show-svg-onto-a-folder", ["show", "{model}", "--svg", "{inputs}/adir"], "it is a directory"),
    case("view-svg-under-a-file", ["view", "{model}", "--svg", "{inputs}/afile/out.svg"], "afile/out.svg"),
    case("view-html-onto-a-folder", ["view", "{model}", "--html", "{inputs}/adir"], "it is a directory"),
    case("opt-dump-ir-onto-a-file", ["opt", "{model}", "-p", "fold-constants", "--dump-ir", "{inputs}/afile"],
         "cannot create the IR dump directory", "afile", "writable --dump-ir"),
    case("opt-output-onto-a-folder", ["opt", "{model}", "-p", "fold-constants", "-o", "{inputs}/adir"],
         "adir", "it is a directory"),
    case("quantize-output-onto-a-folder", quantize(output="{inputs}/adir"), "adir", "it is a directory"),
    case("quantize-report-onto-a-folder",
         quantize("{model}", "{inputs}/good.npz", "out.qir", "--report", "{inputs}/adir"),
         "adir", "it is a directory"),
]


@pytest.mark.parametrize("args, fragments", CASES)
def test_bad_input_fails_cleanly(args, fragments, inputs, tmp_path, monkeypatch, capsys):
    stderr = run_failing(args, inputs, tmp_path, monkeypatch, capsys)
    for fragment in fragments:
        assert fragment in stderr, stderr
