"""Images as model inputs: an explicit preprocessing spec, checked against the input it feeds (needs Pillow).

A spec is written on the command line as comma-separated `key=value` items, e.g.

    resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,scale=1/255,layout=NCHW

- `resize=S` scales the short side to S (keeping the aspect ratio); `resize=HxW` resizes to exactly H x W.
- `crop=S` or `crop=HxW` cuts the centre H x W (after the resize).
- `scale=F` multiplies the 0..255 pixel values (default 1/255); then `(x - mean) / std` per channel
  (`mean`, `std`: one number, or one per channel, separated by `/`; defaults 0 and 1).
- `color=rgb|bgr|gray` (default rgb), `layout=NCHW|NHWC|CHW|HWC` (default NCHW).

The spec must give the final size (a crop, or an exact resize); `ImagePreprocess.check` compares it with
the model input before any image is read. Also used by scripts/eval_agreement.py and scripts/bench.py
(`load_images`, `center_crop`, `random_crops` with the ImageNet spec).
"""

from __future__ import annotations

import dataclasses
import difflib
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from qpass.errors import QpassError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
LAYOUTS = ("NCHW", "NHWC", "CHW", "HWC")
COLORS = {"rgb": 3, "bgr": 3, "gray": 1}
KEYS = ("resize", "crop", "mean", "std", "scale", "color", "layout")
EXAMPLE = "resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,scale=1/255,layout=NCHW"


class PreprocessError(QpassError):
    """A preprocessing spec is malformed or does not fit the model input."""


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _size(key: str, text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
        if len(dims) not in (1, 2) or any(d <= 0 for d in dims):
            raise ValueError
    except ValueError:
        raise PreprocessError(f"preprocessing spec: {key}={text} is not a size; write {key}=224 "
                              f"(short side{' / square' if key == 'crop' else ''}) or {key}=48x192 (height x width)"
                              ) from None
    return dims


def _number(key: str, text: str) -> float:
    try:
        return float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise PreprocessError(f"preprocessing spec: {key}={text} is not a number; write e.g. {key}=1/255 "
                              f"or {key}=0.0039") from None


def _numbers(key: str, text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split("/"))
    except ValueError:
        raise PreprocessError(f"preprocessing spec: {key}={text} is not a list of numbers; write one number "
                              f"per channel separated by '/', e.g. {key}=0.485/0.456/0.406") from None


def _format_number(x: float) -> str:
    if x != 0 and abs(1 / x - round(1 / x)) < 1e-9 and abs(x) < 1:
        return f"1/{round(1 / x)}"
    return repr(float(x)).removesuffix(".0") if float(x).is_integer() else repr(float(x))


@dataclasses.dataclass(frozen=True)
class ImagePreprocess:
    """How an image file becomes one model input sample (see the module docstring for the fields)."""

    resize: Optional[tuple[int, ...]] = None      # (short side,) or (height, width)
    crop: Optional[tuple[int, int]] = None        # (height, width) of the centre crop
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1 / 255
    color: str = "rgb"
    layout: str = "NCHW"

    def __post_init__(self):
        if self.crop is not None and len(self.crop) == 1:
            object.__setattr__(self, "crop", (self.crop[0], self.crop[0]))
        if self.color not in COLORS:
            raise PreprocessError(f"preprocessing spec: color={self.color} is not one of {', '.join(COLORS)}")
        if self.layout not in LAYOUTS:
            raise PreprocessError(f"preprocessing spec: layout={self.layout} is not one of {', '.join(LAYOUTS)}")
        if not self.scale > 0:
            raise PreprocessError(f"preprocessing spec: scale={self.scale} must be positive, e.g. scale=1/255")
        if any(s == 0 for s in self.std):
            raise PreprocessError("preprocessing spec: std has a zero; give the per-channel standard deviations")
        channels = COLORS[self.color]
        for key in ("mean", "std"):
            if len(getattr(self, key)) not in (1, channels):
                raise PreprocessError(f"preprocessing spec: {key} has {len(getattr(self, key))} values but "
                                      f"color={self.color} makes {channels} channel(s); give 1 or {channels}")
        if self.resize is not None and len(self.resize) == 1 and self.crop is not None \
                and max(self.crop) > self.resize[0]:
            raise PreprocessError(f"preprocessing spec: crop={self.crop[0]}x{self.crop[1]} is larger than the "
                                  f"short side resize={self.resize[0]}; resize to at least {max(self.crop)}")

    @classmethod
    def parse(cls, text: str) -> "ImagePreprocess":
        """Read a spec string such as `resize=256,crop=224,scale=1/255,layout=NCHW`."""
        fields: dict = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = (s.strip() for s in item.partition("="))
            if key not in KEYS:
                close = difflib.get_close_matches(key, KEYS, n=1)
                raise PreprocessError(f"preprocessing spec: unknown key {key!r}"
                                      f"{f' (did you mean {close[0]!r}?)' if close else ''}; the keys are "
                                      f"{', '.join(KEYS)}, e.g. {EXAMPLE}")
            if not sep or not value:
                raise PreprocessError(f"preprocessing spec: {item!r} has no value; write {key}=VALUE, e.g. {EXAMPLE}")
            if key in fields:
                raise PreprocessError(f"preprocessing spec: {key} is given twice")
            if key in ("resize", "crop"):
                fields[key] = _size(key, value)
            elif key in ("mean", "std"):
                fields[key] = _numbers(key, value)
            elif key == "scale":
                fields[key] = _number(key, value)
            else:
                fields[key] = value.lower() if key == "color" else value.upper()
        if not fields:
            raise PreprocessError(f"the preprocessing spec is empty; write e.g. {EXAMPLE}")
        return cls(**fields)

    def __str__(self) -> str:
        parts = []
        if self.resize:
            parts.append("resize=" + "x".join(map(str, self.resize)))
        if self.crop:
            parts.append("crop=" + "x".join(map(str, self.crop)))
        parts += [f"mean={'/'.join(map(_format_number, self.mean))}", f"std={'/'.join(map(_format_number, self.std))}",
                  f"scale={_format_number(self.scale)}", f"color={self.color}", f"layout={self.layout}"]
        return ",".join(parts)

    @property
    def size(self) -> Optional[tuple[int, int]]:
        """The (height, width) every image ends up with, or None when it depends on the image."""
        if self.crop is not None:
            return self.crop
        if self.resize is not None and len(self.resize) == 2:
            return self.resize
        return None

    @property
    def channels(self) -> int:
        return COLORS[self.color]

    def check(self, name: str, shape: Sequence[int], dtype: str) -> None:
        """Refuse a spec whose output does not fit input `name` of `shape` and `dtype`, saying what to change."""
        shape = tuple(shape)
        where = f"input {name!r} {list(shape)}"
        if not dtype.startswith("f"):
            raise PreprocessError(f"{where} takes {dtype}, but image preprocessing makes float32 values; give "
                                  "calibration data as an .npz of the model's own input arrays instead")
        if len(shape) not in (3, 4):
            raise PreprocessError(f"{where} has rank {len(shape)}; images feed inputs of rank 4 (NCHW/NHWC) or "
                                  "3 (CHW/HWC); give an .npz of input arrays instead")
        if len(self.layout) != len(shape):
            fits = [lay for lay in LAYOUTS if len(lay) == len(shape)]
            raise PreprocessError(f"{where} has rank {len(shape)} but layout={self.layout} has {len(self.layout)} "
                                  f"axes; use layout={suggest_layout(shape, self.channels) or fits[0]}")
        dims = dict(zip(self.layout, shape))
        if dims.get("N", 1) != 1:
            raise PreprocessError(f"{where} takes a batch of {dims['N']}; each image makes one sample of batch 1. "
                                  f"Fix the batch with --input-shape {name}=1x... or give an .npz")
        if dims["C"] != self.channels:
            other = suggest_layout(shape, self.channels)
            fix = (f"the input looks {other}: use layout={other}" if other and other != self.layout else
                   f"use color={'gray' if dims['C'] == 1 else 'rgb'}" if dims["C"] in (1, 3) else
                   "give an .npz of input arrays instead")
            raise PreprocessError(f"{where} read as layout={self.layout} has {dims['C']} channel(s), but "
                                  f"color={self.color} makes {self.channels}; {fix}")
        for key in ("mean", "std"):
            if len(getattr(self, key)) not in (1, dims["C"]):
                raise PreprocessError(f"preprocessing spec: {key} has {len(getattr(self, key))} values for the "
                                      f"{dims['C']} channel(s) of {where}")
        want = (dims["H"], dims["W"])
        if self.size is None:
            raise PreprocessError(f"preprocessing spec {self}: the image size after it depends on each image "
                                  f"({'resize=S keeps the aspect ratio' if self.resize else 'no resize or crop'}); "
                                  f"{where} takes {want[0]}x{want[1]}: add crop={want[0]}x{want[1]} or "
                                  f"use resize={want[0]}x{want[1]}")
        if self.size != want:
            key = "crop" if self.crop is not None else "resize"
            raise PreprocessError(f"preprocessing spec {self} makes {self.size[0]}x{self.size[1]} images, but "
                                  f"{where} ({self.layout}) takes {want[0]}x{want[1]}; use {key}={want[0]}x{want[1]}")

    def finish(self, image) -> np.ndarray:
        """A PIL image already at the final size -> the float32 input array."""
        array = np.asarray(image.convert("L" if self.color == "gray" else "RGB"), np.float32)
        if array.ndim == 2:
            array = array[:, :, None]
        if self.color == "bgr":
            array = array[:, :, ::-1]
        inverse = 1 / self.scale
        # x / 255 rounds differently from x * (1/255); divide when the scale is 1/k, as people write it
        if abs(inverse - round(inverse)) < 1e-9:
            array = array / np.float32(round(inverse))
        else:
            array = array * np.float32(self.scale)
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout.endswith("CHW"):
            array = array.transpose(2, 0, 1)
        if self.layout.startswith("N"):
            array = array[None]
        return np.ascontiguousarray(array, dtype=np.float32)

    def apply(self, image) -> np.ndarray:
        """Resize, crop and finish one PIL image."""
        pil = _pil()
        if self.resize is not None:
            w, h = image.size
            if len(self.resize) == 1:
                short = self.resize[0]
                scale = short / min(w, h)
                image = image.resize((max(short, round(w * scale)), max(short, round(h * scale))), pil.BILINEAR)
            else:
                image = image.resize((self.resize[1], self.resize[0]), pil.BILINEAR)
        if self.crop is not None:
            w, h = image.size
            ch, cw = self.crop
            if ch > h or cw > w:
                raise PreprocessError(f"crop={ch}x{cw} is larger than the {h}x{w} image; add a resize first")
            left, top = (w - cw) // 2, (h - ch) // 2
            image = image.crop((left, top, left + cw, top + ch))
        return self.finish(image)

    def load(self, path) -> np.ndarray:
        """Read an image file and preprocess it; an unreadable or too small file is a clear error."""
        pil = _pil()
        try:
            with pil.open(path) as image:
                image.load()
                return self.apply(image)
        except PreprocessError as e:
            raise PreprocessError(f"image {path}: {e}") from None
        except (OSError, ValueError) as e:
            raise PreprocessError(f"cannot read image {path}: {e}; convert it to .png or .jpg") from None


IMAGENET = ImagePreprocess(resize=(256,), crop=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def suggest_layout(shape: Sequence[int], channels: int) -> Optional[str]:
    """The layout under which `shape` has `channels` channels, preferring NCHW/CHW."""
    for layout in LAYOUTS:
        if len(layout) == len(shape) and shape[layout.index("C")] == channels:
            return layout
    return None


def suggest_spec(shape: Sequence[int]) -> str:
    """An example spec string that fits an input of `shape` (ImageNet normalization)."""
    shape = tuple(shape)
    for color, channels in (("rgb", 3), ("gray", 1)):
        layout = suggest_layout(shape, channels)
        if layout:
            dims = dict(zip(layout, shape))
            h, w = dims["H"], dims["W"]
            resize = f"resize={round(h * 256 / 224)},crop={h}" if h == w else f"resize={h}x{w}"
            norm = ("mean=0.485/0.456/0.406,std=0.229/0.224/0.225" if channels == 3 else "mean=0.5,std=0.5")
            return f"{resize},{norm},scale=1/255{'' if color == 'rgb' else ',color=gray'},layout={layout}"
    return EXAMPLE


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise QpassError("reading images needs Pillow: pip install pillow") from None
    return Image


def image_files(folder) -> list[Path]:
    """The image files of a folder, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image(p)) if folder.is_dir() else []


def load_images(folder) -> list:
    """Every image of a folder as an RGB PIL image, sorted by file name."""
    files = image_files(folder)
    if not files:
        raise QpassError(f"no images (.jpg, .png, ...) in {folder}")
    pil = _pil()
    return [pil.open(p).convert("RGB") for p in files]


def center_crop(image, spec: ImagePreprocess = IMAGENET) -> np.ndarray:
    """The torchvision eval transform with the ImageNet spec: short side to 256, centre 224 x 224."""
    return spec.apply(image)


def random_crops(images: Sequence, count: int, seed: int, spec: ImagePreprocess = IMAGENET,
                 area=(0.25, 1.0), ratio=(3 / 4, 4 / 3), flip: bool = True) -> list[np.ndarray]:
    """`count` seeded random-resized crops to `spec`'s size (with random horizontal flips), cycling
    through `images`."""
    rng = np.random.default_rng(seed)
    pil = _pil()
    height, width = spec.size
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
        crop = image.crop((left, top, left + cw, top + ch)).resize((width, height), pil.BILINEAR)
        if flip and rng.random() < 0.5:
            crop = crop.transpose(pil.FLIP_LEFT_RIGHT)
        out.append(spec.finish(crop))
    return out
