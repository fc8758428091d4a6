"""Calibration from a folder of images with a preprocessing spec, and real accuracy on held-out
labelled data (`--preprocess`, `--eval`, `--eval-limit`), as a new user meets them."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qpass
from qpass.errors import QpassError
from qpass.frontend.images import IMAGENET, ImagePreprocess, center_crop
from qpass.quant.calibration import SampleSource, load_calibration
from qpass.quant.evaluation import load_evaluation
from qpass.tools.cli import main

Image = pytest.importorskip("PIL.Image")

SPEC = "resize=16x16,mean=0.5/0.5/0.5,std=0.25/0.25/0.25,scale=1/255,layout=NCHW"
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255),
           (200, 100, 50), (50, 100, 200), (128, 128, 128), (20, 200, 120)]


def qpass_cli(*args):
    return subprocess.run([sys.executable, "-m", "qpass", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ))


def assert_clean_error(result, *fragments):
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def _classifier(channels_last: bool = False) -> onnx.ModelProto:
    """x [1,3,16,16] -> conv 3->4 -> relu -> global average pool -> flatten -> gemm -> logits [1,3]."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32) * 0.1, "b")
    fc = numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "fc")
    fcb = numpy_helper.from_array(np.zeros(3, np.float32), "fcb")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "colours", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
                              initializer=[w, b, fc, fcb])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _image(colour, size=(24, 20), seed=0) -> "Image.Image":
    """A coloured image with a little seeded noise, so the samples differ."""
    rng = np.random.default_rng(seed)
    array = np.clip(np.asarray(colour, np.int16) + rng.integers(-30, 30, (size[1], size[0], 3)), 0, 255)
    return Image.fromarray(array.astype(np.uint8))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A model, 6 calibration PNGs, and 4 held-out eval PNGs with a labels.csv."""
    root = tmp_path_factory.mktemp("images")
    onnx.save(_classifier(), root / "model.onnx")
    (root / "calib").mkdir()
    for i, colour in enumerate(COLOURS[:6]):
        _image(colour, seed=i).save(root / "calib" / f"{i}.png")
    (root / "val").mkdir()
    rows = []
    for i, colour in enumerate(COLOURS[6:]):
        _image(colour, seed=100 + i).save(root / "val" / f"v{i}.png")
        rows.append((f"val/v{i}.png", i % 3))
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    return root


def _expected(path: Path) -> np.ndarray:
    """The spec SPEC done by hand: bilinear resize to 16x16, /255, (x - 0.5) / 0.25, HWC -> NCHW."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB").resize((16, 16), Image.BILINEAR), np.float32)
    return ((array / 255 - 0.5) / 0.25).transpose(2, 0, 1)[None]


def test_a_folder_of_images_calibrates_with_a_spec(data):
    graph = qpass.import_onnx(data / "model.onnx")
    samples = load_calibration(data / "calib", graph, preprocess=SPEC)
    assert len(samples) == 6
    for sample, path in zip(samples, sorted((data / "calib").glob("*.png"))):
        assert sample["x"].shape == (1, 3, 16, 16) and sample["x"].dtype == np.float32
        np.testing.assert_allclose(sample["x"], _expected(path), rtol=0, atol=1e-5)   # float rounding only
    again = load_calibration(SampleSource(data / "calib", ImagePreprocess.parse(SPEC)), graph)
    assert all(np.array_equal(a["x"], b["x"]) for a, b in zip(samples, again))
    quantized = qpass.quantize(graph, SampleSource(data / "calib", SPEC), quiet=True)
    from qpass.compiler import model_kind
    assert model_kind(quantized) == "integer"


def test_images_without_a_spec_are_refused_with_an_example(data):
    graph = qpass.import_onnx(data / "model.onnx")
    with pytest.raises(QpassError, match="explicit preprocessing spec") as info:
        load_calibration(data / "calib", graph)
    message = str(info.value)
    assert "input 'x' [1, 3, 16, 16]" in message and '--preprocess "' in message and "crop=16," in message
    result = qpass_cli("quantize", data / "model.onnx", "--calib", data / "calib", "-o", data / "never.qir")
    assert_clean_error(result, "explicit preprocessing spec", "--preprocess")
    assert not (data / "never.qir").exists()


@pytest.mark.parametrize("spec, fragments", [
    ("resize=16x16,layout=NHWC", ["layout=NHWC", "the input looks NCHW: use layout=NCHW"]),
    ("resize=32x32", ["makes 32x32 images", "takes 16x16", "use resize=16x16"]),
    ("crop=8", ["makes 8x8 images", "use crop=16x16"]),
    ("resize=16x16,color=gray", ["color=gray makes 1", "use color=rgb"]),
    ("resize=20", ["depends on each image", "add crop=16x16"]),
    ("resize=16x16,layout=CHW", ["rank 4", "layout=CHW has 3 axes", "use layout=NCHW"]),
])
def test_a_spec_that_does_not_fit_the_input_names_it_and_the_fix(data, spec, fragments):
    graph = qpass.import_onnx(data / "model.onnx")
    with pytest.raises(QpassError) as info:
        load_calibration(data / "calib", graph, preprocess=spec)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    assert "input 'x' [1, 3, 16, 16]" in str(info.value)


@pytest.mark.parametrize("spec, fragment", [
    ("crpo=224", "unknown key 'crpo' (did you mean 'crop'?)"),
    ("resize=big", "resize=big is not a size"),
    ("scale=1/0", "scale=1/0 is not a number"),
    ("mean=0.5/0.5,resize=16x16", "mean has 2 values but color=rgb makes 3 channel(s)"),
    ("resize=16x16,std=0", "std has a zero"),
    ("resize=200,crop=224", "larger than the short side resize=200"),
    ("layout=NCWH", "layout=NCWH is not one of"),
    ("resize", "has no value"),
])
def test_bad_specs_are_refused_at_the_command_line(data, spec, fragment, capsys):
    with pytest.raises(QpassError, match="preprocessing spec"):
        ImagePreprocess.parse(spec)
    with pytest.raises(SystemExit) as exit_info:       # argparse refuses it before anything is read
        main(["compile", str(data / "model.onnx"), "--calib", str(data / "calib"), "--preprocess", spec,
              "-o", str(data / "never")])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2 and "argument --preprocess" in stderr and fragment in stderr, stderr
    assert "Traceback" not in stderr and not (data / "never").exists()


def test_the_spec_prints_and_parses_back():
    spec = ImagePreprocess.parse("resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,"
                                 "scale=1/255,layout=NCHW")
    assert spec == IMAGENET and ImagePreprocess.parse(str(spec)) == spec
    assert str(ImagePreprocess.parse("crop=48x192,color=BGR,layout=nhwc,scale=0.5")) == \
        "crop=48x192,mean=0,std=1,scale=1/2,color=bgr,layout=NHWC"


def test_the_scripts_image_helpers_keep_their_imagenet_crop():
    """scripts/eval_agreement.py and bench.py moved to qpass.frontend.images: the centre crop is the
    torchvision eval transform (short side 256, centre 224, /255, ImageNet mean/std)."""
    image = _image((10, 20, 30), size=(300, 260))
    crop = center_crop(image)
    resized = image.resize((round(300 * 256 / 260), 256), Image.BILINEAR)
    left, top = (resized.size[0] - 224) // 2, (256 - 224) // 2
    array = np.asarray(resized.crop((left, top, left + 224, top + 224)), np.float32) / 255.0
    want = ((array - np.float32([0.485, 0.456, 0.406])) / np.float32([0.229, 0.224, 0.225])).transpose(2, 0, 1)[None]
    assert crop.shape == (1, 3, 224, 224) and np.array_equal(crop, want.astype(np.float32))
    text = (Path(__file__).resolve().parent.parent / "scripts" / "eval_agreement.py").read_text()
    assert "from qpass.frontend.images import" in text


def test_the_shape_message_describes_what_is_accepted(tmp_path):
    """Regression: the message said [samples, 1, 3, 16, 16] while [N, 3, 16, 16] is also accepted."""
    graph = qpass.import_onnx(_classifier())
    rng = np.random.default_rng(0)
    for accepted in ((5, 3, 16, 16), (5, 1, 3, 16, 16)):
        assert len(load_calibration({"x": rng.standard_normal(accepted).astype(np.float32)}, graph)) == 5
    with pytest.raises(QpassError) as info:
        load_calibration({"x": rng.standard_normal((5, 3, 8, 8)).astype(np.float32)}, graph)
    message = str(info.value)
    assert "[N, 1, 3, 16, 16] or [N, 3, 16, 16]" in message and "[1, 3, 16, 16] or [3, 16, 16]" in message
    assert "samples, 1, 3" not in message
    # and a folder of .npy samples without the batch axis is now accepted, as the message says
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / "0.npy", rng.standard_normal((3, 16, 16)).astype(np.float32))
    assert load_calibration(tmp_path / "npy", graph)[0]["x"].shape == (1, 3, 16, 16)


def _interpreter_top1(graph, samples) -> np.ndarray:
    return np.asarray([int(np.argmax(qpass.interpret(graph, s)[graph.outputs[0].name])) for s in samples])


def test_compile_reports_real_accuracy_equal_to_the_interpreter(data):
    calibration = SampleSource(data / "calib", SPEC)
    compiled = qpass.compile(data / "model.onnx", calibration=calibration,
                             evaluation=SampleSource(data / "labels.csv", SPEC))
    accuracy = compiled.report["accuracy"]
    assert accuracy["samples"] == 4 and accuracy["available"] == 4 and accuracy["classes"] == 3
    assert accuracy["output"] == "logits" and accuracy["reference"] == "float"
    labels = np.asarray([i % 3 for i in range(4)])
    samples = [{"x": _expected(data / "val" / f"v{i}.png")} for i in range(4)]
    integer = _interpreter_top1(compiled.graph, load_evaluation(SampleSource(data / "labels.csv", SPEC),
                                                                compiled.graph).samples)
    float_graph = qpass.run_passes(qpass.import_onnx(data / "model.onnx"), qpass.api.CANONICALIZE)
    reference = _interpreter_top1(float_graph, samples)
    assert accuracy["top1"] == {"float": float(np.mean(reference == labels)),
                                "integer": float(np.mean(integer == labels))}
    assert accuracy["correct"]["integer"] == int(np.sum(integer == labels))
    assert accuracy["top1_agreement"] == float(np.mean(reference == integer))
    assert not any("calibration samples" in w for w in compiled.report["warnings"])


def test_eval_data_that_overlaps_calibration_is_left_out_with_a_warning(data, tmp_path):
    with open(tmp_path / "labels.csv", "w") as f:
        f.write(f"{data}/calib/0.png,0\n{data}/calib/1.png,1\n{data}/val/v0.png,2\n")
    graph = qpass.import_onnx(data / "model.onnx")
    calibration = load_calibration(data / "calib", graph, preprocess=SPEC)
    eval_set = load_evaluation(SampleSource(tmp_path / "labels.csv", SPEC), graph, calibration=calibration)
    assert eval_set.names == ["labels.csv:3 (" + f"{data}/val/v0.png)"] and len(eval_set.left_out) == 2
    assert "2 sample(s) are also calibration samples" in eval_set.warnings[0]
    with open(tmp_path / "all.csv", "w") as f:
        f.write(f"{data}/calib/0.png,0\n")
    with pytest.raises(QpassError, match="every eval sample .* is also a calibration sample"):
        load_evaluation(SampleSource(tmp_path / "all.csv", SPEC), graph, calibration=calibration)


def test_eval_limit_bounds_the_work_by_count(data):
    graph = qpass.import_onnx(data / "model.onnx")
    eval_set = load_evaluation(SampleSource(data / "labels.csv", SPEC), graph, limit=2)
    assert len(eval_set.samples) == 2 and eval_set.available == 4
    assert eval_set.names[0].endswith("(val/v0.png)")


def test_npz_eval_formats(tmp_path):
    """A folder of .npz samples each with a `label`, and one .npz of stacked inputs plus `labels`."""
    graph = qpass.import_onnx(_classifier())
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 1, 3, 16, 16)).astype(np.float32)
    (tmp_path / "samples").mkdir()
    for i in range(3):
        np.savez(tmp_path / "samples" / f"{i}.npz", x=x[i], label=i)
    np.savez(tmp_path / "stacked.npz", anything=x[:, 0], labels=np.arange(3))
    for source in (tmp_path / "samples", tmp_path / "stacked.npz"):
        eval_set = load_evaluation(source, graph)
        assert eval_set.labels == [0, 1, 2]
        assert all(np.array_equal(s["x"], x[i]) for i, s in enumerate(eval_set.samples))


@pytest.mark.parametrize("rows, fragments", [
    ("val/v0.png,7\n", ["outside 0..2", "output logits"]),
    ("val/v0.png,cat\n", ["line 1", "label 'cat' is not a class index"]),
    ("val/missing.png,0\n", ["line 1", "val/missing.png does not exist"]),
    ("val/v0.png\n", ["line 1", "not a `path,label` row"]),
    ("", ["lists no samples"]),
])
def test_bad_eval_data_is_refused_before_any_work(data, tmp_path, rows, fragments):
    (data / "bad.csv").write_text(rows)
    graph = qpass.import_onnx(data / "model.onnx")
    with pytest.raises(QpassError) as info:
        load_evaluation(SampleSource(data / "bad.csv", SPEC), graph)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_eval_needs_a_classifier_and_images_need_the_spec(data):
    graph = qpass.import_onnx(data / "model.onnx")
    with pytest.raises(QpassError, match="explicit preprocessing spec"):
        load_evaluation(data / "labels.csv", graph)
    wide = qpass.import_onnx(_wide_output_model())
    with pytest.raises(QpassError, match="not one class axis"):
        load_evaluation(data / "labels.csv", wide)


def _wide_output_model() -> onnx.ModelProto:
    """An image-to-image model: its output has no single class axis."""
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "wide",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 16, 16])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_cli_compile_with_image_calibration_and_eval(data, tmp_path):
    out = tmp_path / "out"
    result = qpass_cli("compile", data / "model.onnx", "--preprocess", SPEC, "--calib", data / "calib",
                       "--eval", data / "labels.csv", "--eval-limit", "3", "-o", out)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    accuracy = report["accuracy"]
    assert accuracy["samples"] == 3 and accuracy["available"] == 4 and set(accuracy["top1"]) == {"float", "integer"}
    assert "accuracy on 3 eval samples (first 3 of 4, --eval-limit)" in result.stdout
    assert f"top-1 float {accuracy['top1']['float']:.1%} -> integer {accuracy['top1']['integer']:.1%}" in result.stdout
    bad = qpass_cli("compile", data / "model.onnx", "--preprocess", SPEC, "--calib", data / "calib",
                    "--eval", data / "labels.csv", "--eval-limit", "0", "-o", tmp_path / "never")
    assert_clean_error(bad, "--eval-limit", "positive whole number")


@pytest.mark.parametrize("order", ["calib-first", "preprocess-first"])
def test_preprocess_reaches_every_command_that_calibrates_in_either_order(order):
    from qpass.tools.cli import build_parser
    pairs = [["--calib", "photos"], ["--preprocess", SPEC]]
    for command in ("quantize", "compile", "debug"):
        flags = [flag for pair in (pairs if order == "calib-first" else pairs[::-1]) for flag in pair]
        args = build_parser().parse_args([command, "m.onnx", *flags, "-o", "out"])
        assert args.calib == SampleSource("photos", ImagePreprocess.parse(SPEC)), command
    assert build_parser().parse_args(["quantize", "m.onnx", "--calib", "c.npz", "-o", "o"]).calib == "c.npz"
