"""The Python API's high-level entry points (the CLI uses the same)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

from qpass.ir.graph import Graph
from qpass.passmgr.manager import PassContext, run_passes
from qpass.quant.calibration import Samples, load_calibration

CANONICALIZE = "fold-constants,fold-batchnorm,eliminate-identity,eliminate-dead-code"


def quantization_pipeline(bits: Union[int, str] = 8, method: str = "percentile", weights: str = "per-channel",
                          budget: float = 0.6, bias_correction: bool = True, cle: bool = False,
                          adaround: bool = False, keep_int8: Sequence[str] = ()) -> str:
    """The pipeline `quantize()` runs, as a string (print it, edit it, pass it to `qpass opt`).

    `cle` equalizes the float weights first (equalize-cross-layer, also across ReLU6 within bounds
    measured on the calibration data, so the float function is exact on that data and close
    elsewhere); `adaround` learns each weight's rounding on the calibration data; `keep_int8` names
    layers (patterns, or "first" / "last") whose weights stay 8-bit when `bits` is 4.
    """
    weight_bits = 4 if bits == 4 else 8
    kept = f",keep-int8=[{','.join(keep_int8)}]" if keep_int8 else ""
    steps = [CANONICALIZE] + (["equalize-cross-layer{relu6=calibrated}"] if cle else []) + [
        f"range-analysis{{method={method}}}", f"quantize{{weights={weights},weight-bits={weight_bits}{kept}}}"]
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
             cle: bool = False, adaround: bool = False, keep_int8: Sequence[str] = ()) -> Graph:
    """Quantize a float graph into integer IR using calibration data (no TVM involved).

    `bits`: 8 (int8 weights), 4 (int4 weights) or "mixed" (int4/int8 per layer under `budget`, the
    fraction of the int8 weight size to keep). `method`: the range observer. `bias_correction`: fold
    the mean output shift of weight rounding into the biases (correct-bias). `cle`, `adaround` and
    `keep_int8`: see `quantization_pipeline`. `pipeline` replaces the default pipeline (see
    `quantization_pipeline`). Returns a new graph; `graph` is unchanged.
    """
    samples = load_calibration(calibration, graph)
    ctx = ctx or PassContext(verify_each=True)
    ctx.calibration = samples                          # the caller's data wins over what ctx held
    ctx.quiet = ctx.quiet or quiet
    with ctx:
        return run_passes(graph.copy(),
                          pipeline or quantization_pipeline(bits, method, weights, budget, bias_correction,
                                                            cle, adaround, keep_int8), ctx)
