"""`qpass demo`: the README's main job on the bundled digits model.

Imports the bundled ONNX model (a small CNN trained on scikit-learn's handwritten digits by
scripts/train_digits.py), prints its IR before and after canonicalization, and runs both through
the reference interpreter on the held-out test set, reporting real accuracy against the labels.
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


def run_demo(print_ir: bool = True, out=sys.stdout) -> int:
    from qpass import import_onnx, run_passes
    with resources.as_file(bundled_model_path()) as path:
        graph = import_onnx(path)
    images, labels = bundled_test_set()
    if print_ir:
        out.write(f"// imported {bundled_model_path().name}\n{graph}\n")
    start = time.perf_counter()
    canonical = run_passes(graph.copy(), CANONICALIZE)
    seconds = time.perf_counter() - start
    if print_ir:
        out.write(f"// after {CANONICALIZE} ({seconds * 1e3:.1f} ms)\n{canonical}\n")
    imported_acc = accuracy(graph, images, labels)
    canonical_acc = accuracy(canonical, images, labels)
    out.write(f"digits test set: {len(labels)} held-out images\n"
              f"  imported model   ({len(graph.ops):3d} ops): accuracy {imported_acc:.2%}\n"
              f"  canonicalized    ({len(canonical.ops):3d} ops): accuracy {canonical_acc:.2%}\n")
    return 0
