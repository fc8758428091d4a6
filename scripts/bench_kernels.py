"""How close qpass's int8 conv/dense kernels come to this CPU's int8 peak (issue 5).

What: every distinct qconv2d/qdense layer shape of MobileNetV2 and ResNet-18 (the models of
scripts/bench.py, quantized to int8 with the same calibration crops), compiled for each --mcpu
(x86-64-v3: qpass's AVX2 micro-kernel; cascadelake: AVX-512 VNNI, when this CPU has it). Each
layer's kernel is the PrimFunc the model runs, taken from qpass's own lowering and schedules
(targets.build: legalize, lower, schedule) and built alone; it is timed with TVM's
time_evaluator on the layer's real packed weights, bias and requantization constants and a random
input. Per shape: layers of that shape, MACs, best and median ms, GOP/s = 2 * MACs / best time and
the percentage of the int8 peak of the instruction set the kernel uses. All of a model's qpass
kernels (quantize, adds, means, ...) are timed the same way, and the whole model in the Relax VM,
to show where the time goes.

The peak: a tiny C program (compiled here with gcc, inline asm, OpenMP) runs each dot-product
instruction sequence with 10-12 independent accumulators, no loads, best of many short runs:

    avx2       vpmaddubsw + vpmaddwd + vpaddd (ymm): 32 MACs per group; two vector multiply ports
               (p0, p1) issue the two multiplies of one group per cycle: 64 OP/cycle.
    avx2-sign  qpass's exact s8 x s8 sequence, vpabsb + vpsignb + the above: four p0/p1 uops per
               32 MACs, 32 OP/cycle, half the avx2 peak. In the kernels one vpabsb serves the 4
               channel blocks of a tile (3.25 uops per 32 MACs), so they can pass it by ~20%.
               qpass's avx2-u8s7 kernel (u8 x 7-bit weights, --exact-range) runs the avx2 sequence
               itself, exactly, and is compared with that peak, as the sign-trick kernel is.
    avx2-s16   vpmaddwd + vpaddd (ymm) on operands widened to int16, for reference: 16 exact MACs
               per vpmaddwd; with its vpaddd, two uops on the three vector ALU ports: 48 OP/cycle.
    vnni512    vpdpbusd zmm: 64 MACs per instruction, two per cycle on parts with two 512-bit FMA
               ports (p0 + p5): 256 OP/cycle.
    vnni256    vpdpbusd ymm (EVEX), for reference: 128 OP/cycle.
    avxvnni    {vex} vpdpbusd ymm, AVX-VNNI (Alder Lake and later, Zen 5): 128 OP/cycle; the peak of
               qpass's avxvnni kernels (--mcpu alderlake).

A dependent chain of register adds (1 cycle each; reg-reg, since Golden Cove folds add-immediate
chains at rename) measures the clock the cores actually run at; /proc/cpuinfo's "cpu MHz" (lscpu
shows no MHz under KVM) is only the nominal TSC rate. For comparison, ../shared/TVM_NOTES.md
measured the avx2 sequence at 187 GOP/s per core on the AMD EPYC Zen3 machine (64 OP/cycle at
~2.9 GHz, no AVX-512); this script measures the CPU it runs on. GOP/s percentages
use the measured peak for the kernel's instruction set (avx2 for AVX2 kernels, vnni512 for VNNI
kernels) times the threads used. AMX (tdpbusd, 1024 MACs per cycle per core on CPUs that have
amx_int8) is listed when present but qpass does not use it.

Timings take the best of many repeats because other processes may share the 2 cores; medians are
reported beside them, and so is the share of the CPUs other processes used meanwhile. One thread
is the default: TVM pins its worker threads to cores, so with 2 threads one busy core slows every
parallel loop down to its pace, while a single unpinned thread runs on whichever core is free.

    python scripts/bench_kernels.py [--models mobilenet_v2 resnet18] [--mcpu x86-64-v3 cascadelake]
        [--threads 2] [--repeat 30] [--wait-quiet 600] [--exact-range] [--json kernels.json]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (model_path, photo_inputs: the same models and calibration as bench.py)

PEAK_SOURCE = r"""
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define R4(x) x x x x
#define R16(x) R4(x) R4(x) R4(x) R4(x)
#define MADD(acc) "vpmaddubsw %%ymm13, %%ymm12, %%ymm15\n vpmaddwd %%ymm14, %%ymm15, %%ymm15\n" \
                  "vpaddd %%ymm15, " acc ", " acc "\n"
#define SIGN(acc) "vpsignb %%ymm12, %%ymm13, %%ymm11\n vpabsb %%ymm12, %%ymm10\n" \
                  "vpmaddubsw %%ymm11, %%ymm10, %%ymm15\n vpmaddwd %%ymm14, %%ymm15, %%ymm15\n" \
                  "vpaddd %%ymm15, " acc ", " acc "\n"
#define MADD16(acc) "vpmaddwd %%ymm13, %%ymm12, %%ymm15\n vpaddd %%ymm15, " acc ", " acc "\n"
#define DOTZ(acc) "vpdpbusd %%zmm13, %%zmm12, " acc "\n"
#define DOTY(acc) "vpdpbusd %%ymm13, %%ymm12, " acc "\n"
#define DOTV(acc) "%{vex%} vpdpbusd %%ymm13, %%ymm12, " acc "\n"   /* %{ %}: literal braces in extended asm */
#define Y10(G) G("%%ymm0") G("%%ymm1") G("%%ymm2") G("%%ymm3") G("%%ymm4") G("%%ymm5") G("%%ymm6") \
               G("%%ymm7") G("%%ymm8") G("%%ymm9")
#define X12(G, r) G("%%" r "0") G("%%" r "1") G("%%" r "2") G("%%" r "3") G("%%" r "4") G("%%" r "5") \
                  G("%%" r "6") G("%%" r "7") G("%%" r "8") G("%%" r "9") G("%%" r "10") G("%%" r "11")

/* Each loop returns what one iteration counts: cycles (clock) or int8 multiply-accumulates. */
static double loop(const char *mode, long n) {
    long x = 1;
    if (!strcmp(mode, "clock")) {          /* dependent reg-reg adds: rename cannot fold them */
        for (long i = 0; i < n; i++) __asm__ volatile(R16("add %0, %0\n") : "+r"(x));
        return 16;
    }
    if (!strcmp(mode, "avx2")) {
        for (long i = 0; i < n; i++) __asm__ volatile(Y10(MADD) ::: "memory");
        return 10 * 32;
    }
    if (!strcmp(mode, "avx2-sign")) {
        for (long i = 0; i < n; i++) __asm__ volatile(Y10(SIGN) ::: "memory");
        return 10 * 32;
    }
    if (!strcmp(mode, "avx2-s16")) {
        for (long i = 0; i < n; i++) __asm__ volatile(Y10(MADD16) ::: "memory");
        return 10 * 16;
    }
    if (!strcmp(mode, "vnni512")) {
        for (long i = 0; i < n; i++) __asm__ volatile(X12(DOTZ, "zmm") ::: "memory");
        return 12 * 64;
    }
    if (!strcmp(mode, "avxvnni")) {         /* AVX-VNNI: the VEX encoding (Alder Lake, Zen 5) */
        for (long i = 0; i < n; i++) __asm__ volatile(X12(DOTV, "ymm") ::: "memory");
        return 12 * 32;
    }
    for (long i = 0; i < n; i++) __asm__ volatile(X12(DOTY, "ymm") ::: "memory");
    return 12 * 32;
}

/* peak MODE ITERATIONS REPEATS: best rate over REPEATS runs, summed over OMP_NUM_THREADS threads. */
int main(int argc, char **argv) {
    long n = atol(argv[2]);
    double best = 0;
    for (int rep = 0; rep < atoi(argv[3]); rep++) {
        double start = now(), per_iteration = 0;
        #pragma omp parallel reduction(max: per_iteration)
        per_iteration = loop(argv[1], n);
        double rate = per_iteration * n * omp_get_max_threads() / (now() - start);
        best = rate > best ? rate : best;
    }
    printf("%.6e\n", best);
    return 0;
}
"""

PEAK_LOOPS = {            # name: (what it runs, CPU flag it needs, OP per cycle per core in theory)
    "avx2": ("vpmaddubsw + vpmaddwd + vpaddd, ymm", "avx2", 64),
    "avx2-sign": ("vpabsb + vpsignb + vpmaddubsw + vpmaddwd + vpaddd, ymm (qpass's AVX2 sequence)", "avx2", 32),
    "avx2-s16": ("vpmaddwd + vpaddd, ymm, on int16-widened operands (exact, no sign trick)", "avx2", 48),
    "vnni512": ("vpdpbusd zmm", "avx512_vnni", 256),
    "vnni256": ("vpdpbusd ymm (EVEX)", "avx512_vnni", 128),
    "avxvnni": ("{vex} vpdpbusd ymm (AVX-VNNI)", "avx_vnni", 128),
}
# The sign-trick kernel is compared with the full-rate avx2 sequence too: the rate it gives up.
PEAK_OF_MICRO_KERNEL = {"avx2": "avx2", "avx2-u8s7": "avx2", "vnni": "vnni512", "avxvnni": "avxvnni"}
AMX_OP_PER_CYCLE = 2048   # tdpbusd: 16x16x64 MACs per 16 cycles


# --- the peak -----------------------------------------------------------------------------------


def cpu_description() -> dict:
    """Model name, flags and nominal clock from /proc/cpuinfo and lscpu."""
    info = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    return {"model": info.get("model name"), "nominal_mhz": float(info.get("cpu MHz", "nan")),
            "cpus": os.cpu_count(), "flags": set(info.get("flags", "").split()),
            "hypervisor": fields.get("Hypervisor vendor", "").strip() or None,
            "lscpu_max_mhz": fields.get("CPU max MHz", "").strip() or None}


def measure_peaks(cpu: dict, threads: int, workdir: Path) -> dict:
    """Clock (GHz) and, per instruction sequence, measured GOP/s per core and with `threads` threads.

    The peak the kernels are compared with is `threads` x the per-core figure: the threaded run
    only checks that the cores scale (another process on a core shows up there first).
    """
    source, binary = workdir / "peak.c", workdir / "peak"
    source.write_text(PEAK_SOURCE)
    subprocess.run(["gcc", "-O2", "-fopenmp", str(source), "-o", str(binary)], check=True)

    def rate(mode: str, count: int, attempts: int = 5) -> float:
        """Best of `attempts` runs of the binary (each already the best of 400 short loops)."""
        env = dict(os.environ, OMP_NUM_THREADS=str(count))
        command = [str(binary), mode, "20000", "400"]
        return max(float(subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout)
                   for _ in range(attempts))

    ghz = rate("clock", 1) / 1e9
    peaks = {"clock_ghz": ghz, "loops": {}}
    for name, (what, flag, per_cycle) in PEAK_LOOPS.items():
        if flag not in cpu["flags"]:
            continue
        peaks["loops"][name] = {"runs": what, "op_per_cycle_theory": per_cycle,
                                "theory_gops_per_core": per_cycle * ghz,
                                "nominal_gops_per_core": per_cycle * cpu["nominal_mhz"] / 1e3,
                                "gops_per_core": 2 * rate(name, 1) / 1e9,
                                "gops_threads_measured": 2 * rate(name, threads) / 1e9}
        peaks["loops"][name]["peak_gops"] = threads * peaks["loops"][name]["gops_per_core"]
    return peaks


def peak_table(cpu: dict, peaks: dict, threads: int) -> str:
    """The CPU, its clock and the peak of each instruction sequence, as a markdown table."""
    lines = [f"CPU: {cpu['model']} ({cpu['cpus']} CPUs, hypervisor {cpu['hypervisor']}), nominal "
             f"{cpu['nominal_mhz']:.0f} MHz (/proc/cpuinfo); measured clock {peaks['clock_ghz']:.2f} GHz "
             "(dependent register adds)", "",
             f"| sequence | OP/cycle/core (theory) | GOP/s/core at nominal | at measured clock | measured, 1 core "
             f"| measured, {threads} threads | peak used: {threads} x 1 core |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, p in peaks["loops"].items():
        lines.append(f"| {name}: {p['runs']} | {p['op_per_cycle_theory']} | {p['nominal_gops_per_core']:.0f} | "
                     f"{p['theory_gops_per_core']:.0f} | {p['gops_per_core']:.0f} | {p['gops_threads_measured']:.0f} | "
                     f"{p['peak_gops']:.0f} |")
    lines.append("| (Zen3 reference, ../shared/TVM_NOTES.md: avx2) | 64 | - | 187 at ~2.9 GHz | 187 | - | - |")
    if "amx_int8" in cpu["flags"]:
        lines.append(f"| amx: tdpbusd (not used by qpass; not measured) | {AMX_OP_PER_CYCLE} | "
                     f"{AMX_OP_PER_CYCLE * cpu['nominal_mhz'] / 1e3:.0f} | {AMX_OP_PER_CYCLE * peaks['clock_ghz']:.0f} "
                     "| - | - | - |")
    return "\n".join(lines)


# --- the kernels ----------------------------------------------------------------------------------


@dataclasses.dataclass
class KernelCall:
    """One qpass PrimFunc of a lowered model: how often main calls it and with which arguments."""

    name: str
    op: str
    plan: object                       # ConvPlan for qconv2d/qdense, else None
    calls: int
    arguments: list                    # relax argument expressions (constants keep their data)
    output: tuple                      # (shape, dtype)


def lowered_model(graph, spec):
    """qpass's own legalize, lower and schedule steps (targets.build), without the TVM build."""
    from qpass.targets import build
    from qpass.targets.lower import lower
    spec = spec.fitted(graph)          # as build does: the micro-kernel for this graph's weights
    lowered = lower(build.legalize(graph, spec), spec)
    module, _ = build.schedule(lowered, spec)
    return lowered, module


def kernel_calls(lowered, module) -> list[KernelCall]:
    """The qpass kernels that `main` calls, with call counts, from its call_tir bindings."""
    from tvm import relax
    found: dict[str, KernelCall] = {}
    kernels = {k.name: k for k in lowered.kernels}
    for block in module["main"].body.blocks:
        for binding in block.bindings:
            call = binding.value
            if not (isinstance(call, relax.Call) and getattr(call.op, "name", "") == "relax.call_tir"):
                continue
            name = call.args[0].name_hint
            if name not in kernels:
                continue
            if name not in found:
                out = binding.var.ty
                found[name] = KernelCall(name, kernels[name].op, kernels[name].plan, 0, list(call.args[1].fields),
                                         (tuple(int(d) for d in out.shape), str(out.dtype)))
            found[name].calls += 1
    return list(found.values())


def kernel_arguments(call: KernelCall, rng) -> list:
    """Device tensors for a kernel: its constants as the model has them, random activations."""
    import tvm
    args = []
    for expr in call.arguments:
        if isinstance(expr, tvm.ir.expr.Constant):
            args.append(expr.value)
            continue
        dtype = str(expr.ty.dtype)
        shape = tuple(int(d) for d in expr.ty.shape)
        data = rng.integers(-100, 100, shape) if "int" in dtype else rng.standard_normal(shape)
        args.append(tvm.runtime.tensor(np.asarray(data).astype(dtype)))
    shape, dtype = call.output
    return args + [tvm.runtime.empty(shape, dtype)]


def time_kernel(module, call: KernelCall, spec, repeat: int, rng) -> tuple[float, float]:
    """(best, median) ms of one kernel built alone; each repeat averages calls filling >= 2 ms."""
    import tvm
    func = module[call.name].with_attr("global_symbol", "main")
    library = tvm.compile(tvm.IRModule({"main": func}), target=spec.tvm_target()).jit()
    timer = library.time_evaluator("main", tvm.cpu(), number=1, repeat=repeat, min_repeat_ms=2)
    results = np.asarray(timer(*kernel_arguments(call, rng)).results) * 1e3
    return float(results.min()), float(np.median(results))


def time_model(module, spec, x: np.ndarray, repeat: int) -> tuple[float, float]:
    """(best, median) ms of the whole model in the Relax VM (qpass's relax pipeline)."""
    import tvm
    from tvm import relax
    from qpass.targets import build
    executable = tvm.compile(module, target=spec.tvm_target(), relax_pipeline=build.relax_pipeline(spec))
    main = relax.VirtualMachine(executable, tvm.cpu())["main"]
    arg = tvm.runtime.tensor(x)
    main(arg)
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        main(arg)
        samples.append((time.perf_counter() - start) * 1e3)
    return float(np.min(samples)), float(np.median(samples))


def macs(plan) -> int:
    """Multiply-accumulates of one conv/dense (unpadded channels)."""
    n, oh, ow, oc = plan.out_shape
    kh, kw = plan.kernel
    return n * oh * ow * oc * kh * kw * plan.in_shape[3] // plan.groups


def shape_label(call: KernelCall) -> str:
    """NHWC in -> out, kernel/stride, "dw" for depthwise: the key distinct shapes are grouped by."""
    plan = call.plan
    if call.op == "qdense":
        return f"dense {plan.in_shape[3]}->{plan.out_shape[3]}"
    n, h, w, c = plan.in_shape
    _, oh, ow, oc = plan.out_shape
    (kh, kw), (sh, sw) = plan.kernel, plan.strides
    stride = str(sh) if sh == sw else f"{sh}x{sw}"
    groups = "" if plan.groups == 1 else (" dw" if plan.kind == "depthwise" else f" g{plan.groups}")
    return f"{h}x{w}x{c}->{oh}x{ow}x{oc} {kh}x{kw}/{stride}{groups}"


def quantized_model(model: str, args, workdir: Path):
    """The int8 integer IR of `model` (calibrated as in bench.py) and the timing input."""
    import qpass
    calib, x = bench.photo_inputs(args.calib, args.seed)
    path = bench.model_path(model, workdir)
    name = bench.input_name(path)
    return qpass.quantize(qpass.import_onnx(path), [{name: c} for c in calib], bits=8, quiet=True,
                          exact_range=args.exact_range), x


def bench_kernels(model: str, graph, x, mcpu: str, args, peaks: dict) -> dict:
    """Time every distinct conv/dense shape and every other qpass kernel of `graph` for `mcpu`."""
    from qpass.targets.registry import resolve_target
    spec = resolve_target("x86_64-linux-gnu", mcpu=mcpu).fitted(graph)
    lowered, module = lowered_model(graph, spec)
    rng = np.random.default_rng(args.seed)
    if args.wait_quiet:
        bench.wait_for_quiet(args.wait_quiet)
    before = bench.cpu_snapshot()
    shapes: dict[str, dict] = {}
    other_ms = collections.Counter()
    for call in kernel_calls(lowered, module):
        if call.plan is None:
            best, _ = time_kernel(module, call, spec, args.repeat, rng)
            other_ms[call.op] += best * call.calls
            continue
        label = shape_label(call)
        if label in shapes:
            shapes[label]["layers"] += call.calls
            continue
        best, median = time_kernel(module, call, spec, args.repeat, rng)
        micro = call.plan.micro_kernel or spec.micro_kernel
        peak = peaks["loops"][PEAK_OF_MICRO_KERNEL[micro]]["peak_gops"]
        gops = 2 * macs(call.plan) / best / 1e6
        shapes[label] = {"shape": label, "op": call.op, "schedule": call.plan.micro_kernel or call.plan.kind,
                         "layers": call.calls, "macs": macs(call.plan), "best_ms": best, "median_ms": median,
                         "gops": gops, "peak_gops": peak, "percent_of_peak": 100 * gops / peak}
    model_best, model_median = time_model(module, spec, x, args.repeat)
    return {"model": model, "mcpu": mcpu, "micro_kernel": spec.micro_kernel, "shapes": list(shapes.values()),
            "other_kernels_ms": dict(other_ms), "model_best_ms": model_best, "model_median_ms": model_median,
            "contention": bench.contention(before, bench.cpu_snapshot())}


def kernel_table(result: dict, threads: int) -> str:
    """One model's shapes, the most time-consuming (time x layers) first, and where the time goes."""
    rows = sorted(result["shapes"], key=lambda r: -r["best_ms"] * r["layers"])
    lines = [f"### {result['model']}, --mcpu {result['mcpu']} ({result['micro_kernel']}), {threads} threads", "",
             "| layer shape (HxWxC, kernel/stride) | schedule | layers | MACs | ms best | ms median | GOP/s "
             "| % of peak | ms x layers |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['schedule']} | {r['layers']} | {r['macs'] / 1e6:.1f}M | {r['best_ms']:.3f} "
                     f"| {r['median_ms']:.3f} | {r['gops']:.1f} | {r['percent_of_peak']:.1f}% | "
                     f"{r['best_ms'] * r['layers']:.2f} |")
    lines.append("")
    lines += [f"- {line}" for line in time_summary(result)]
    return "\n".join(lines)


def time_summary(result: dict) -> list[str]:
    """Where a model's time goes: per schedule kind, other kernels, and the rest of the VM run."""
    per_kind = collections.Counter()
    for r in result["shapes"]:
        per_kind[r["schedule"] if r["op"] == "qconv2d" else "dense"] += r["best_ms"] * r["layers"]
    per_kind.update({f"{op} (other qpass kernels)": ms for op, ms in result["other_kernels_ms"].items()})
    total = sum(per_kind.values())
    gemm = [r for r in result["shapes"] if r["schedule"] in PEAK_OF_MICRO_KERNEL]
    best = max(gemm, key=lambda r: r["percent_of_peak"]) if gemm else None
    busy = result["contention"]
    lines = [f"while timing, other processes used {busy['other_processes_cpu_fraction']:.0%} of the CPUs "
             f"(steal {busy['steal_fraction']:.0%})",
             f"whole model in the VM: best {result['model_best_ms']:.2f} ms, median {result['model_median_ms']:.2f} ms;"
             f" kernels timed alone sum to {total:.2f} ms: "
             + ", ".join(f"{k} {v:.2f} ms ({100 * v / total:.0f}%)" for k, v in per_kind.most_common())]
    if best:
        lines.append(f"best GEMM kernel: {best['shape']} at {best['gops']:.0f} GOP/s, {best['percent_of_peak']:.1f}% "
                     f"of the {best['peak_gops']:.0f} GOP/s peak")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=bench.MODELS, default=list(bench.MODELS))
    parser.add_argument("--mcpu", nargs="+", help="default: x86-64-v3, and cascadelake where the CPU has VNNI")
    parser.add_argument("--threads", type=int, default=1,
                        help="TVM threads for the kernels (1: robust on a shared machine; the models run with 2)")
    parser.add_argument("--repeat", type=int, default=30, help="timing repeats per kernel (best and median kept)")
    parser.add_argument("--calib", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="before timing each model, wait up to this long for the other processes to go quiet")
    parser.add_argument("--exact-range", action="store_true",
                        help="7-bit weights (quantize{exact-range=true}): AVX2 takes its full-rate avx2-u8s7 kernel")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)            # before tvm is first imported
    cpu = cpu_description()
    args.mcpu = args.mcpu or (["x86-64-v3"] + (["alderlake"] if "avx_vnni" in cpu["flags"] else [])
                              + (["cascadelake"] if "avx512_vnni" in cpu["flags"] else []))
    with tempfile.TemporaryDirectory(prefix="qpass-kernels-") as tmp:
        peaks = measure_peaks(cpu, args.threads, Path(tmp))
        print(peak_table(cpu, peaks, args.threads) + "\n", flush=True)
        results = []
        for model in args.models:
            graph, x = quantized_model(model, args, Path(tmp))
            for mcpu in args.mcpu:
                results.append(bench_kernels(model, graph, x, mcpu, args, peaks))
                print(kernel_table(results[-1], args.threads) + "\n", flush=True)
    if args.json:
        cpu["flags"] = sorted(f for f in cpu["flags"] if "avx" in f or "amx" in f or f == "fma")
        args.json.write_text(json.dumps({"cpu": cpu, "threads": args.threads, "peaks": peaks, "results": results},
                                        indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
