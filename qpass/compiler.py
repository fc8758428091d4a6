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

from qpass.api import CANONICALIZE, FOLD_QDQ, NEEDS_CALIBRATION, default_pipeline, is_integer, model_kind  # noqa: F401
from qpass.backends import backend
from qpass.errors import QpassError
from qpass.passmgr.instruments import DumpIR, PrintAfter, Timing, check_dump_dir, creation_problem
from qpass.ir.graph import Graph
from qpass.ir.opdef import Trait, op_def
from qpass.passmgr.manager import PassContext, run_passes
from qpass.passmgr.pipeline import parse_pipeline

# Float outputs (float ops after the last dequantize) agree with the interpreter within float
# rounding: |got - want| <= FLOAT_ATOL * max|want| + FLOAT_RTOL * |want|, element by element.
FLOAT_RTOL, FLOAT_ATOL = 1e-5, 1e-6
INTEGER_INPUT_NOTE = "the input is integer IR already; no quantization passes ran"


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
        check_output_dir(outdir, force, option="outdir")
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
            quiet: bool = True, evaluation=None, eval_limit: int = 200, exact_range: bool = False) -> CompiledModel:
    """Compile a model for a target triple; see the module docstring for the steps.

    `exact_range` quantizes weights to 7 bits, which AVX2's full-rate kernel computes exactly
    (see `quantization_pipeline`); it applies to float models calibrated here.

    `evaluation`: held-out labelled data (a path, or a `SampleSource(path, preprocess)` for images;
    formats in qpass.quant.evaluation); the first `eval_limit` samples give the report's "accuracy":
    top-1 of the float (or QDQ) and the integer model in the reference interpreter, and their agreement.

    `dump_ir` and `print_ir_after_all` also show the backend's target legalization, so the last
    dump is the IR the library implements (for integer IR input, the input and that).
    """
    spec = backend().resolve_target(target, mcpu, mattr, arch)    # unknown targets fail before any work
    if dump_ir:
        check_dump_dir(dump_ir)
    start = time.perf_counter()
    graph = _load(model, input_shapes)
    check_lowerable(graph)                                        # before calibration, every op at once
    kind = model_kind(graph)
    samples = None
    if pipeline is None:
        if kind == "float" and calibration is None:
            raise QpassError(f"{_describe(model)} is a float model: {NEEDS_CALIBRATION}. An already "
                             "fake-quantized (QDQ) model or integer IR (.qir) needs none")
        pipeline = default_pipeline(kind, bits, method, budget, **({"exact_range": True} if exact_range else {}))
    if calibration is not None:
        from qpass.quant.calibration import load_calibration
        samples = load_calibration(calibration, graph)
    eval_set = None
    if evaluation is not None:                                    # checked before any pass runs
        from qpass.quant.evaluation import load_evaluation
        eval_set = load_evaluation(evaluation, graph, eval_limit, calibration=samples)
    timing = Timing()
    shown = ([DumpIR(dump_ir)] if dump_ir else []) + ([PrintAfter()] if print_ir_after_all else [])
    ctx = PassContext([timing] + shown, verify_each=True)
    ctx.calibration, ctx.quiet = samples, quiet
    float_graph = run_passes(graph.copy(), CANONICALIZE) if kind == "float" and samples else None
    with ctx:
        integer = run_passes(graph.copy(), parse_pipeline(pipeline) if pipeline else [], ctx)
    passes_done = time.perf_counter()
    with PassContext(shown, quiet=quiet):      # the backend's legalization, dumped and printed after the rest
        built = backend().build(integer, spec)
    report = _report(graph, integer, built, float_graph, samples, ctx, timing, kind, eval_set, quiet)
    report["compile_seconds"] = {"passes": round(passes_done - start, 3), "build": round(built.seconds, 3),
                                 "total": round(time.perf_counter() - start, 3)}
    return CompiledModel(built, report)


def check_lowerable(graph: Graph) -> None:
    """Refuse a graph with ops that no target lowers, naming every such op kind at once."""
    missing: dict[str, list[str]] = {}
    for op in graph.ops:
        definition = op_def(op.kind)
        problem = ("no lowering" if definition.lower is None
                   else definition.lowering_problem(op) if definition.lowering_problem else None)
        if problem:
            kind = op.kind if definition.lower is None else f"{op.kind} ({problem})"
            missing.setdefault(kind, []).append(op.name)
    if missing:
        listing = "; ".join(f"{kind} ({len(names)} op{'s' if len(names) > 1 else ''}: "
                            f"{', '.join('%' + n for n in names[:3])}{', ...' if len(names) > 3 else ''})"
                            for kind, names in sorted(missing.items()))
        raise QpassError(f"the model cannot compile: these ops have no lowering to TVM: {listing}. Give the "
                         "op's definition a `lower` (see `qpass ops` and docs/ops.md), express the ONNX op with "
                         "ops that lower, or remove the ops from the model")


def _describe(model) -> str:
    return f"graph @{model.name}" if isinstance(model, Graph) else str(model)


def check_output_dir(outdir, force: bool = False, option: str = "-o") -> None:
    """Refuse, before any work, an artifact directory that could not be written: one that exists
    (without `force`) or is a file, one whose parent is missing, or a place where nothing can be
    created (read-only, /proc, not yours). A probe entry is created and removed to find out."""
    out = Path(outdir)
    if out.exists() and not force:
        raise QpassError(f"{out} exists; pass --force to replace it, or choose another {option}")
    if out.exists() and not out.is_dir():
        raise QpassError(f"cannot write the artifact directory {out}: it is a file, not a directory; remove it "
                         f"or choose another {option}")
    parent = out.resolve().parent
    if not parent.is_dir():
        what = "is a file, not a directory;" if parent.exists() else "does not exist; create it first or"
        raise QpassError(f"cannot write the artifact directory {out}: {parent} {what} choose another {option}")
    problem = creation_problem(parent)
    if problem:
        raise QpassError(f"cannot write the artifact directory {out}: nothing can be created in {parent} "
                         f"({problem}; read-only, a virtual file system such as /proc, or not writable by you); "
                         f"choose a writable place for {option}")
    check = getattr(backend(), "check_output", None)
    if check is not None:
        check(outdir, force)


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


def _report(graph, integer, built, float_graph, samples, ctx, timing, kind, eval_set=None, quiet=True) -> dict:
    from qpass.quant.report import float_op_groups, quantization_report
    report = {"model": {"name": graph.name, "kind": kind,
                        "inputs": [{"name": v.name, "shape": list(v.type.shape), "dtype": v.type.dtype}
                                   for v in graph.inputs],
                        "ops": len(graph.ops), "integer_ops": sum(is_integer(op) for op in integer.ops)},
              "target": built.spec.describe(), "micro_kernel": built.spec.micro_kernel,
              "size": ({"float_weight_bytes": None, "weight_bytes": weight_bytes(integer),
                        "note": "integer weights only: the input is integer IR, there is no float model"}
                       if kind == "integer" else
                       {"float_weight_bytes": weight_bytes(graph), "weight_bytes": weight_bytes(integer)}),
              "passes": [{"pass": name, "ms": round(s * 1e3, 2), "changed": changed}
                         for name, s, changed in timing.records],
              **({"passes_note": INTEGER_INPUT_NOTE} if kind == "integer" else {}),
              "kernels": built.kernels, "warnings": list(built.notes)}
    # why each op stayed float, grouped by reason with a hint (quantize's range check knows best why)
    mixed = ctx.analyses.custom.get("quantize", {}).get("float_ops", {})
    float_ops = {name: mixed.get(name, why) for name, why in ctx.analyses.float_ops.items()}
    report["float_op_groups"] = float_op_groups(float_ops, integer)
    if float_graph is not None and samples:
        report["quantization"] = quantization_report(float_graph, integer, samples[:16], float_ops,
                                                     ctx.analyses.bitwidth)
    if eval_set is not None:
        from qpass.quant.evaluation import evaluate
        reference = float_graph if kind == "float" else graph if kind == "qdq" else None
        report["accuracy"] = evaluate(eval_set, integer, reference, kind, quiet)
        report["warnings"] += eval_set.warnings
    return report


def check_and_time(compiled: CompiledModel, sample: Optional[dict], repeat: int = 20) -> dict:
    """Run the artifact where it can run: compare with the interpreter (see `compare_outputs`), and latency."""
    from qpass.interpreter import interpret
    artifact = compiled.artifact()
    ok, why = artifact.runnable()
    result = {"runs_here": ok, "how": why}
    if not ok or sample is None:
        return result
    got = artifact.run(sample)
    want = interpret(compiled.graph, sample)
    result.update(compare_outputs(got, want))
    timing = artifact.time(sample, repeat)
    if timing:
        result["latency"] = timing
    return result


def compare_outputs(got: dict, want: dict) -> dict:
    """Compare a compiled model's outputs with the interpreter's.

    Integer outputs must be equal bit for bit; float outputs (float ops after the last dequantize,
    e.g. a softmax) must agree within float rounding (FLOAT_RTOL, FLOAT_ATOL relative to the
    output's largest magnitude), since TVM and numpy may order or fuse float arithmetic differently.
    Returns `matches_interpreter` (every output agrees by its rule), `bit_exact` (every output is
    equal), `max_abs_difference`, `outputs` (per output: dtype, rule, max |diff|, agrees) and
    `comparison`, the sentence the report prints.
    """
    outputs = {}
    for name, expected in want.items():
        expected, actual = np.asarray(expected), np.asarray(got[name])
        is_float = np.issubdtype(expected.dtype, np.floating)
        if actual.shape != expected.shape:
            outputs[name] = {"dtype": str(expected.dtype), "rule": "float rounding" if is_float else "bit-exact",
                             "max_abs_difference": None, "agrees": False, "equal": False,
                             "why": f"shape {list(actual.shape)}, the interpreter's {list(expected.shape)}"}
            continue
        a, e = actual.astype(np.float64), expected.astype(np.float64)
        both_nan = np.isnan(a) & np.isnan(e)
        diff = np.where(both_nan, 0.0, np.abs(a - e))
        diff = np.where(np.isnan(diff), np.inf, diff)
        max_diff = float(diff.max(initial=0.0))
        equal = bool(np.array_equal(actual, expected, equal_nan=is_float))
        if is_float:
            finite = np.abs(e[np.isfinite(e)])
            tolerance = FLOAT_ATOL * float(finite.max(initial=0.0)) + FLOAT_RTOL * np.where(np.isfinite(e), np.abs(e), 0)
            agrees = equal or bool(np.all((diff <= tolerance) | (a == e) | both_nan))
        else:
            agrees = equal
        outputs[name] = {"dtype": str(expected.dtype), "rule": "float rounding" if is_float else "bit-exact",
                         "max_abs_difference": max_diff, "agrees": agrees, "equal": equal}
    known = [o["max_abs_difference"] for o in outputs.values() if o["max_abs_difference"] is not None]
    result = {"matches_interpreter": all(o["agrees"] for o in outputs.values()),
              "bit_exact": all(o["equal"] for o in outputs.values()),
              "max_abs_difference": max(known, default=0.0), "outputs": outputs}
    result["comparison"] = _comparison_sentence(result)
    return result


def _comparison_sentence(result: dict) -> str:
    outputs = result["outputs"]
    if result["bit_exact"]:
        return "bit-exact with the reference interpreter"
    if result["matches_interpreter"]:
        floats = [o["max_abs_difference"] for o in outputs.values() if o["rule"] == "float rounding"]
        parts = (["integer outputs bit-exact"] if any(o["rule"] == "bit-exact" for o in outputs.values()) else [])
        parts.append(f"float outputs within float rounding (max |diff| {max(floats):.2g})")
        return "matches the reference interpreter: " + "; ".join(parts)
    wrong = []
    for name, o in outputs.items():
        if o["agrees"]:
            continue
        if o["max_abs_difference"] is None:
            wrong.append(f"{name} ({o['dtype']}) has {o['why']}")
        elif o["rule"] == "bit-exact":
            wrong.append(f"{name} ({o['dtype']}) is not bit-exact (max |diff| {o['max_abs_difference']:.4g})")
        else:
            wrong.append(f"{name} ({o['dtype']}) differs beyond float rounding (max |diff| "
                         f"{o['max_abs_difference']:.4g})")
    return "DIFFERS from the reference interpreter: " + "; ".join(wrong)
