"""`qpass demo`: the README's main job on the bundled digits model.

Imports the bundled ONNX model (a small CNN trained on scikit-learn's handwritten digits by
scripts/train_digits.py), prints its IR, canonicalizes it, quantizes it to int8 calibrating on the
first 64 held-out images, and scores every version with the reference interpreter on the other
held-out images, against their true labels.
"""

from __future__ import annotations

import sys
import time
from importlib import resources

import numpy as np

from qpass.api import CANONICALIZE


def bundled_model_path():
    return resources.files("qpass") / "data" / "digits_cnn.onnx"


def bundled_test_set() -> tuple[np.ndarray, np.ndarray]:
    with resources.as_file(resources.files("qpass") / "data" / "digits_test.npz") as path:
        with np.load(path) as data:
            return data["images"], data["labels"]


def accuracy(graph, images: np.ndarray, labels: np.ndarray) -> float:
    from qpass.interpreter import interpret
    name = graph.inputs[0].name
    hits = sum(int(np.argmax(next(iter(interpret(graph, {name: image[None]}).values()))) == label)
               for image, label in zip(images, labels))
    return hits / len(labels)


CALIBRATION = 64


def run_demo(print_ir: bool = True, out=sys.stdout) -> int:
    from qpass import import_onnx, quantize, run_passes
    with resources.as_file(bundled_model_path()) as path:
        graph = import_onnx(path)
    images, labels = bundled_test_set()
    calibration, (images, labels) = images[:CALIBRATION], (images[CALIBRATION:], labels[CALIBRATION:])
    if print_ir:
        out.write(f"// imported {bundled_model_path().name}\n{graph}\n")
    start = time.perf_counter()
    canonical = run_passes(graph.copy(), CANONICALIZE)
    seconds = time.perf_counter() - start
    if print_ir:
        out.write(f"// after {CANONICALIZE} ({seconds * 1e3:.1f} ms)\n{canonical}\n")
    start = time.perf_counter()
    int8 = quantize(graph, {graph.inputs[0].name: calibration}, bits=8, quiet=True)
    seconds = time.perf_counter() - start
    if print_ir:
        out.write(f"// quantized to int8 ({seconds:.1f} s)\n{int8}\n")
    out.write(f"digits test set: {len(labels)} held-out images (the {CALIBRATION} calibration images excluded)\n")
    for title, g in (("imported float", graph), ("canonicalized float", canonical), ("int8", int8)):
        out.write(f"  {title:<20} ({len(g.ops):3d} ops): accuracy {accuracy(g, images, labels):.2%}\n")
    return 0
