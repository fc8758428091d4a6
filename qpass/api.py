"""The Python API's high-level entry points (the CLI uses the same)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

from qpass.errors import QpassError
from qpass.ir.graph import Graph
from qpass.ir.opdef import Trait, op_def
from qpass.passmgr.manager import PassContext, run_passes
from qpass.quant.calibration import Samples, load_calibration

CANONICALIZE = ("fold-constants,fold-batchnorm,fold-bias-add,eliminate-identity,recognize-activations,"
                "eliminate-dead-code")
FOLD_QDQ = f"{CANONICALIZE},fold-fake-quant,fuse-requant,eliminate-dead-code"
NEEDS_CALIBRATION = ("give calibration data so qpass can choose quantization ranges: calibration=... in Python "
                     "(a path, a dict of input name -> array with a leading sample axis, or a list of samples), "
                     "--calib PATH on the command line (an .npz of input name -> samples, or a folder of "
                     ".npy/.npz samples)")


def is_integer(op) -> bool:
    """Whether `op` computes in integers (its definition has the INTEGER trait)."""
    return op_def(op.kind).has(Trait.INTEGER)


def model_kind(graph: Graph) -> str:
    """"integer" (already compiled IR), "qdq" (fake-quant pairs, e.g. from a QAT tool) or "float"."""
    kinds = {op.kind for op in graph.ops}
    if any(is_integer(op) for op in graph.ops):
        return "integer"
    return "qdq" if {"quantize", "dequantize"} <= kinds else "float"


def default_pipeline(kind: str, bits: Union[int, str] = 8, method: str = "percentile",
                     budget: float = 0.6, **quantize_options) -> str:
    """The pipeline quantize and compile run on a graph of `kind` (see `model_kind`) by default.

    A float graph gets the calibrated quantization pipeline, a QDQ graph the fold pipeline (its
    ranges are in its Q/DQ pairs already, nothing to calibrate), integer IR none ("").
    """
    if kind == "float":
        return quantization_pipeline(bits, method, budget=budget, **quantize_options)
    return FOLD_QDQ if kind == "qdq" else ""


def quantization_pipeline(bits: Union[int, str] = 8, method: str = "percentile", weights: str = "per-channel",
                          budget: float = 0.6, bias_correction: bool = True, cle: bool = False,
                          adaround: bool = False, keep_int8: Sequence[str] = (), exact_range: bool = False) -> str:
    """The pipeline `quantize()` runs, as a string (print it, edit it, pass it to `qpass opt`).

    `cle` equalizes the float weights first (equalize-cross-layer, also across ReLU6 within bounds
    measured on the calibration data, so the float function is exact on that data and close
    elsewhere); `adaround` learns each weight's rounding on the calibration data; `keep_int8` names
    layers (patterns, or "first" / "last") whose weights stay 8-bit when `bits` is 4.
    `exact_range` quantizes the weights that would take 8 bits to 7 (within [-64, 63], stored as int8),
    the range in which AVX2's vpmaddubsw computes u8 x s8 exactly at its full rate (the avx2-u8s7
    micro-kernel; 8-bit weights take the exact sign trick at about half that rate).
    """
    weight_bits = 4 if bits == 4 else 8
    kept = f",keep-int8=[{','.join(keep_int8)}]" if keep_int8 else ""
    exact = ",exact-range=true" if exact_range else ""
    steps = [CANONICALIZE] + (["equalize-cross-layer{relu6=calibrated}"] if cle else []) + [
        f"range-analysis{{method={method}}}", f"quantize{{weights={weights},weight-bits={weight_bits}{kept}{exact}}}"]
    if bits == "mixed":
        steps.append(f"assign-bitwidth{{budget={budget}}}")
    elif bits not in (4, 8):
        raise ValueError(f"bits must be 8, 4 or 'mixed', got {bits!r}")
    if adaround:
        steps.append("adaround")
    if bias_correction:
        steps.append("correct-bias")
    steps += ["fold-fake-quant", "fuse-requant", "eliminate-dead-code"]
    return ",".join(steps)


def quantize(graph: Graph, calibration: Samples, bits: Union[int, str] = 8, method: str = "percentile",
             weights: str = "per-channel", budget: float = 0.6, bias_correction: bool = True,
             pipeline: Optional[str] = None, ctx: Optional[PassContext] = None, quiet: bool = False,
             cle: bool = False, adaround: bool = False, keep_int8: Sequence[str] = (),
             exact_range: bool = False) -> Graph:
    """Quantize a float graph into integer IR using calibration data (no TVM involved).

    `bits`: 8 (int8 weights), 4 (int4 weights) or "mixed" (int4/int8 per layer under `budget`, the
    fraction of the int8 weight size to keep). `method`: the range observer. `bias_correction`: fold
    the mean output shift of weight rounding into the biases (correct-bias). `cle`, `adaround` and
    `keep_int8` and `exact_range` (7-bit weights, for AVX2's full-rate exact kernel): see
    `quantization_pipeline`. `pipeline` replaces the default pipeline (see
    `quantization_pipeline`). Returns a new graph; `graph` is unchanged.

    An already fake-quantized (QDQ) graph needs no calibration: its Q/DQ pairs fold into integer
    ops (`FOLD_QDQ`), and `calibration` may be None.
    """
    kind = model_kind(graph)
    if pipeline is None:
        if kind == "integer":
            raise QpassError(f"graph @{graph.name} is integer IR already (it holds integer ops); there is nothing "
                             "to quantize. Compile it as it is (qpass.compile(graph, target) or `qpass compile "
                             "FILE.qir`), or give pipeline= to run passes on it")
        if kind == "float" and calibration is None:
            raise QpassError(f"graph @{graph.name} is a float model: quantize needs calibration data (calibration "
                             f"is None); {NEEDS_CALIBRATION}. An already fake-quantized (QDQ) model "
                             "needs none")
        if exact_range and kind != "float":
            raise QpassError(f"graph @{graph.name} is a QDQ model: its weights are quantized by its Q/DQ pairs "
                             "already, so exact_range (7-bit weights) cannot apply; drop exact_range")
        pipeline = default_pipeline(kind, bits, method, budget, weights=weights, bias_correction=bias_correction,
                                    cle=cle, adaround=adaround, keep_int8=keep_int8, exact_range=exact_range)
    samples = load_calibration(calibration, graph) if calibration is not None else None
    ctx = ctx or PassContext(verify_each=True)
    if samples is not None:
        ctx.calibration = samples                      # the caller's data wins over what ctx held
    ctx.quiet = ctx.quiet or quiet
    with ctx:
        return run_passes(graph.copy(), pipeline, ctx)
