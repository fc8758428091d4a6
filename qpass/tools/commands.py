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
    """--calib, --bits and --method, shared by the commands that quantize."""
    parser.add_argument("--calib", required=calib_required, metavar="PATH",
                        help="calibration data: an .npz (input name -> array with a leading sample axis) "
                             "or a folder of .npy / .npz samples")
    parser.add_argument("--bits", default="8", choices=["8", "4", "mixed"], help="weight bits (activations int8)")
    parser.add_argument("--method", default="percentile",
                        choices=["minmax", "moving-average", "percentile", "mse", "entropy"], help="range observer")
