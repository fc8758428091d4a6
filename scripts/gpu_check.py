"""On a machine with an NVIDIA GPU: compile for its arch, run, and compare bit-exactly with the interpreter.

    python scripts/gpu_check.py [--mobilenet ../shared/models/mobilenet_v2.onnx] [--json OUT.json]

Builds the bundled digits model (W8A8 and mixed int4/int8) and, when given, MobileNetV2 for
`cuda --arch sm_XX` of the detected GPU, runs each artifact on the GPU on seeded inputs, and
checks that every output equals the reference interpreter's bit for bit. Exit status 0 only if
all match.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import qpass
from qpass.targets.registry import CUDA_ARCHS

DATA = Path(qpass.__path__[0]) / "data"


def detect_arch() -> str:
    import tvm
    device = tvm.cuda(0)
    if not device.exist:
        sys.exit("gpu_check: no CUDA GPU is visible to TVM on this machine")
    arch = "sm_" + device.compute_version.replace(".", "")
    if arch not in CUDA_ARCHS:
        nearest = max((a for a in CUDA_ARCHS if a <= arch), default=CUDA_ARCHS[0])
        print(f"gpu_check: {arch} is not in the target table; compiling for {nearest}")
        arch = nearest
    return arch


def check(name: str, graph, arch: str, inputs: list[dict]) -> dict:
    compiled = qpass.compile(graph, "cuda", arch=arch)
    artifact = compiled.artifact()
    exact, worst = True, 0.0
    for sample in inputs:
        got = artifact.run(sample)
        want = qpass.interpret(compiled.graph, sample)
        for key in want:
            exact &= bool(np.array_equal(got[key], want[key]))
            worst = max(worst, float(np.abs(got[key].astype(np.float64) - want[key]).max()))
    timing = artifact.time(inputs[0], repeat=50)
    kernels = sorted({k["schedule"] for k in compiled.report["kernels"]})
    row = {"model": name, "arch": arch, "bit_exact": exact, "max_abs_difference": worst, "samples": len(inputs),
           "kernels": kernels, "latency": timing}
    print(json.dumps(row))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mobilenet", help="path of mobilenet_v2.onnx to check as well")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    arch = detect_arch()
    data = np.load(DATA / "digits_test.npz")
    digits = qpass.import_onnx(DATA / "digits_cnn.onnx")
    calib = [{"input": data["images"][i:i + 1]} for i in range(32)]
    tests = [{"input": data["images"][i:i + 1]} for i in range(100, 110)]
    rows = [check("digits W8A8", qpass.quantize(digits, calib, quiet=True), arch, tests),
            check("digits mixed", qpass.quantize(digits, calib, bits="mixed", quiet=True), arch, tests)]
    if args.mobilenet:
        rng = np.random.default_rng(0)
        mobilenet = qpass.import_onnx(args.mobilenet)
        samples = [{"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(4)]
        rows.append(check("mobilenet_v2 W8A8", qpass.quantize(mobilenet, samples, quiet=True), arch, samples[:2]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if all(r["bit_exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
