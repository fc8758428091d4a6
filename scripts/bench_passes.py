"""Compile-time cost of qpass's passes: int8 `qpass.quantize` of MobileNetV2, seconds per pass.

What: import ../shared/models/mobilenet_v2.onnx, then quantize it to int8 `--reps` times with
seeded random float32 calibration inputs of shape (1, 3, 224, 224) (the point is pass time, not
accuracy). Each run uses quantize's default context (VerifyEach on) plus a Timing instrument.
Reported: for every pass, its median seconds over the runs; the median total (wall clock of the
whole quantize call, instruments included) and the fastest one. On a shared machine, run the old
and the new code alternately and compare the fastest totals.

It runs on both qpass layouts, so that the same script measures an old install against the
working tree:

    python scripts/bench_passes.py [--reps 3] [--calib 8] [--model PATH]
    cd /tmp && PYTHONPATH=/tmp/base_site python /work/main/scripts/bench_passes.py
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import time

import numpy as np

import qpass
from qpass import PassContext

# The old layout first: an editable install of the new tree can make `qpass.passmgr` importable
# even when `qpass` itself resolves to an old install on PYTHONPATH.
try:
    from qpass.instruments import Timing
except ImportError:
    from qpass.passmgr.instruments import Timing

DEFAULT_MODEL = pathlib.Path(__file__).resolve().parents[2] / "shared" / "models" / "mobilenet_v2.onnx"
MAX_REPS = 20


def calibration_samples(graph, count: int) -> list[dict]:
    """`count` seeded random samples for the graph's single image input."""
    rng = np.random.default_rng(0)
    (x,) = graph.inputs
    return [{x.name: rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(count)]


def quantize_once(graph, samples) -> tuple[float, list]:
    """Wall seconds of one int8 quantize and the Timing records (pass, seconds, changed)."""
    timing = Timing()
    ctx = PassContext([timing], verify_each=True)      # what quantize does without a ctx, plus timing
    start = time.perf_counter()
    qpass.quantize(graph, samples, bits=8, ctx=ctx, quiet=True)
    return time.perf_counter() - start, timing.records


def per_pass_medians(runs: list[list]) -> list[tuple[str, float]]:
    """Median seconds of each pipeline step, in pipeline order (every run has the same steps)."""
    steps = zip(*runs)
    return [(step[0][0], statistics.median(r[1] for r in step)) for step in steps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help=f"quantize runs, 1 to {MAX_REPS}")
    parser.add_argument("--calib", type=int, default=8, help="calibration samples")
    parser.add_argument("--model", type=pathlib.Path, default=DEFAULT_MODEL)
    args = parser.parse_args()
    reps = max(1, min(args.reps, MAX_REPS))
    graph = qpass.import_onnx(str(args.model))
    samples = calibration_samples(graph, args.calib)
    totals, runs = [], []
    for _ in range(reps):
        total, records = quantize_once(graph, samples)
        totals.append(total)
        runs.append(records)
    print(f"qpass from {pathlib.Path(qpass.__file__).parent}, {reps} run(s) of int8 quantize")
    medians = per_pass_medians(runs)
    width = max(len(name) for name, _ in medians)
    for name, seconds in medians:
        print(f"{name:<{width}}  {seconds:8.3f} s")
    print(f"{'total (median)':<{width}}  {statistics.median(totals):8.3f} s   (fastest {min(totals):.3f} s)")


if __name__ == "__main__":
    main()
