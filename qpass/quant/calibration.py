"""Calibration data: loading it and checking it against a graph's inputs.

Accepted forms: a list of {input name: array} samples; a dict {input name: array with a leading
sample axis}; an .npz file of that dict; a folder of .npy files (one per sample, for a graph with
one input) or of .npz files (one per sample). Every problem is a clear error naming the input.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Union

import numpy as np

from qpass.errors import QpassError
from qpass.ir.graph import Graph, Value


class CalibrationError(QpassError):
    """Calibration data does not fit the model."""


Samples = Union[str, Path, Mapping[str, np.ndarray], Iterable[Mapping[str, np.ndarray]]]

# What numpy raises for a file that is not (or no longer) a readable .npy/.npz.
_UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def _from_path(path: Path, graph: Graph) -> list[dict]:
    if not path.exists():
        raise CalibrationError(f"calibration path {path} does not exist; give an .npz file or a folder of .npy "
                               "or .npz files")
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
    if not files:
        raise CalibrationError(f"calibration folder {path} holds no .npy or .npz files; add one file per sample")
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


def load_calibration(data: Samples, graph: Graph) -> list[dict]:
    """Normalize `data` into a checked list of samples for `graph`."""
    if isinstance(data, (str, Path)):
        samples = _from_path(Path(data), graph)
    elif isinstance(data, Mapping):
        samples = _split(data, graph, "dict")
    else:
        samples = [dict(s) for s in data]
    check_samples(samples, graph)
    return samples


def check_samples(samples: list[dict], graph: Graph) -> None:
    """Check every sample against the graph's inputs (names, dtype, shape, finite values); casts in place."""
    if not samples:
        raise CalibrationError("the calibration data is empty; give at least one sample per input "
                               f"({', '.join(v.name for v in graph.inputs)})")
    names = {v.name for v in graph.inputs}
    for i, sample in enumerate(samples):
        if set(sample) != names:
            missing, extra = sorted(names - set(sample)), sorted(set(sample) - names)
            raise CalibrationError(f"calibration sample {i}: " + ("; ".join(
                part for part in (f"missing input(s) {', '.join(missing)}" if missing else "",
                                  f"unknown name(s) {', '.join(extra)}" if extra else "") if part))
                + f". The model takes {', '.join(sorted(names))}: name each array after the input it feeds.")
        for value in graph.inputs:
            _check_array(np.asarray(sample[value.name]), value, f"calibration sample {i}, input {value.name}")
            sample[value.name] = np.asarray(sample[value.name]).astype(value.type.numpy_dtype, copy=False)


def _check_array(array: np.ndarray, value: Value, where: str) -> None:
    want = value.type
    if array.dtype.kind not in "fiu" or (array.dtype.kind != "f") != (want.numpy_dtype.kind != "f"):
        raise CalibrationError(f"{where}: dtype {array.dtype} does not fit the model's {want.dtype}; convert the "
                               f"data to {want.numpy_dtype} as the model's preprocessing does")
    if array.shape != want.shape:
        raise CalibrationError(f"{where}: shape {list(array.shape)} does not match the model's {list(want.shape)}; "
                               f"an .npz holds one array of shape [samples, {', '.join(map(str, want.shape))}] "
                               "per input")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise CalibrationError(f"{where}: contains NaN or Inf values; clean the data before calibrating")


def iterate(samples: list[dict], desc: str = "calibrating", quiet: bool = False) -> Iterator[dict]:
    """Iterate samples with a progress bar on stderr (tqdm), unless quiet."""
    try:
        from tqdm import tqdm
    except ImportError:
        yield from samples
        return
    yield from tqdm(samples, desc=desc, unit="sample", disable=quiet, leave=False)
