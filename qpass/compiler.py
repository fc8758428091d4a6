"""`qpass.compile`: model -> integer IR -> artifact for a target triple, with its report.

The steps: import (ONNX or .qir), quantize (calibrated float models), or fold the fake-quant pairs
of an imported QDQ model, or take integer IR as it is; then target legalization, lowering and
the TVM build (qpass.targets); then a report with the quantization figures, the kernels chosen,
the fallbacks, sizes, pass times, and where the target runs here, a bit-exact check against the
interpreter and the measured latency.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Optional, Union

import numpy as np

from qpass.api import CANONICALIZE, quantization_pipeline
from qpass.backends import backend
from qpass.errors import QpassError
from qpass.passmgr.instruments import DumpIR, PrintAfter, Timing
from qpass.ir.graph import Graph
from qpass.ir.opdef import Trait, op_def
from qpass.passmgr.manager import PassContext, run_passes

FOLD_QDQ = f"{CANONICALIZE},fold-fake-quant,fuse-requant,eliminate-dead-code"


def is_integer(op) -> bool:
    return op_def(op.kind).has(Trait.INTEGER)


def model_kind(graph: Graph) -> str:
    """"integer" (already compiled IR), "qdq" (fake-quant pairs, e.g. from a QAT tool) or "float"."""
    kinds = {op.kind for op in graph.ops}
    if any(is_integer(op) for op in graph.ops):
        return "integer"
    return "qdq" if {"quantize", "dequantize"} <= kinds else "float"


def weight_bytes(graph: Graph) -> int:
    """Bytes of the conv/dense weights as deployed (int4 packed two per byte)."""
    total = 0
    for op in graph.ops:
        if op_def(op.kind).has(Trait.WEIGHTED) and op.inputs[1].is_constant:
            t = op.inputs[1].type
            bits = {"f32": 32, "f16": 16, "i4": 4, "u4": 4}.get(t.dtype, 8)
            if t.quant is not None and t.quant.bits:
                bits = min(bits, t.quant.bits)
            total += (t.size * bits + 7) // 8
    return total


@dataclasses.dataclass
class CompiledModel:
    """The result of `compile`: save it as OUTDIR, or run it here."""

    built: object                    # what the backend built (see qpass.backends)
    report: dict
    _dir: Optional[Path] = None
    _tmp: Optional[tempfile.TemporaryDirectory] = None

    @property
    def graph(self) -> Graph:
        return self.built.graph

    def save(self, outdir, force: bool = False) -> Path:
        self._dir = backend().write_artifact(self.built, outdir, self.report, force=force)
        return self._dir

    def artifact(self):
        if self._dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="qpass-")
            self.save(Path(self._tmp.name) / "model")
        return backend().load_artifact(self._dir)

    def run(self, inputs: dict) -> dict:
        return self.artifact().run(inputs)


def compile(model: Union[str, Path, Graph], target: str = "x86_64-linux-gnu", calibration=None, *,
            mcpu: Optional[str] = None, mattr=None, arch: Optional[str] = None, bits: Union[int, str] = 8,
            method: str = "percentile", budget: float = 0.6, pipeline: Optional[str] = None,
            input_shapes: Optional[dict] = None, dump_ir=None, print_ir_after_all: bool = False,
            quiet: bool = True) -> CompiledModel:
    """Compile a model for a target triple; see the module docstring for the steps."""
    spec = backend().resolve_target(target, mcpu, mattr, arch)    # unknown targets fail before any work
    start = time.perf_counter()
    graph = _load(model, input_shapes)
    check_lowerable(graph)                                        # before calibration, every op at once
    kind = model_kind(graph)
    samples = None
    if pipeline is None:
        if kind == "float":
            if calibration is None:
                raise QpassError("this is a float model: give calibration data (--calib PATH: an .npz of input "
                                 "name -> samples, or a folder of .npy/.npz samples) so qpass can choose "
                                 "quantization ranges")
            pipeline = quantization_pipeline(bits, method, budget=budget)
        else:
            pipeline = FOLD_QDQ if kind == "qdq" else ""
    if calibration is not None:
        from qpass.quant.calibration import load_calibration
        samples = load_calibration(calibration, graph)
    timing = Timing()
    instruments = [timing] + ([DumpIR(dump_ir)] if dump_ir else []) + ([PrintAfter()] if print_ir_after_all else [])
    ctx = PassContext(instruments, verify_each=True)
    ctx.calibration, ctx.quiet = samples, quiet
    float_graph = run_passes(graph.copy(), CANONICALIZE) if kind == "float" and samples else None
    with ctx:
        integer = run_passes(graph.copy(), pipeline, ctx) if pipeline else graph
    passes_done = time.perf_counter()
    built = backend().build(integer, spec)
    report = _report(graph, integer, built, float_graph, samples, ctx, timing, kind)
    report["compile_seconds"] = {"passes": round(passes_done - start, 3), "build": round(built.seconds, 3),
                                 "total": round(time.perf_counter() - start, 3)}
    return CompiledModel(built, report)


def check_lowerable(graph: Graph) -> None:
    """Refuse a graph with ops that no target lowers, naming every such op kind at once."""
    missing: dict[str, list[str]] = {}
    for op in graph.ops:
        if op_def(op.kind).lower is None:
            missing.setdefault(op.kind, []).append(op.name)
    if missing:
        listing = "; ".join(f"{kind} ({len(names)} op{'s' if len(names) > 1 else ''}: "
                            f"{', '.join('%' + n for n in names[:3])}{', ...' if len(names) > 3 else ''})"
                            for kind, names in sorted(missing.items()))
        raise QpassError(f"the model cannot compile: these ops have no lowering to TVM: {listing}. Give the "
                         "op's definition a `lower` (see `qpass ops` and docs/ops.md), or remove the ops from "
                         "the model")


def _load(model, input_shapes) -> Graph:
    if isinstance(model, Graph):
        return model.copy()
    from qpass import import_onnx
    from qpass.ir import load
    path = Path(model)
    if not path.exists():
        raise QpassError(f"{model}: no such file; give an .onnx model or a .qir IR file")
    graph = load(path) if path.suffix == ".qir" else import_onnx(path, input_shapes=input_shapes)
    return graph.verify()


def _report(graph, integer, built, float_graph, samples, ctx, timing, kind) -> dict:
    from qpass.quant.report import quantization_report
    report = {"model": {"name": graph.name, "kind": kind,
                        "inputs": [{"name": v.name, "shape": list(v.type.shape), "dtype": v.type.dtype}
                                   for v in graph.inputs],
                        "ops": len(graph.ops), "integer_ops": sum(is_integer(op) for op in integer.ops)},
              "target": built.spec.describe(), "micro_kernel": built.spec.micro_kernel,
              "size": {"float_weight_bytes": weight_bytes(graph), "weight_bytes": weight_bytes(integer)},
              "passes": [{"pass": name, "ms": round(s * 1e3, 2), "changed": changed}
                         for name, s, changed in timing.records],
              "kernels": built.kernels, "warnings": list(built.notes)}
    float_ops = ctx.analyses.float_ops
    report["warnings"] += [f"left in float: {name}: {why}" for name, why in float_ops.items()]
    if float_graph is not None and samples:
        report["quantization"] = quantization_report(float_graph, integer, samples[:16], float_ops,
                                                     ctx.analyses.bitwidth)
    return report


def check_and_time(compiled: CompiledModel, sample: Optional[dict], repeat: int = 20) -> dict:
    """Run the artifact where it can run: bit-exact check against the interpreter, and latency."""
    from qpass.interpreter import interpret
    artifact = compiled.artifact()
    ok, why = artifact.runnable()
    result = {"runs_here": ok, "how": why}
    if not ok or sample is None:
        return result
    got = artifact.run(sample)
    want = interpret(compiled.graph, sample)
    result["matches_interpreter"] = all(np.array_equal(got[k], want[k]) for k in want)
    result["max_abs_difference"] = max(float(np.abs(got[k].astype(np.float64) - want[k]).max()) for k in want)
    timing = artifact.time(sample, repeat)
    if timing:
        result["latency"] = timing
    return result
