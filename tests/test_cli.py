"""The command line as a user meets it: outputs, files, plugins, and clean errors."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graphs import conv_relu
from qpass.ir import load, save

REPO = Path(__file__).resolve().parent.parent


def qpass(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "qpass", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def assert_clean_error(result, *fragments):
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("error:") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.fixture
def qir(tmp_path):
    path = tmp_path / "m.qir"
    save(conv_relu(), path)
    return path


def test_show_and_opt(qir, tmp_path):
    shown = qpass("show", qir)
    assert shown.returncode == 0 and shown.stdout == str(conv_relu())
    out = tmp_path / "out.qir"
    result = qpass("opt", qir, "--pipeline", "eliminate-identity,eliminate-dead-code", "-o", out, "--timing")
    assert result.returncode == 0, result.stderr
    assert "eliminate-identity" in result.stderr and "total" in result.stderr
    assert load(out) == conv_relu()


def test_opt_print_and_dump(qir, tmp_path):
    dumps = tmp_path / "dumps"
    result = qpass("opt", qir, "-p", "eliminate-dead-code", "--print-ir-after-all", "--dump-ir", dumps)
    assert result.returncode == 0, result.stderr
    assert "// ----- IR after eliminate-dead-code (unchanged) ----- //" in result.stderr
    assert result.stdout == str(conv_relu())
    assert sorted(p.name for p in dumps.iterdir()) == ["00-input.qir", "index.html"]


def test_passes_lists_options():
    result = qpass("passes")
    assert result.returncode == 0
    assert "fold-constants" in result.stdout and "max-elements: int = 16777216" in result.stdout


PLUGIN = textwrap.dedent('''
    """A user's pass, living outside qpass."""
    import qpass

    @qpass.register_pass("relu-to-clip")
    class ReluToClip(qpass.Pass):
        """Rewrite relu as clip{min=0}."""
        upper: float = qpass.option(3.0e38, "upper bound")

        def run(self, graph, ctx):
            ops = graph.find_ops("relu")
            for op in ops:
                new = graph.add_op("clip", op.inputs, {"min": 0.0, "max": self.upper}, before=op)
                graph.replace_all_uses(op.output, new.output)
                graph.remove_op(op)
            return qpass.PassResult(graph, bool(ops))
''')


def test_user_pass_from_a_file_runs_by_name(qir, tmp_path):
    plugin = tmp_path / "my_passes.py"
    plugin.write_text(PLUGIN)
    result = qpass("opt", qir, "--load", plugin, "-p", "relu-to-clip{upper=6.0}")
    assert result.returncode == 0, result.stderr
    assert "clip(%conv) {max=6.0, min=0.0}" in result.stdout and "= relu(" not in result.stdout
    listed = qpass("passes", "--load", plugin)
    assert "relu-to-clip" in listed.stdout and "upper: float" in listed.stdout


def test_user_pass_from_an_entry_point(qir, tmp_path):
    site = tmp_path / "site"
    (site / "userpkg").mkdir(parents=True)
    (site / "userpkg" / "__init__.py").write_text(PLUGIN)
    dist = site / "userpkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: userpkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[qpass.passes]\nrelu-to-clip = userpkg:ReluToClip\n")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    result = qpass("opt", qir, "-p", "relu-to-clip", env=env)
    assert result.returncode == 0, result.stderr
    assert "clip(%conv)" in result.stdout


def test_unknown_pass_and_bad_pipeline(qir):
    assert_clean_error(qpass("opt", qir, "-p", "fold-constnts"), "unknown pass 'fold-constnts'",
                       "Did you mean fold-constants")
    assert_clean_error(qpass("opt", qir, "-p", "fold-constants{max-elements=3"), "<pipeline>:1:",
                       "not closed")
    assert_clean_error(qpass("opt", qir, "-p", "fold-constants{nope=1}"), "has no option 'nope'")


def test_qir_syntax_error_shows_line_and_column(tmp_path):
    bad = tmp_path / "bad.qir"
    bad.write_text("graph @m(%x: f32[2]) {\n  %y = relu(%x) f32[2]\n  return %y\n}\n")
    assert_clean_error(qpass("show", bad), f"{bad}:2:17: expected ':'", "^")


def test_missing_file_and_unwritable_output(qir, tmp_path):
    assert_clean_error(qpass("show", tmp_path / "nope.onnx"), "no such file")
    target = tmp_path / "missing_dir" / "out.qir"
    assert_clean_error(qpass("opt", qir, "-p", "eliminate-dead-code", "-o", target), "does not exist")
    assert not target.parent.exists()


def test_broken_onnx_files(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07this is not a model\xff\xfe" * 10)
    assert_clean_error(qpass("show", garbage), str(garbage))
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu0")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]))
    data = model.SerializeToString()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    assert_clean_error(qpass("show", truncated), str(truncated))


def test_unsupported_ops_are_listed_together(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu0"),
             helper.make_node("SplitToSequence", ["a"], ["b"], name="split0"),
             helper.make_node("FusedGemm", ["b"], ["c"], name="fused0", domain="com.microsoft"),
             helper.make_node("SplitToSequence", ["c"], ["y"], name="split1")]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]),
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    path = tmp_path / "unsupported.onnx"
    onnx.save(model, path)
    result = qpass("show", path)
    assert_clean_error(result, "SplitToSequence", "split0", "split1", "com.microsoft.FusedGemm", "fused0")


def test_dynamic_input_needs_input_shape(tmp_path):
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu0")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])]),
        opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / "dynamic.onnx"
    onnx.save(model, path)
    assert_clean_error(qpass("show", path), "x", "--input-shape")
    fixed = qpass("show", path, "--input-shape", "x=2x4")
    assert fixed.returncode == 0 and "%x: f32[2,4]" in fixed.stdout
    assert_clean_error(qpass("show", path, "--input-shape", "x=2by4"), "NAME=DxDxD")


def test_quantize_command(tmp_path):
    from qpass.tools.demo import bundled_test_set
    images, _ = bundled_test_set()
    np.savez(tmp_path / "calib.npz", input=images[:16])
    model = REPO / "qpass" / "data" / "digits_cnn.onnx"
    out, report = tmp_path / "q.qir", tmp_path / "report.json"
    result = qpass("quantize", model, "--calib", tmp_path / "calib.npz", "-o", out, "--report", report)
    assert result.returncode == 0, result.stderr
    assert "SQNR" in result.stdout and "qconv2d" in result.stdout
    data = json.loads(report.read_text())
    assert data["summary"]["top1_agreement"] >= 0.9 and len(data["layers"]) >= 5
    assert "qconv2d" in load(out).find_ops("qconv2d")[0].kind
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=images[:4, :, :4])
    target = tmp_path / "never.qir"
    assert_clean_error(qpass("quantize", model, "--calib", bad, "-o", target), "shape")
    assert not target.exists() and not target.with_suffix(".npz").exists()
    assert_clean_error(qpass("quantize", model, "--calib", tmp_path / "missing", "-o", target), "does not exist")
