"""Images as model inputs: ImageNet-style preprocessing and seeded random crops (needs Pillow).

Used for calibration from a folder of photos and by scripts/eval_agreement.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from qpass.errors import QpassError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Resize + crop to `size`, scale to [0,1], normalize per channel, NCHW float32."""

    size: int = 224
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    def finish(self, image) -> np.ndarray:
        array = np.asarray(image.convert("RGB"), np.float32) / 255.0
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return array.transpose(2, 0, 1)[None].astype(np.float32)


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise QpassError("reading images needs Pillow: pip install pillow") from None
    return Image


def load_images(folder) -> list:
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise QpassError(f"no images (.jpg, .png, ...) in {folder}")
    Image = _pil()
    return [Image.open(p).convert("RGB") for p in files]


def center_crop(image, spec: Preprocess = Preprocess()) -> np.ndarray:
    """Resize the short side to size * 256/224, then crop the center (the torchvision eval transform)."""
    short = round(spec.size * 256 / 224)
    w, h = image.size
    scale = short / min(w, h)
    image = image.resize((max(short, round(w * scale)), max(short, round(h * scale))), _pil().BILINEAR)
    w, h = image.size
    left, top = (w - spec.size) // 2, (h - spec.size) // 2
    return spec.finish(image.crop((left, top, left + spec.size, top + spec.size)))


def random_crops(images: Sequence, count: int, seed: int, spec: Preprocess = Preprocess(),
                 area=(0.25, 1.0), ratio=(3 / 4, 4 / 3), flip: bool = True) -> list[np.ndarray]:
    """`count` seeded random-resized crops (with random horizontal flips), cycling through `images`."""
    rng = np.random.default_rng(seed)
    Image = _pil()
    out = []
    for i in range(count):
        image = images[i % len(images)]
        w, h = image.size
        for _ in range(20):
            target = rng.uniform(*area) * w * h
            aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
            cw, ch = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                break
        else:
            cw = ch = min(w, h)
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = image.crop((left, top, left + cw, top + ch)).resize((spec.size, spec.size), Image.BILINEAR)
        if flip and rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out.append(spec.finish(crop))
    return out
