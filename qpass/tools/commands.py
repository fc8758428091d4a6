"""The registry of `qpass` subcommands and what they share: `@command` registers one (feature
modules such as the viewer and the debugger own theirs), common arguments, model loading."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable, Optional

from qpass.errors import QpassError

COMMANDS: dict[str, tuple[str, Callable, Callable]] = {}

def command(name: str, help: str):
    """Register a subcommand: the decorated function adds arguments; it returns the runner."""
    def wrap(configure):
        def add(sub):
            parser = sub.add_parser(name, help=help, description=help)
            _common(parser)
            return configure(parser)
        COMMANDS[name] = (help, add, configure)
        return configure
    return wrap


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--load", action="append", default=[], metavar="MODULE",
                        help="import a Python module or .py file first (to register your own passes)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def parse_shape_arg(text: str) -> tuple[str, tuple[int, ...]]:
    """`name=1x3x224x224` -> ("name", (1, 3, 224, 224))."""
    name, sep, dims = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        shape = tuple(int(d) for d in dims.lower().split("x"))
        if any(d <= 0 for d in shape):
            raise ValueError
    except ValueError:
        raise QpassError(f"--input-shape {text!r} is not of the form NAME=DxDxD with positive integers, "
                         "e.g. --input-shape input=1x3x224x224") from None
    return name, shape


def load_plugin(spec: str) -> None:
    """Import `spec`: a dotted module name or a path to a .py file."""
    try:
        if spec.endswith(".py") or "/" in spec:
            path = Path(spec)
            if not path.is_file():
                raise QpassError(f"--load {spec}: no such file; give a module name or the path of a .py file")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[path.stem] = module
            module_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
    except QpassError:
        raise
    except ImportError as e:
        raise QpassError(f"--load {spec}: cannot import it ({e}); check the name and PYTHONPATH") from e
    except Exception as e:
        raise QpassError(f"--load {spec}: importing it failed with {type(e).__name__}: {e}") from e


def load_model(path: str, input_shapes: Optional[list[str]] = None):
    """Read an ONNX model or a .qir file into a verified graph."""
    from qpass import import_onnx
    from qpass.ir import load
    p = Path(path)
    if not p.exists():
        raise QpassError(f"{path}: no such file; give an .onnx model or a .qir IR file")
    shapes = dict(parse_shape_arg(s) for s in input_shapes or [])
    if p.suffix == ".qir":
        if shapes:
            raise QpassError("--input-shape applies to ONNX models; a .qir file has static shapes already")
        graph = load(p)
    else:
        graph = import_onnx(p, input_shapes=shapes or None)
    graph.verify()
    return graph


def add_quantization_options(parser: argparse.ArgumentParser, calib_required: bool = True) -> None:
    """--calib, --preprocess, --bits and --method, shared by the commands that quantize.

    With --preprocess (in any order), `args.calib` is a `SampleSource(path, spec)` that every
    `load_calibration` reads; without it, the plain path. `args.preprocess` holds the parsed spec.
    """
    parser.add_argument("--calib", required=calib_required, metavar="PATH", action=_CalibrationPath,
                        help="calibration data: an .npz (input name -> array with a leading sample axis), "
                             "a folder of .npy / .npz samples, or a folder of images with --preprocess")
    parser.add_argument("--preprocess", metavar="SPEC", type=parse_preprocess_arg, action=_CalibrationPath,
                        help="how images become the model input, e.g. \"resize=256,crop=224,mean=0.485/0.456/0.406,"
                             "std=0.229/0.224/0.225,scale=1/255,layout=NCHW\" (keys: resize=S|HxW (short side or "
                             "exact), crop=S|HxW (centre), scale (default 1/255), mean, std (per channel, '/'), "
                             "color=rgb|bgr|gray, layout=NCHW|NHWC|CHW|HWC)")
    parser.add_argument("--bits", default="8", choices=["8", "4", "mixed"], help="weight bits (activations int8)")
    parser.add_argument("--method", default="percentile",
                        choices=["minmax", "moving-average", "percentile", "mse", "entropy"], help="range observer")


def add_exact_range_option(parser: argparse.ArgumentParser) -> None:
    """--exact-range: 7-bit weights, for AVX2's exact full-rate kernel (quantize and compile)."""
    parser.add_argument("--exact-range", action="store_true",
                        help="quantize 8-bit weights to 7 bits (within [-64, 63]): on AVX2 targets the int8 "
                             "kernels then run vpmaddubsw at its full rate, still bit-exact (default: full 8-bit "
                             "weights, which AVX2 computes exactly at about half that rate)")


def exact_range_pipeline(args: argparse.Namespace, graph) -> Optional[str]:
    """The pipeline to run for --exact-range (None without it): the default one with 7-bit weights.

    Refused with --pipeline (write quantize{exact-range=true} into it) and for a model that is not
    float (a QDQ model's or integer IR's weights are fixed already)."""
    from qpass.api import default_pipeline, model_kind
    if not getattr(args, "exact_range", False):
        return None
    if args.pipeline:
        raise QpassError("--exact-range sets the weight bits of the default pipeline; with --pipeline, write "
                         "quantize{exact-range=true} into the pipeline instead")
    kind = model_kind(graph)
    if kind != "float":
        raise QpassError(f"--exact-range re-quantizes float weights, but {args.model} is a {kind} model (its "
                         "weights are quantized already); drop --exact-range")
    bits = int(args.bits) if args.bits.isdigit() else args.bits
    return default_pipeline(kind, bits, args.method, args.budget, exact_range=True)


def add_evaluation_options(parser: argparse.ArgumentParser) -> None:
    """--eval and --eval-limit: top-1 accuracy on held-out labelled data (see qpass.quant.evaluation)."""
    parser.add_argument("--eval", metavar="PATH",
                        help="held-out labelled data for real accuracy: a labels.csv of path,label rows (images "
                             "use the --preprocess spec), a folder of .npz samples with a `label`, or an .npz of "
                             "input arrays plus `labels`; never the calibration data")
    parser.add_argument("--eval-limit", type=_positive_int, default=200, metavar="N",
                        help="evaluate on the first N samples (default 200; each runs the float and the "
                             "integer model in the reference interpreter, about a second each for MobileNetV2)")


def evaluation_source(args: argparse.Namespace):
    """What --eval names, with the --preprocess spec its images use; None without --eval."""
    if not getattr(args, "eval", None):
        return None
    from qpass.quant.calibration import SampleSource
    return SampleSource(args.eval, getattr(args, "preprocess", None))


def parse_preprocess_arg(text: str):
    """--preprocess SPEC -> ImagePreprocess; a bad spec is an argparse error naming the option."""
    from qpass.frontend.images import ImagePreprocess
    try:
        return ImagePreprocess.parse(text)
    except QpassError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
        if value < 1:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number, e.g. --eval-limit 200") from None
    return value


class _CalibrationPath(argparse.Action):
    """Stores --calib and --preprocess, and whichever comes last makes `calib` carry the spec."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        path, spec = getattr(namespace, "calib", None), getattr(namespace, "preprocess", None)
        if path is not None and spec is not None:
            from qpass.quant.calibration import SampleSource
            namespace.calib = SampleSource(getattr(path, "path", path), spec)
