"""Accuracy on held-out labelled data: top-1 of the float and of the integer model, both run in the
reference interpreter, and how often they agree.

Eval data (`qpass compile --eval PATH`, `qpass.compile(..., evaluation=PATH)`), one of:
- `labels.csv`: rows `path,label` (an optional first row `path,label` is a header); paths are relative
  to the csv's folder; each names an image (preprocessed with the --preprocess spec, the same one the
  calibration images use), a `.npy` (one sample of a single-input model) or a `.npz` (one sample:
  input name -> array).
- a folder: its `labels.csv` if it has one, else its `.npz` files (sorted by name), each one sample:
  input name -> array, plus `label` (an integer).
- an `.npz` file: input name -> array of N samples stacked on a new first axis, plus `labels` [N]
  (for a single-input model the array may have any name, e.g. the `images` of qpass/data/digits_test.npz).

A label is a class index into the model's first output, which must have one class axis ([1, classes]
or [classes]). Only the first `limit` samples in file order are read (the count bounds the work, never
the time). Samples that are also in the calibration data are left out, with a warning: accuracy on
data the ranges were chosen on says little.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from qpass.errors import QpassError
from qpass.frontend.images import ImagePreprocess, is_image
from qpass.ir.graph import Graph
from qpass.quant.calibration import SampleSource, as_preprocess, check_samples, image_input, iterate

DEFAULT_LIMIT = 200
FORMATS = ("a labels.csv of `path,label` rows, a folder of .npz samples each with a `label`, or an .npz of "
           "input arrays with a `labels` array")


class EvaluationError(QpassError):
    """Eval data is missing, malformed or does not fit the model."""


@dataclasses.dataclass
class EvalSet:
    """Labelled samples ready to run, and where they came from."""

    source: str
    samples: list[dict]
    labels: list[int]
    names: list[str]                    # one per sample: its file, or its index in an .npz
    available: int                      # samples in the source, before the limit
    limit: int
    output: str                         # the graph output whose argmax is the prediction
    classes: int
    left_out: list[str] = dataclasses.field(default_factory=list)   # also calibration samples

    @property
    def warnings(self) -> list[str]:
        if not self.left_out:
            return []
        shown = ", ".join(self.left_out[:3]) + (", ..." if len(self.left_out) > 3 else "")
        return [f"eval data {self.source}: {len(self.left_out)} sample(s) are also calibration samples ({shown}); "
                "they are left out of the accuracy. Keep the eval data apart from --calib"]


def classifier_output(graph: Graph) -> tuple[str, int]:
    """The first output's name and class count; refuse a model whose output has no single class axis."""
    value = graph.outputs[0]
    shape = list(value.type.shape)
    wide = [d for d in shape if d != 1]
    if len(wide) != 1:
        raise EvaluationError(f"--eval measures top-1 classification accuracy, but the model's first output "
                              f"{value.name} has shape {shape}, not one class axis ([1, classes] or [classes]); "
                              "evaluate this model with your own script on qpass.interpret")
    return value.name, wide[0]


def _label(text: str, where: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise EvaluationError(f"{where}: label {text.strip()!r} is not a class index; labels are integers "
                              "0..classes-1, the index of the class in the model's output") from None


def _csv_entries(path: Path) -> list[tuple[str, Path, int]]:
    """(name, file, label) per row of a labels.csv."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise EvaluationError(f"cannot read eval labels {path}: {e}") from None
    entries = []
    for number, row in enumerate(rows, 1):
        if not row or all(not cell.strip() for cell in row):
            continue
        where = f"{path} line {number}"
        if len(row) != 2:
            raise EvaluationError(f"{where}: {','.join(row)!r} is not a `path,label` row; write one image or "
                                  "sample file and its class index per line, e.g. `cats/1.png,3`")
        if number == 1 and [c.strip().lower() for c in row] == ["path", "label"]:
            continue
        file = path.parent / row[0].strip()
        if not file.is_file():
            raise EvaluationError(f"{where}: {row[0].strip()} does not exist (paths are relative to the folder of "
                                  f"{path.name})")
        entries.append((f"{path.name}:{number} ({row[0].strip()})", file, _label(row[1], where)))
    return entries


def _sample_loader(file: Path, graph: Graph, spec: Optional[ImagePreprocess], source: str) -> Callable[[], dict]:
    if is_image(file):
        value = image_input(graph, spec, source, "eval")
        return lambda: {value.name: spec.load(file)}
    if file.suffix == ".npy":
        if len(graph.inputs) != 1:
            raise EvaluationError(f"{file}: .npy samples work for single-input models; this one takes "
                                  f"{', '.join(v.name for v in graph.inputs)}: use .npz samples")
        return lambda: {graph.inputs[0].name: _read(file, lambda: np.load(file))}
    if file.suffix == ".npz":
        return lambda: _read(file, lambda: _npz(file))
    raise EvaluationError(f"eval sample {file}: not an image, .npy or .npz file")


def _npz(file: Path) -> dict:
    with np.load(file) as data:
        return dict(data)


def _read(file: Path, read):
    try:
        return read()
    except (OSError, ValueError, EOFError) as e:
        raise EvaluationError(f"cannot read eval sample {file}: {e}. Save it again with numpy.save / numpy.savez"
                              ) from None


def _from_npz_file(path: Path, graph: Graph, limit: int) -> tuple[list, list, list, int]:
    data = _read(path, lambda: _npz(path))
    if "labels" not in data:
        raise EvaluationError(f"eval data {path} has no `labels` array; an eval .npz holds input name -> [N, ...] "
                              "arrays and `labels` [N] of class indices")
    labels = np.asarray(data.pop("labels"))
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise EvaluationError(f"eval data {path}: `labels` must be a 1-D array of integer class indices, got "
                              f"{labels.dtype}{list(labels.shape)}")
    if len(graph.inputs) == 1 and len(data) == 1:
        data = {graph.inputs[0].name: next(iter(data.values()))}
    short = [name for name, array in data.items() if np.ndim(array) == 0 or len(array) != len(labels)]
    if short:
        raise EvaluationError(f"eval data {path}: {', '.join(short)} does not hold {len(labels)} samples (one per "
                              "label) along its first axis")
    n = min(limit, len(labels))
    samples = [{name: np.asarray(array[i]) for name, array in data.items()} for i in range(n)]
    return samples, [int(x) for x in labels[:n]], [f"{path.name}[{i}]" for i in range(n)], len(labels)


def _fingerprint(sample: dict) -> str:
    digest = hashlib.sha1()
    for name in sorted(sample):
        array = np.ascontiguousarray(sample[name])
        digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def load_evaluation(source: Union[str, Path, SampleSource], graph: Graph, limit: int = DEFAULT_LIMIT,
                    calibration: Optional[list[dict]] = None, preprocess=None) -> EvalSet:
    """Read and check the first `limit` labelled samples of `source` for `graph` (see the module
    docstring); those also in `calibration` are left out. Everything is checked before any is run."""
    if isinstance(source, SampleSource):
        source, preprocess = source.path, source.preprocess if preprocess is None else preprocess
    spec = as_preprocess(preprocess)
    if not isinstance(limit, int) or limit < 1:
        raise EvaluationError(f"--eval-limit {limit}: evaluate on at least one sample")
    output, classes = classifier_output(graph)
    path = Path(source)
    if not path.exists():
        raise EvaluationError(f"eval data {path} does not exist; give {FORMATS}")
    if path.is_dir() and (path / "labels.csv").is_file():
        path = path / "labels.csv"
    if path.is_file() and path.suffix == ".npz":
        samples, labels, names, available = _from_npz_file(path, graph, limit)
    else:
        if path.is_file() and path.suffix == ".csv":
            entries = _csv_entries(path)
        elif path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix == ".npz")
            if not files:
                raise EvaluationError(f"eval folder {path} has no labels.csv and no .npz samples; give {FORMATS}")
            entries = [(f.name, f, None) for f in files]
        else:
            raise EvaluationError(f"eval data {path} is not a .csv, an .npz or a folder; give {FORMATS}")
        if not entries:
            raise EvaluationError(f"eval data {path} lists no samples; give {FORMATS}")
        available, entries = len(entries), entries[:limit]
        loaders = [_sample_loader(file, graph, spec, str(path)) for _, file, _ in entries]   # specs checked here
        samples, labels, names = [], [], []
        for (name, file, label), load in zip(entries, iterate(loaders, "reading eval data", quiet=True)):
            sample = load()
            if label is None:
                if "label" not in sample:
                    raise EvaluationError(f"eval sample {file} has no `label`; save each sample as numpy.savez(file, "
                                          "<input name>=array, label=class index), or list the files in a labels.csv")
                label = _label(str(np.asarray(sample.pop("label")).reshape(-1)[0]), str(file))
            samples.append(sample)
            labels.append(label)
            names.append(name)
    check_samples(samples, graph, "eval", names)
    wrong = [f"{name} ({label})" for name, label in zip(names, labels) if not 0 <= label < classes]
    if wrong:
        raise EvaluationError(f"eval data {path}: label(s) outside 0..{classes - 1}, the classes of output {output}: "
                              f"{', '.join(wrong[:5])}{', ...' if len(wrong) > 5 else ''}")
    eval_set = EvalSet(str(source), samples, labels, names, available, limit, output, classes)
    if calibration:
        seen = {_fingerprint(s) for s in calibration}
        keep = [i for i, s in enumerate(samples) if _fingerprint(s) not in seen]
        eval_set.left_out = [names[i] for i in sorted(set(range(len(samples))) - set(keep))]
        if not keep:
            raise EvaluationError(f"every eval sample of {source} is also a calibration sample; evaluate on held-out "
                                  "data (images or samples not given to --calib)")
        eval_set.samples = [samples[i] for i in keep]
        eval_set.labels = [labels[i] for i in keep]
        eval_set.names = [names[i] for i in keep]
    return eval_set


def predictions(graph: Graph, samples: list[dict], desc: str, quiet: bool = True) -> np.ndarray:
    """The argmax of the first output of `graph` on each sample, in the reference interpreter."""
    from qpass.interpreter import interpret
    name = graph.outputs[0].name
    return np.asarray([int(np.argmax(interpret(graph, s)[name].reshape(-1)))
                       for s in iterate(samples, desc, quiet)], dtype=np.int64)


def evaluate(eval_set: EvalSet, integer: Graph, reference: Optional[Graph] = None, reference_kind: str = "float",
             quiet: bool = True) -> dict:
    """Top-1 accuracy of `integer` (and of `reference`, e.g. the float model) on `eval_set`, and
    their top-1 agreement: the "accuracy" section of the compile report."""
    start = time.perf_counter()
    labels = np.asarray(eval_set.labels, dtype=np.int64)
    predicted = {}
    if reference is not None:
        predicted[reference_kind] = predictions(reference, eval_set.samples, f"evaluating {reference_kind}", quiet)
    predicted["integer"] = predictions(integer, eval_set.samples, "evaluating integer", quiet)
    result = {"data": eval_set.source, "samples": len(labels), "available": eval_set.available,
              "limit": eval_set.limit, "output": eval_set.output, "classes": eval_set.classes,
              "left_out_calibration_samples": len(eval_set.left_out),
              "top1": {kind: round(float(np.mean(p == labels)), 6) for kind, p in predicted.items()},
              "correct": {kind: int(np.sum(p == labels)) for kind, p in predicted.items()}}
    if reference is not None:
        result["reference"] = reference_kind
        result["top1_agreement"] = round(float(np.mean(predicted[reference_kind] == predicted["integer"])), 6)
    result["seconds"] = round(time.perf_counter() - start, 3)           # how long it took, never what it ran
    return result


def format_accuracy(accuracy: dict) -> str:
    """One summary line, e.g. `accuracy on 200 eval samples (val/labels.csv): top-1 float 71.0% -> integer 70.5%,
    agreement 97.5%`."""
    count = f"{accuracy['samples']} eval samples"
    notes = []
    if accuracy["available"] > accuracy["limit"]:
        notes.append(f"first {accuracy['limit']} of {accuracy['available']}, --eval-limit")
    if accuracy["left_out_calibration_samples"]:
        notes.append(f"{accuracy['left_out_calibration_samples']} left out: also calibration samples")
    if notes:
        count += f" ({'; '.join(notes)})"
    figures = " -> ".join(f"{kind} {value:.1%}" for kind, value in accuracy["top1"].items())
    line = f"accuracy on {count} of {accuracy['data']}: top-1 {figures}"
    if "top1_agreement" in accuracy:
        line += f", agreement {accuracy['top1_agreement']:.1%}"
    return line
