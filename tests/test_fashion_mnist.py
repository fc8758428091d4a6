"""PTQ accuracy against real labels on data the model and the calibration never saw (issue 17).

The bundled Fashion-MNIST CNN (qpass/data/fashion_cnn.onnx, made by scripts/train_fashion.py) is
calibrated on the 256 training-split images shipped in fashion_test.npz (kept out of training)
and scored on the 1,000 shipped test images. The goals are the issue's: W8A8 within 0.3 points
of fp32, W4A8 within 1 point. The file takes about 20 s of CPU (2-vCPU AMD EPYC Zen 5,
OPENBLAS_NUM_THREADS=1); on a loaded machine, oversubscribed BLAS threads make it several times slower.
"""

from importlib import resources

import numpy as np
import pytest

import qpass

FP32_FLOOR = 0.90           # measured: 90.90% (909/1000) with the qpass interpreter and onnxruntime
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"


def data_file(name):
    return resources.files("qpass") / "data" / name


@pytest.fixture(scope="module")
def fashion():
    """(float graph, calibration samples, test images, labels, fp32 logits)."""
    graph = qpass.import_onnx(str(data_file("fashion_cnn.onnx")))
    with resources.as_file(data_file("fashion_test.npz")) as path, np.load(path) as data:
        calib = data["calib_images"].astype(np.float32) / 255
        images, labels = data["images"].astype(np.float32) / 255, data["labels"]
    return graph, {"input": calib}, images, labels, logits(graph, images)


def logits(graph, images):
    return np.concatenate([qpass.interpret(graph, {"input": x[None]})["logits"] for x in images])


def accuracy(scores, labels):
    return float(np.mean(scores.argmax(1) == labels))


def test_shipped_set_is_real_held_out_data(fashion):
    """Test and calibration images are disjoint, labelled 0-9 with every class present, and pixel
    values of real photographs of clothing (not blank or synthetic constants)."""
    with resources.as_file(data_file("fashion_test.npz")) as path, np.load(path) as data:
        test, calib = data["images"], data["calib_images"]
        assert test.dtype == calib.dtype == np.uint8 and test.shape == (1000, 1, 28, 28)
        assert set(np.unique(data["labels"])) == set(range(10)) == set(np.unique(data["calib_labels"]))
    seen = {image.tobytes() for image in test}
    assert not any(image.tobytes() in seen for image in calib)
    assert len(seen) == len(test) and test.std() > 50


def test_shipped_set_is_the_debian_test_split_head_and_calibration_comes_from_training():
    """When the Debian package is there: the shipped test images are the first 1,000 of its test
    split, and no shipped calibration image occurs in the test split."""
    import gzip
    from pathlib import Path
    folder = Path(DEBIAN_DIR)
    if not (folder / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")

    def idx(name):
        raw = gzip.open(folder / name).read()
        ndim = raw[3]
        return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)

    test = idx("t10k-images-idx3-ubyte.gz").reshape(-1, 784)
    train = idx("train-images-idx3-ubyte.gz").reshape(-1, 784)
    with resources.as_file(data_file("fashion_test.npz")) as path, np.load(path) as data:
        assert np.array_equal(data["images"].reshape(-1, 784), test[:1000])
        assert np.array_equal(data["labels"], idx("t10k-labels-idx1-ubyte.gz")[:1000])
        calib = data["calib_images"].reshape(-1, 784)
    in_train = {row.tobytes() for row in train}
    in_test = {row.tobytes() for row in test}
    assert all(row.tobytes() in in_train for row in calib)
    assert not any(row.tobytes() in in_test for row in calib)


def test_fp32_accuracy_floor(fashion):
    _, _, _, labels, reference = fashion
    assert accuracy(reference, labels) >= FP32_FLOOR


def test_w8a8_within_0_3_points_of_fp32(fashion):
    graph, calib, images, labels, reference = fashion
    q = qpass.quantize(graph, calib, bits=8, quiet=True)
    assert accuracy(logits(q, images), labels) >= accuracy(reference, labels) - 0.003


@pytest.mark.xfail(strict=True, reason="issue 17's W4A8 goal is not met: plain W4A8 (no AdaRound, no 8-bit "
                   "layers) measured 79.10% against fp32's 90.90% on the 1,000 shipped test images (-11.8 points)")
def test_w4a8_within_1_point_of_fp32(fashion):
    graph, calib, images, labels, reference = fashion
    q = qpass.quantize(graph, calib, bits=4, quiet=True)
    assert accuracy(logits(q, images), labels) >= accuracy(reference, labels) - 0.01


def test_w4a8_with_adaround_within_1_point_of_fp32(fashion):
    graph, calib, images, labels, reference = fashion
    q = qpass.quantize(graph, calib, bits=4, adaround=True, quiet=True)
    assert accuracy(logits(q, images), labels) >= accuracy(reference, labels) - 0.01
