"""Calibration data: loading it and checking it against a graph's inputs.

Accepted forms: a list of {input name: array} samples; a dict {input name: array with a leading
sample axis}; an .npz file of that dict; a folder of .npy files (one per sample, for a graph with
one input) or of .npz files (one per sample); a folder of images with an explicit preprocessing
spec (`SampleSource(folder, "resize=256,crop=224,...")`, or `preprocess=` of `load_calibration`;
see qpass.frontend.images). Every problem is a clear error naming the input.
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Union

import numpy as np

from qpass.errors import QpassError
from qpass.frontend.images import ImagePreprocess, image_files, suggest_spec
from qpass.ir.graph import Graph, Value


class CalibrationError(QpassError):
    """Calibration data does not fit the model."""


@dataclasses.dataclass(frozen=True)
class SampleSource:
    """A path to samples with the preprocessing spec that turns its images into inputs (None: no images)."""

    path: Union[str, Path]
    preprocess: Optional[Union[str, ImagePreprocess]] = None

    def spec(self) -> Optional[ImagePreprocess]:
        return as_preprocess(self.preprocess)

    def __str__(self) -> str:
        return str(self.path)


def as_preprocess(spec) -> Optional[ImagePreprocess]:
    """An ImagePreprocess from a spec string (or one already made, or None)."""
    return ImagePreprocess.parse(spec) if isinstance(spec, str) else spec


Samples = Union[str, Path, SampleSource, Mapping[str, np.ndarray], Iterable[Mapping[str, np.ndarray]]]

# What numpy raises for a file that is not (or no longer) a readable .npy/.npz.
_UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def image_input(graph: Graph, spec: Optional[ImagePreprocess], source: str, what: str = "calibration") -> Value:
    """The one input that images of `source` feed, with `spec` checked against it before any image is read."""
    if len(graph.inputs) != 1:
        raise CalibrationError(f"{what} images {source}: images feed a single-input model; this one takes "
                               f"{', '.join(v.name for v in graph.inputs)}: give .npz samples instead")
    value = graph.inputs[0]
    if spec is None:
        raise CalibrationError(f"{what} data {source} holds images, and images need an explicit preprocessing "
                               f"spec to become input {value.name!r} {list(value.type.shape)}: pass e.g. --preprocess "
                               f"\"{suggest_spec(value.type.shape)}\" (in Python: SampleSource(path, spec)); "
                               "check the model's own resize, normalization and layout")
    spec.check(value.name, value.type.shape, value.type.dtype)
    return value


def _from_images(path: Path, files: list[Path], graph: Graph, spec: Optional[ImagePreprocess]) -> list[dict]:
    value = image_input(graph, spec, str(path))
    return [{value.name: spec.load(f)} for f in files]


def _from_path(path: Path, graph: Graph, spec: Optional[ImagePreprocess] = None) -> list[dict]:
    if not path.exists():
        raise CalibrationError(f"calibration path {path} does not exist; give an .npz file, a folder of .npy "
                               "or .npz files, or a folder of images with --preprocess SPEC")
    if path.is_file():
        if path.suffix != ".npz":
            raise CalibrationError(f"calibration file {path} is not an .npz; save a dict of input name -> array "
                                   "with a leading sample axis using numpy.savez")
        try:
            with np.load(path) as data:
                arrays = dict(data)
        except _UNREADABLE as e:
            raise CalibrationError(f"cannot read calibration file {path}: {e}. Save it again with numpy.savez "
                                   "(input name -> array with a leading sample axis)") from None
        return _split(arrays, graph, str(path))
    files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz"))
    images = image_files(path)
    if images and files:
        raise CalibrationError(f"calibration folder {path} holds both images and .npy/.npz files; keep one kind "
                               "of sample per folder")
    if images:
        return _from_images(path, images, graph, spec)
    if not files:
        raise CalibrationError(f"calibration folder {path} holds no .npy or .npz files (and no images to use with "
                               "--preprocess SPEC); add one file per sample")
    samples = []
    for f in files:
        try:
            if f.suffix == ".npy":
                if len(graph.inputs) != 1:
                    raise CalibrationError(f"{f}: .npy samples work for single-input models; this one takes "
                                           f"{', '.join(v.name for v in graph.inputs)}: use .npz samples")
                samples.append({graph.inputs[0].name: np.load(f)})
            else:
                with np.load(f) as data:
                    samples.append(dict(data))
        except _UNREADABLE as e:
            raise CalibrationError(f"cannot read calibration sample {f}: {e}. Save it again with numpy.save "
                                   "(.npy) or numpy.savez (.npz)") from None
    return samples


def _split(batched: Mapping[str, np.ndarray], graph: Graph, source: str) -> list[dict]:
    scalars = sorted(name for name, a in batched.items() if np.ndim(a) == 0)
    if scalars:
        raise CalibrationError(f"calibration data {source}: {', '.join(map(repr, scalars))} is a single number, "
                               "not an array with a leading sample axis; give arrays of shape [samples, *input shape]")
    counts = {name: len(np.asarray(a)) for name, a in batched.items()}
    if len(set(counts.values())) > 1:
        raise CalibrationError(f"calibration data {source}: inputs have different sample counts {counts}")
    n = next(iter(counts.values()), 0)
    samples = []
    for i in range(n):
        sample = {}
        for name, array in batched.items():
            array = np.asarray(array)
            want = graph.value(name).type.shape if graph.has_value(name) else None
            # accept both [N, *shape] where shape has batch 1, and [N, *shape[1:]]
            item = array[i]
            if want is not None and item.shape != want and (1, *item.shape) == want:
                item = item[None]
            sample[name] = item
        samples.append(sample)
    return samples


def load_calibration(data: Samples, graph: Graph, preprocess: Optional[Union[str, ImagePreprocess]] = None
                     ) -> list[dict]:
    """Normalize `data` into a checked list of samples for `graph`.

    `preprocess` (a spec string or an ImagePreprocess) turns a folder of images into samples; it is
    checked against the model input before any image is read.
    """
    if isinstance(data, SampleSource):
        data, preprocess = data.path, data.preprocess if preprocess is None else preprocess
    if isinstance(data, (str, Path)):
        samples = _from_path(Path(data), graph, as_preprocess(preprocess))
    elif isinstance(data, Mapping):
        samples = _split(data, graph, "dict")
    else:
        samples = [dict(s) for s in data]
    check_samples(samples, graph)
    return samples


def check_samples(samples: list[dict], graph: Graph, what: str = "calibration",
                  names: Optional[list[str]] = None) -> None:
    """Check every sample against the graph's inputs (names, dtype, shape, finite values); casts in place.

    A sample array may leave out a leading batch axis of 1 ([3, 48, 192] for an input [1, 3, 48, 192]).
    `what` and `names` (one per sample, e.g. its file) say in errors which data and sample is wrong.
    """
    if not samples:
        raise CalibrationError(f"the {what} data is empty; give at least one sample per input "
                               f"({', '.join(v.name for v in graph.inputs)})")
    inputs = {v.name for v in graph.inputs}
    for i, sample in enumerate(samples):
        label = f"{what} sample {names[i] if names else i}"
        if set(sample) != inputs:
            missing, extra = sorted(inputs - set(sample)), sorted(set(sample) - inputs)
            raise CalibrationError(f"{label}: " + ("; ".join(
                part for part in (f"missing input(s) {', '.join(missing)}" if missing else "",
                                  f"unknown name(s) {', '.join(extra)}" if extra else "") if part))
                + f". The model takes {', '.join(sorted(inputs))}: name each array after the input it feeds.")
        for value in graph.inputs:
            array = np.asarray(sample[value.name])
            if array.shape != value.type.shape and (1, *array.shape) == value.type.shape:
                array = array[None]
            _check_array(array, value, f"{label}, input {value.name}")
            sample[value.name] = array.astype(value.type.numpy_dtype, copy=False)


def _check_array(array: np.ndarray, value: Value, where: str) -> None:
    want = value.type
    if array.dtype.kind not in "fiu" or (array.dtype.kind != "f") != (want.numpy_dtype.kind != "f"):
        raise CalibrationError(f"{where}: dtype {array.dtype} does not fit the model's {want.dtype}; convert the "
                               f"data to {want.numpy_dtype} as the model's preprocessing does")
    if array.shape != want.shape:
        raise CalibrationError(f"{where}: shape {list(array.shape)} does not match the model's {list(want.shape)}. "
                               f"{accepted_shapes(want.shape)}")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise CalibrationError(f"{where}: contains NaN or Inf values; clean the data before calibrating")


def accepted_shapes(shape: tuple[int, ...]) -> str:
    """The sentence saying which array shapes calibration data may have for an input of `shape`."""
    dims = ", ".join(map(str, shape))
    if shape and shape[0] == 1:
        inner = ", ".join(map(str, shape[1:]))
        return (f"Each sample is [{dims}] or [{inner}]; an .npz or dict stacks the samples along a new first "
                f"axis: [N, {dims}] or [N, {inner}] per input (N samples)")
    return (f"Each sample is [{dims}]; an .npz or dict stacks the samples along a new first axis: "
            f"[N, {dims}] per input (N samples)")


def iterate(samples: list[dict], desc: str = "calibrating", quiet: bool = False) -> Iterator[dict]:
    """Iterate samples with a progress bar on stderr (tqdm), unless quiet."""
    try:
        from tqdm import tqdm
    except ImportError:
        yield from samples
        return
    yield from tqdm(samples, desc=desc, unit="sample", disable=quiet, leave=False)
