"""Latency of qpass's int8 and mixed int4/int8 code against ONNX Runtime and TVM (issue 5).

What: for each model (MobileNetV2 from ../shared/models; a ResNet-18 defined here in plain torch.nn
with seeded random weights, exported to ONNX opset 17), batch 1, 2 threads, in one process:

    ort-fp32      onnxruntime, intra_op_num_threads=2
    ort-int8      onnxruntime.quantization.quantize_static (QDQ, per-channel s8 weights, after
                  quant_pre_process); u8 and s8 activations are both built and the faster kept
    tvm-fp32      tvm.relax.frontend.onnx.from_onnx -> tvm.compile (llvm, x86-64-v3), TVM's default
                  pipeline with no schedules
    qpass-int8    qpass.compile(bits=8) for each --mcpu (x86-64-v3, qpass's default: AVX2;
                  cascadelake: AVX-512 VNNI; engines after the first are named qpass-int8@MCPU)
    qpass-exact   qpass.compile with the int8 pipeline's exact range (quantization_pipeline(8,
                  exact_range=True): 7-bit weights), which AVX2 runs with its full-rate exact
                  kernel (avx2-u8s7); named like qpass-int8 per --mcpu
    qpass-mixed   qpass.compile(bits="mixed"), int4/int8 weights

How: ORT and qpass calibrate on the same seeded random crops of ../shared/data/photos; the timing
input is the center crop of one photo. After a warm-up, every iteration visits each engine once,
round-robin, so that background load (other processes on the 2 cores) hits all engines alike. A
visit waits 0.2 s for the previous engine's thread pool to stop spinning, makes 2 untimed runs and
then the timed one (see time_interleaved: without this, back-to-back engines in one process slow
each other down 2-8x and the comparison measures the interference, not the engines).
Reported per engine: median and p10/p90 of the per-run times in ms, compile time (import +
quantization/passes + build, wall clock) and the top-1 class on the timing input next to ORT
fp32's. Speedups are ratios of medians. The share of the CPUs that other processes used while
timing (and while each engine compiled) is measured from /proc/stat and printed: on a shared
2-core machine it decides whether a median means anything; --wait-quiet waits for a quiet
moment before timing. The ResNet-18 export runs in a child process so that torch's thread pools
never live in the timed process.

    TVM_NUM_THREADS is set to 2 here, before tvm is imported.
    python scripts/bench.py [--runs 30] [--models mobilenet_v2 resnet18] [--mcpu x86-64-v3 cascadelake]
        [--engines ...] [--calib 8] [--wait-quiet 600] [--json bench.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

THREADS = 2
os.environ["TVM_NUM_THREADS"] = str(THREADS)

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
PHOTOS = SHARED / "data" / "photos"
TIMING_PHOTO = "chelsea.png"
MODELS = ("mobilenet_v2", "resnet18")
ENGINES = ("ort-fp32", "ort-int8", "tvm-fp32", "qpass-int8", "qpass-exact", "qpass-mixed")
TVM_FP32_TARGET = {"kind": "llvm", "mcpu": "x86-64-v3"}
SETTLE_SECONDS = 0.2
REWARM_RUNS = 2


@dataclasses.dataclass
class Engine:
    """One way of running a model: `run` does one inference on the timing input."""

    name: str
    run: Callable[[], object]
    logits: Callable[[], np.ndarray]
    compile_seconds: float
    details: dict = dataclasses.field(default_factory=dict)
    keep_alive: object = None            # what `run` needs to outlive the builder (a temporary directory)


# --- models and inputs ------------------------------------------------------------------------------


def export_resnet18(path: str, seed: int = 0) -> None:
    """ResNet-18 (torchvision's layout) with seeded random weights, to ONNX opset 17.

    Batch-norm statistics come from one training-mode pass over 16 photo crops, so activations
    have realistic ranges; the exported eval-mode graph folds them into the convolutions.
    """
    import torch
    from torch import nn
    from qpass.frontend.images import load_images, random_crops

    class BasicBlock(nn.Module):
        def __init__(self, inputs: int, outputs: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(outputs, momentum=None)
            self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(outputs, momentum=None)
            self.downsample = None
            if stride != 1 or inputs != outputs:
                self.downsample = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False),
                                                nn.BatchNorm2d(outputs, momentum=None))

        def forward(self, x):
            y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

    torch.manual_seed(seed)
    widths = [(64, 64, 1), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1),
              (256, 512, 2), (512, 512, 1)]
    model = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64, momentum=None), nn.ReLU(),
                          nn.MaxPool2d(3, 2, 1), *[BasicBlock(*w) for w in widths],
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000))
    crops = np.concatenate(random_crops(load_images(PHOTOS), 16, seed=seed + 100))
    with torch.no_grad():
        model.train()(torch.from_numpy(crops))
        model.eval()
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(model, torch.zeros(1, 3, 224, 224), path, opset_version=17, dynamo=False,
                          input_names=["input"], output_names=["logits"])


def model_path(name: str, workdir: Path) -> Path:
    """The ONNX file of `name`; ResNet-18 is exported into `workdir` by a child process."""
    if name == "mobilenet_v2":
        return SHARED / "models" / "mobilenet_v2.onnx"
    path = workdir / "resnet18.onnx"
    child = multiprocessing.get_context("spawn").Process(target=export_resnet18, args=(str(path),))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"exporting ResNet-18 failed (exit code {child.exitcode})")
    return path


def input_name(path: Path) -> str:
    """The name of the model's (single) input."""
    import onnx
    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def photo_inputs(calib: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Seeded random crops for calibration, and the center crop of TIMING_PHOTO for timing."""
    from PIL import Image
    from qpass.frontend.images import center_crop, load_images, random_crops
    crops = random_crops(load_images(PHOTOS), calib, seed=seed)
    return crops, center_crop(Image.open(PHOTOS / TIMING_PHOTO).convert("RGB"))


# --- engines ----------------------------------------------------------------------------------------


def _ort_session(path: Path):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ort_engine(name: str, session, x: np.ndarray, seconds: float, details: dict) -> Engine:
    feed = {session.get_inputs()[0].name: x}
    return Engine(name, lambda: session.run(None, feed), lambda: session.run(None, feed)[0], seconds, details)


def ort_fp32(path: Path, calib, x) -> Engine:
    """The float model in onnxruntime."""
    start = time.perf_counter()
    session = _ort_session(path)
    return _ort_engine("ort-fp32", session, x, time.perf_counter() - start, {})


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of input arrays."""

    def __init__(self, name: str, arrays):
        self.items = iter([{name: a} for a in arrays])

    def get_next(self):
        return next(self.items, None)


def _ort_quantized(prepared: Path, name: str, calib, activation: str):
    """A session of the QDQ model quantize_static makes with `activation` (QUInt8 or QInt8), and
    the seconds that took."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    start = time.perf_counter()
    out = prepared.with_suffix(f".{activation}.onnx")
    quantize_static(str(prepared), str(out), _Reader(name, calib), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=getattr(QuantType, activation), weight_type=QuantType.QInt8)
    return _ort_session(out), time.perf_counter() - start


def ort_int8(path: Path, calib, x, workdir: Path, trial_runs: int = 20) -> Engine:
    """Both activation types, timed against each other (interleaved); the faster one is kept.
    Its compile time is quant_pre_process + quantize_static + session creation."""
    from onnxruntime.quantization import quant_pre_process
    start = time.perf_counter()
    prepared = workdir / f"{path.stem}.pre.onnx"
    quant_pre_process(str(path), str(prepared))
    prepare_seconds = time.perf_counter() - start
    candidates = {a: _ort_quantized(prepared, input_name(path), calib, a) for a in ("QUInt8", "QInt8")}
    engines = [_ort_engine(a, s, x, t, {}) for a, (s, t) in candidates.items()]
    medians = {name: float(np.median(ms)) for name, ms in time_interleaved(engines, trial_runs, 3).items()}
    best = min(medians, key=medians.get)
    session, seconds = candidates[best]
    return _ort_engine("ort-int8", session, x, prepare_seconds + seconds,
                       {"activations": best, "trial_median_ms": {k: round(v, 3) for k, v in medians.items()}})


def tvm_fp32(path: Path, calib, x) -> Engine:
    """The float model through TVM's ONNX frontend and default build pipeline."""
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx
    start = time.perf_counter()
    executable = tvm.compile(from_onnx(onnx.load(str(path))), target=tvm.target.Target(TVM_FP32_TARGET))
    main = relax.VirtualMachine(executable, tvm.cpu())["main"]
    seconds = time.perf_counter() - start
    arg = tvm.runtime.tensor(x)
    return Engine("tvm-fp32", lambda: main(arg), lambda: main(arg).numpy(), seconds, {})


def qpass_engine(path: Path, calib, x, bits, mcpu: str, name: str, exact_range: bool = False) -> Engine:
    """qpass.compile for x86_64-linux-gnu --mcpu `mcpu`, run through the artifact's VM function."""
    import qpass
    import tvm
    from qpass.api import quantization_pipeline
    start = time.perf_counter()
    name_of_input = input_name(path)
    pipeline = quantization_pipeline(bits, exact_range=True) if exact_range else None
    compiled = qpass.compile(path, "x86_64-linux-gnu", calibration=[{name_of_input: c} for c in calib], bits=bits,
                             mcpu=mcpu, pipeline=pipeline)
    seconds = time.perf_counter() - start
    main, device = compiled.artifact().vm_function()
    arg = tvm.runtime.tensor(x, device)
    report = compiled.report
    slowest = sorted(report["passes"], key=lambda p: -p["ms"])[:3]
    details = {"mcpu": mcpu, "compile_seconds": report["compile_seconds"], "warnings": report["warnings"],
               "slowest_passes": {p["pass"]: round(p["ms"] / 1e3, 2) for p in slowest},
               "weight_bytes": report["size"]["weight_bytes"],
               "schedules": sorted({k["schedule"] for k in report["kernels"] if k["op"] in ("qconv2d", "qdense")})}
    return Engine(name, lambda: main(arg), lambda: main(arg)[0].numpy(), seconds, details, keep_alive=compiled)


def engine_builders(names, mcpus, path: Path, calib, x, workdir: Path):
    """(name, function building the engine) for each engine, in timing order."""
    for name in names:
        if name == "ort-fp32":
            yield name, functools.partial(ort_fp32, path, calib, x)
        elif name == "ort-int8":
            yield name, functools.partial(ort_int8, path, calib, x, workdir)
        elif name == "tvm-fp32":
            yield name, functools.partial(tvm_fp32, path, calib, x)
        else:
            bits = "mixed" if name == "qpass-mixed" else 8
            for k, mcpu in enumerate(mcpus):
                label = name if k == 0 else f"{name}@{mcpu}"
                yield label, functools.partial(qpass_engine, path, calib, x, bits, mcpu, label,
                                               exact_range=name == "qpass-exact")


def build_engines(path: Path, names, mcpus, calib, x, workdir: Path) -> list[Engine]:
    """Build each engine, recording how much of the CPUs other processes took meanwhile."""
    engines = []
    for name, make in engine_builders(names, mcpus, path, calib, x, workdir):
        print(f"  building {name} ...", flush=True)
        before = cpu_snapshot()
        engine = make()
        engine.details["compile_others_cpu"] = contention(before, cpu_snapshot())["other_processes_cpu_fraction"]
        engines.append(engine)
    return engines


# --- measurement ------------------------------------------------------------------------------------


def cpu_snapshot() -> tuple[float, float, float, float]:
    """(wall s, busy CPU s of the whole machine, steal s, CPU s of this process) from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle, steal = fields[3] + fields[4], fields[7]
    own = os.times()                     # this process's threads and the children it waited for (compilers)
    mine = own.user + own.system + own.children_user + own.children_system
    return time.perf_counter(), (sum(fields[:8]) - idle - steal) / tick, steal / tick, mine


def contention(before, after) -> dict:
    """How much of the machine other processes (and the hypervisor, as steal) took while timing."""
    wall = (after[0] - before[0]) * (os.cpu_count() or 1)
    others = (after[1] - before[1]) - (after[3] - before[3])
    return {"other_processes_cpu_fraction": round(max(others, 0.0) / wall, 3),
            "steal_fraction": round((after[2] - before[2]) / wall, 3)}


def wait_for_quiet(limit: float, window: float = 2.0, threshold: float = 0.1) -> float:
    """Wait up to `limit` seconds for a `window` in which other processes use < `threshold` of the
    CPUs; returns the share they used in the last window."""
    deadline = time.perf_counter() + limit
    while True:
        before = cpu_snapshot()
        time.sleep(window)
        busy = contention(before, cpu_snapshot())["other_processes_cpu_fraction"]
        if busy < threshold or time.perf_counter() >= deadline:
            return busy


def time_interleaved(engines: list[Engine], runs: int, warmup: int, settle: float = SETTLE_SECONDS,
                     rewarm: int = REWARM_RUNS) -> dict[str, list[float]]:
    """ms per run for each engine; each iteration visits every engine once, in a fixed order.

    A visit first waits `settle` seconds, so that the thread pools of the engine visited before
    stop spinning (TVM's worker spins ~70 ms after a run, ORT's for several ms: timed right after
    another engine, a run competes with those spinning threads for the 2 cores and takes 2-8x
    longer), then makes `rewarm` untimed runs to wake its own pool and caches, then the timed run.
    """
    for _ in range(warmup):
        for engine in engines:
            engine.run()
    samples = {e.name: [] for e in engines}
    for _ in range(runs):
        for engine in engines:
            time.sleep(settle)
            for _ in range(rewarm):
                engine.run()
            start = time.perf_counter()
            engine.run()
            samples[engine.name].append((time.perf_counter() - start) * 1e3)
    return samples


def summarize(engines: list[Engine], samples: dict, reference: str = "ort-fp32") -> dict:
    """Per-engine figures, and the speedups of each qpass engine (ratios of medians)."""
    top1 = {e.name: int(np.argmax(e.logits())) for e in engines}
    rows = {}
    for e in engines:
        ms = np.asarray(samples[e.name])
        rows[e.name] = {"median_ms": float(np.median(ms)), "p10_ms": float(np.percentile(ms, 10)),
                        "p90_ms": float(np.percentile(ms, 90)), "runs": len(ms),
                        "compile_s": round(e.compile_seconds, 2), "top1": top1[e.name],
                        "top1_agrees_with_ort_fp32": top1[e.name] == top1.get(reference), **e.details}
    speedups = {}
    for name in rows:
        if name.startswith(("qpass-int8", "qpass-mixed")):
            speedups[name] = {f"vs {base}": rows[base]["median_ms"] / rows[name]["median_ms"]
                              for base in ("ort-int8", "ort-fp32", "tvm-fp32") if base in rows}
    return {"engines": rows, "speedups": speedups}


def markdown(model: str, result: dict) -> str:
    """The table and notes printed for one model."""
    lines = [f"### {model} (batch 1, {THREADS} threads, {result['runs']} interleaved runs)", "",
             "| engine | median ms | p10 ms | p90 ms | compile s (others' CPU meanwhile) | top-1 | = ORT fp32 top-1 |",
             "|---|---:|---:|---:|---:|---:|:---:|"]
    for name, r in result["engines"].items():
        agrees = "yes" if r["top1_agrees_with_ort_fp32"] else "NO"
        lines.append(f"| {name} | {r['median_ms']:.2f} | {r['p10_ms']:.2f} | {r['p90_ms']:.2f} | "
                     f"{r['compile_s']:.1f} ({r['compile_others_cpu']:.0%}) | {r['top1']} | {agrees} |")
    busy = result["contention"]
    lines += ["", f"- while timing, other processes used {busy['other_processes_cpu_fraction']:.0%} of the "
              f"{os.cpu_count()} CPUs (steal {busy['steal_fraction']:.0%}): medians are noisy when this is high"]
    for name, ratios in result["speedups"].items():
        lines.append(f"- {name} speedup: " + ", ".join(f"{v:.2f}x {k}" for k, v in ratios.items()))
    ort = result["engines"].get("ort-int8")
    if ort:
        trials = ", ".join(f"{k} {v:.2f} ms" for k, v in ort["trial_median_ms"].items())
        lines.append(f"- ort-int8 uses {ort['activations']} activations (trial medians: {trials})")
    for name, r in result["engines"].items():
        if "compile_seconds" in r:
            lines.append(f"- {name}: schedules {', '.join(r['schedules'])}; compile seconds {r['compile_seconds']}, "
                         f"slowest passes (s) {r['slowest_passes']}"
                         + (f"; warnings: {len(r['warnings'])}" if r["warnings"] else ""))
    return "\n".join(lines)


def machine() -> dict:
    """What the results were measured on."""
    name = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                platform.processor())
    return {"cpu": name, "cpus": os.cpu_count(), "threads": THREADS, "python": platform.python_version()}


def bench_model(model: str, args, workdir: Path) -> dict:
    """Build every engine for `model`, time them interleaved, summarize."""
    path = model_path(model, workdir)
    calib, x = photo_inputs(args.calib, args.seed)
    engines = build_engines(path, args.engines, args.mcpu, calib, x, workdir)
    if args.wait_quiet:
        print(f"  other processes used {wait_for_quiet(args.wait_quiet):.0%} of the CPUs before timing", flush=True)
    before = cpu_snapshot()
    samples = time_interleaved(engines, args.runs, args.warmup)
    result = summarize(engines, samples)
    result.update(runs=args.runs, warmup=args.warmup, calibration_crops=args.calib,
                  contention=contention(before, cpu_snapshot()))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--mcpu", nargs="+", default=["x86-64-v3"],
                        help="qpass targets; the first is 'qpass-int8', the others 'qpass-int8@MCPU'")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per engine (at least 30)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--calib", type=int, default=8, help="calibration crops (ORT and qpass alike)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="before timing, wait up to this long for the other processes to go quiet")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.runs < 30:
        parser.error("--runs must be at least 30")
    results = {"machine": machine(), "models": {}}
    print(f"{results['machine']['cpu']}, {THREADS} threads", flush=True)
    with tempfile.TemporaryDirectory(prefix="qpass-bench-") as tmp:
        for model in args.models:
            print(f"{model}:", flush=True)
            results["models"][model] = bench_model(model, args, Path(tmp))
            print(markdown(model, results["models"][model]) + "\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
