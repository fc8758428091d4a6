"""The Python API's high-level entry points (the CLI uses the same)."""

from __future__ import annotations

from typing import Optional, Union

from qpass.ir.graph import Graph
from qpass.pass_manager import PassContext, run_passes
from qpass.quant.calibration import Samples, load_calibration

CANONICALIZE = "fold-constants,fold-batchnorm,eliminate-identity,eliminate-dead-code"


def quantization_pipeline(bits: Union[int, str] = 8, method: str = "percentile", weights: str = "per-channel",
                          budget: float = 0.6, bias_correction: bool = True) -> str:
    """The pipeline `quantize()` runs, as a string (print it, edit it, pass it to `qpass opt`)."""
    weight_bits = 4 if bits == 4 else 8
    steps = [CANONICALIZE, f"range-analysis{{method={method}}}",
             f"quantize{{weights={weights},weight-bits={weight_bits}}}"]
    if bits == "mixed":
        steps.append(f"assign-bitwidth{{budget={budget}}}")
    elif bits not in (4, 8):
        raise ValueError(f"bits must be 8, 4 or 'mixed', got {bits!r}")
    if bias_correction:
        steps.append("correct-bias")
    steps += ["fold-fake-quant", "fuse-requant", "eliminate-dead-code"]
    return ",".join(steps)


def quantize(graph: Graph, calibration: Samples, bits: Union[int, str] = 8, method: str = "percentile",
             weights: str = "per-channel", budget: float = 0.6, bias_correction: bool = True,
             pipeline: Optional[str] = None, ctx: Optional[PassContext] = None, quiet: bool = False) -> Graph:
    """Quantize a float graph into integer IR using calibration data (no TVM involved).

    `bits`: 8 (int8 weights), 4 (int4 weights) or "mixed" (int4/int8 per layer under `budget`, the
    fraction of the int8 weight size to keep). `method`: the range observer. `bias_correction`: fold
    the mean output shift of weight rounding into the biases (correct-bias). `pipeline` replaces
    the default pipeline (see `quantization_pipeline`). Returns a new graph; `graph` is unchanged.
    """
    samples = load_calibration(calibration, graph)
    ctx = ctx or PassContext(verify_each=True)
    ctx.options.setdefault("calibration", samples)
    ctx.options.setdefault("quiet", quiet)
    with ctx:
        return run_passes(graph.copy(),
                          pipeline or quantization_pipeline(bits, method, weights, budget, bias_correction), ctx)
