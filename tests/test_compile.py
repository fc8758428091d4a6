"""`qpass compile` / `qpass run` / `qpass targets` end to end, and MobileNetV2 on every target family."""

from __future__ import annotations

import os
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import qpass
from assets import shared_dir
from qpass.targets.artifact import Artifact
from qpass.targets.build import build
from qpass.targets.registry import resolve_target

DIGITS = qpass.__path__[0] + "/data/digits_cnn.onnx"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "qpass", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    data = np.load(qpass.__path__[0] + "/data/digits_test.npz")
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(path, input=data["images"][:16])
    np.save(path.parent / "x.npy", data["images"][20:21])
    return path


def test_compile_and_run_on_host(calib, tmp_path):
    out = tmp_path / "digits"
    result = cli("compile", DIGITS, "--calib", calib, "-o", out)
    assert result.returncode == 0, result.stderr
    assert "bit-exact with the reference interpreter" in result.stdout
    for name in ("model.so", "model.qir", "meta.json", "report.json", "report.html"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["matches_interpreter"] is True
    assert report["size"]["weight_bytes"] * 4 == report["size"]["float_weight_bytes"]
    assert {k["schedule"] for k in report["kernels"] if k["op"] == "qconv2d"} >= {"avx2", "depthwise"}
    ran = cli("run", out, "--input", calib.parent / "x.npy", "-o", tmp_path / "y.npz")
    assert ran.returncode == 0, ran.stderr
    x = np.load(calib.parent / "x.npy")
    want = qpass.interpret(qpass.load(out / "model.qir"), {"input": x})["logits"]
    assert np.array_equal(np.load(tmp_path / "y.npz")["logits"], want)
    again = cli("compile", DIGITS, "--calib", calib, "-o", out)
    assert again.returncode == 1 and "--force" in again.stderr and "Traceback" not in again.stderr


def test_compile_for_aarch64_runs_under_qemu(calib, tmp_path):
    for tool in ("qemu-aarch64", "aarch64-linux-gnu-g++"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/test.sh installs it)")
    out = tmp_path / "arm"
    result = cli("compile", DIGITS, "--calib", calib, "--target", "aarch64-linux-gnu", "--mattr",
                 "+neon,+dotprod,+i8mm", "--bits", "mixed", "-o", out, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["run"]["matches_interpreter"] is True and "qemu" in report["run"]["how"]
    assert (out / "qpass-run").is_file() and (out / "libtvm_runtime.so").is_file()
    x = np.load(calib.parent / "x.npy")
    got = Artifact(out).run({"input": x})
    want = qpass.interpret(qpass.load(out / "model.qir"), {"input": x})
    assert np.array_equal(got["logits"], want["logits"])


@pytest.mark.parametrize("args, message", [
    (["--target", "riscv64-linux-gnu"], "unknown target triple"),
    (["--target", "aarch64-linux-gnu", "--mattr", "+sve"], "unknown --mattr"),
    (["--mcpu", "pentium4"], "unknown --mcpu"),
    ([], "calibration data"),
])
def test_compile_errors_are_one_paragraph(args, message, tmp_path):
    out = tmp_path / "out"
    result = cli("compile", DIGITS, "-o", out, *args)
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_run_errors(calib, tmp_path):
    result = cli("run", tmp_path, "--input", calib.parent / "x.npy")
    assert result.returncode == 1 and "not a qpass artifact" in result.stderr
    targets = cli("targets")
    assert targets.returncode == 0 and "aarch64-linux-gnu --mattr +neon,+dotprod,+i8mm" in targets.stdout


@pytest.fixture(scope="module")
def mobilenet():
    model = shared_dir() / "models" / "mobilenet_v2.onnx"
    graph = qpass.import_onnx(model)
    rng = np.random.default_rng(0)
    samples = [{"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(2)]
    return qpass.quantize(graph, samples, bits="mixed", quiet=True)


def test_mobilenet_host_bit_exact(mobilenet):
    compiled = qpass.compile(mobilenet, "x86_64-linux-gnu")
    from qpass.compiler import check_and_time
    x = {"input": np.random.default_rng(3).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    run = check_and_time(compiled, x, repeat=2)
    assert run["matches_interpreter"] is True, run


@pytest.mark.parametrize("target, options, kernel", [
    ("x86_64-linux-gnu", {"mcpu": "cascadelake"}, "vnni"),
    ("aarch64-linux-gnu", {"mattr": "+neon,+dotprod,+i8mm"}, "smmla"),
    ("cuda", {"arch": "sm_80"}, "dp4a"),
])
def test_mobilenet_builds_for_every_family(mobilenet, target, options, kernel):
    built = build(mobilenet, resolve_target(target, **options))
    assert kernel in {k["schedule"] for k in built.kernels}
    assert not [n for n in built.notes if "failed" in n], built.notes


def test_vm_uses_every_physical_core_unless_told(monkeypatch):
    """TVM would start half the logical CPUs as workers; qpass asks for one per physical core."""
    from qpass.targets.artifact import physical_cores, use_every_core
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    use_every_core()
    assert os.environ["TVM_NUM_THREADS"] == str(physical_cores())
    assert 1 <= physical_cores() <= len(os.sched_getaffinity(0))
    monkeypatch.setenv("TVM_NUM_THREADS", "1")
    use_every_core()
    assert os.environ["TVM_NUM_THREADS"] == "1"
