"""`qpass demo`: the README's main job on the bundled digits model.

Imports the bundled ONNX model (a small CNN trained on scikit-learn's handwritten digits by
scripts/train_digits.py), prints its IR, quantizes it to int8 and to mixed int4/int8 calibrating on
the first 64 held-out images, compiles both for this x86 host and int8 for aarch64, and scores
each on the other held-out images against their true labels: float32 in the reference
interpreter, the compiled code on the host (checked bit for bit against the interpreter, and
timed), and the aarch64 build under qemu-aarch64 when it is installed: checked bit for bit
against the host int8 build on a few images (not scored: its accuracy is the host row's).
"""

from __future__ import annotations

import sys
from importlib import resources

import numpy as np

from qpass.api import CANONICALIZE
from qpass.errors import QpassError


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
QEMU_IMAGES = 16


def compiled_outputs(compiled, images) -> list[np.ndarray]:
    """The compiled artifact's (first) output on each image."""
    artifact = compiled.artifact()
    name = artifact.input_names[0]
    return [next(iter(artifact.run({name: image[None]}).values())) for image in images]


def compiled_accuracy(compiled, images, labels, want_graph) -> tuple[float, bool, list[np.ndarray]]:
    """Accuracy of the compiled artifact, whether it equals the interpreter on every image, and its outputs."""
    from qpass.interpreter import interpret
    name = compiled.artifact().input_names[0]
    outputs = compiled_outputs(compiled, images)
    exact = all(np.array_equal(got, next(iter(interpret(want_graph, {name: image[None]}).values())))
                for got, image in zip(outputs, images))
    hits = sum(int(np.argmax(got) == label) for got, label in zip(outputs, labels))
    return hits / len(labels), exact, outputs


def run_demo(print_ir: bool = True, out=sys.stdout) -> int:
    from qpass import compile, import_onnx, quantize, run_passes
    from qpass.compiler import weight_bytes
    with resources.as_file(bundled_model_path()) as path:
        graph = import_onnx(path)
    images, labels = bundled_test_set()
    calibration, (images, labels) = images[:CALIBRATION], (images[CALIBRATION:], labels[CALIBRATION:])
    if print_ir:
        out.write(f"// imported {bundled_model_path().name}\n{graph}\n")
    canonical = run_passes(graph.copy(), CANONICALIZE)
    samples = {graph.inputs[0].name: calibration}
    versions = {"int8": quantize(graph, samples, bits=8, quiet=True),
                "mixed int4/int8": quantize(graph, samples, bits="mixed", quiet=True)}
    if print_ir:
        out.write(f"// quantized to int8\n{versions['int8']}\n")
    out.write(f"digits test set: {len(labels)} held-out images (the {CALIBRATION} calibration images excluded)\n")
    out.write(f"  {'version':<16} {'where':<34} {'accuracy':>8} {'weights':>9} {'latency':>10}\n")
    out.write(f"  {'float32':<16} {'reference interpreter':<34} {accuracy(canonical, images, labels):>8.2%} "
              f"{weight_bytes(canonical):>7d} B {'':>10}\n")
    host_outputs = {}
    for title, g in versions.items():
        compiled = compile(g, "x86_64-linux-gnu")
        acc, exact, host_outputs[title] = compiled_accuracy(compiled, images, labels, compiled.graph)
        latency = compiled.artifact().time({g.inputs[0].name: images[:1]}, repeat=50)
        out.write(f"  {title:<16} {'x86_64 ' + compiled.report['micro_kernel'] + (', bit-exact' if exact else ', DIFFERS'):<34} "
                  f"{acc:>8.2%} {weight_bytes(g):>7d} B {latency['median_ms'] * 1e3:>7.0f} us\n")
    try:
        compiled = compile(versions["int8"], "aarch64-linux-gnu", mattr="+neon,+dotprod,+i8mm")
        ok, why = compiled.artifact().runnable()
    except QpassError as e:                    # no cross compiler or no network for the aarch64 runtime
        out.write(f"  aarch64 artifact not built: {e}\n")
        return 0
    if ok:
        # Each run under qemu starts an emulated process, so the aarch64 build runs on a few images
        # and is checked against the host build (whose accuracy the int8 row gives), not scored.
        _, exact, outputs = compiled_accuracy(compiled, images[:QEMU_IMAGES], labels[:QEMU_IMAGES], compiled.graph)
        same = all(np.array_equal(a, b) for a, b in zip(outputs, host_outputs["int8"]))
        where = f"aarch64 {compiled.report['micro_kernel']}{' (qemu)' if 'qemu' in why else ''}"
        check = (f"bit-exact with the host int8 build on {QEMU_IMAGES} images" if same and exact else
                 f"DIFFERS from the {'host int8 build' if exact else 'reference interpreter'} on "
                 f"{QEMU_IMAGES} images")
        out.write(f"  {'int8':<16} {where:<34} {'= host':>8} {weight_bytes(versions['int8']):>7d} B {'':>10}  "
                  f"({check})\n")
    else:
        out.write(f"  aarch64 artifact built, not run: {why}\n")
    return 0
