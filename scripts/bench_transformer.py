"""Latency and accuracy of qpass W8A8 on a BERT-shaped encoder against ONNX Runtime (issue 14).

What: a transformers BertModel (6 layers, hidden 384, 12 heads, intermediate 1536; seeded random
weights, biases and LayerNorm parameters with seeded noise) exported to ONNX opset 17 with fixed
shapes (batch 1, seq 128, input token ids, output the last hidden state), in one process, 2 threads:

    ort-fp32     onnxruntime on the exported model
    ort-int8     onnxruntime.quantization.quantize_dynamic (s8 weights, u8 dynamic activations:
                 ORT's usual path for transformers)
    qpass-int8   qpass.quantize (W8A8: per-channel s8 weights, static per-tensor activations,
                 calibrated on --calib random token sequences) -> qpass.compile for x86_64-linux-gnu
                 --mcpu native (the best micro-kernel this CPU has)

How: timing as scripts/bench.py (time_interleaved: round-robin visits, a settle pause and two
untimed runs before each timed one), medians and p10/p90, ratios of medians; the share of the
CPUs other processes used while timing is measured from /proc/stat and printed. Accuracy: SQNR of
each int8 engine's output against ORT fp32 on --eval held-out random token sequences (other seeds
than calibration). The export runs in a child process, so torch's thread pools never live in the
timed process.

    python scripts/bench_transformer.py [--runs 30] [--calib 8] [--eval 4] [--mcpu native] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (sets TVM_NUM_THREADS before tvm is imported)
import numpy as np  # noqa: E402
from transformer_models import export_transformer  # noqa: E402

SIZES = dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536)
SEQ, VOCAB = 128, 30522


def export_bert(path: str, seed: int = 0) -> None:
    """The BERT-shaped encoder with seeded random parameters, exported with fixed shapes."""
    export_transformer("bert", path, seq=SEQ, seed=seed, **SIZES)


def token_ids(seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, VOCAB, size=(1, SEQ)).astype(np.int64) for _ in range(count)]


def sqnr_db(reference: list, approximation: list) -> float:
    ref = np.concatenate([np.ravel(r) for r in reference]).astype(np.float64)
    approx = np.concatenate([np.ravel(a) for a in approximation]).astype(np.float64)
    return float(10 * np.log10(np.sum(ref ** 2) / np.sum((ref - approx) ** 2)))


def ort_int8(path: Path, workdir: Path):
    from onnxruntime.quantization import QuantType, quantize_dynamic
    start = time.perf_counter()
    out = workdir / "bert_int8_dynamic.onnx"
    quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8)
    return bench._ort_session(out), time.perf_counter() - start


def qpass_int8(path: Path, calib: list, mcpu: str):
    import qpass
    from qpass.passmgr.manager import PassContext
    start = time.perf_counter()
    graph = qpass.import_onnx(str(path))
    ctx = PassContext(quiet=True)
    integer = qpass.quantize(graph, [{"input_ids": c} for c in calib], ctx=ctx, quiet=True)
    compiled = qpass.compile(integer, "x86_64-linux-gnu", mcpu=mcpu)
    seconds = time.perf_counter() - start
    float_kinds = {}
    for name, why in ctx.analyses.float_ops.items():
        kind = why.split(":", 1)[0]
        float_kinds[kind] = float_kinds.get(kind, 0) + 1
    return compiled, seconds, {"float_ops_by_kind": dict(sorted(float_kinds.items())),
                               "integer_ops": sum(1 for op in integer.ops if qpass.api.is_integer(op)),
                               "target": compiled.report.get("target"),
                               "schedules": sorted({f"{k['op']}: {k['schedule']}" for k in compiled.report["kernels"]})}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--calib", type=int, default=8)
    parser.add_argument("--eval", type=int, default=4)
    parser.add_argument("--mcpu", default="native")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    import tvm
    with tempfile.TemporaryDirectory(prefix="bench-transformer-") as tmp:
        workdir = Path(tmp)
        path = workdir / "bert.onnx"
        child = multiprocessing.get_context("spawn").Process(target=export_bert, args=(str(path),))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit("exporting the BERT-shaped model failed (is transformers installed?)")
        calib, held_out = token_ids(100, args.calib), token_ids(200, args.eval)
        x = held_out[0]

        start = time.perf_counter()
        fp32 = bench._ort_session(path)
        engines = [bench._ort_engine("ort-fp32", fp32, x, time.perf_counter() - start, {})]
        int8, seconds = ort_int8(path, workdir)
        engines.append(bench._ort_engine("ort-int8", int8, x, seconds, {"quantization": "quantize_dynamic QInt8"}))
        compiled, seconds, details = qpass_int8(path, calib, args.mcpu)
        main_fn, device = compiled.artifact().vm_function()
        arg = tvm.runtime.tensor(x, device)
        engines.append(bench.Engine("qpass-int8", lambda: main_fn(arg), lambda: main_fn(arg)[0].numpy(), seconds,
                                    details, keep_alive=compiled))

        reference = [fp32.run(None, {"input_ids": ids})[0] for ids in held_out]
        accuracy = {"ort-int8": sqnr_db(reference, [int8.run(None, {"input_ids": ids})[0] for ids in held_out])}
        outputs = []
        for ids in held_out:
            outputs.append(main_fn(tvm.runtime.tensor(ids, device))[0].numpy())
        accuracy["qpass-int8"] = sqnr_db(reference, outputs)

        before = bench.cpu_snapshot()
        samples = bench.time_interleaved(engines, args.runs, args.warmup)
        load = bench.contention(before, bench.cpu_snapshot())
    rows = {}
    for e in engines:
        ms = np.asarray(samples[e.name])
        rows[e.name] = {"median_ms": round(float(np.median(ms)), 3), "p10_ms": round(float(np.percentile(ms, 10)), 3),
                        "p90_ms": round(float(np.percentile(ms, 90)), 3), "compile_s": round(e.compile_seconds, 1),
                        "sqnr_db_vs_ort_fp32": round(accuracy[e.name], 2) if e.name in accuracy else None,
                        **e.details}
    ratios = {f"qpass-int8 vs {b}": round(rows[b]["median_ms"] / rows["qpass-int8"]["median_ms"], 3)
              for b in ("ort-fp32", "ort-int8")}
    result = {"machine": bench.machine(), "model": {**SIZES, "seq": SEQ, "batch": 1}, "runs": args.runs,
              "calibration_samples": args.calib, "eval_samples": args.eval, "load_while_timing": load,
              "engines": rows, "speedups": ratios}
    print(json.dumps(result, indent=2))
    print(f"\nBERT-shaped encoder (6x384, seq {SEQ}, batch 1), {bench.THREADS} threads, {bench.machine()['cpu']}; "
          f"other processes used {load['other_processes_cpu_fraction']:.0%} of the CPUs while timing")
    print("| engine | median ms | p10-p90 ms | SQNR vs fp32 (dB) |\n|---|---:|---:|---:|")
    for name, row in rows.items():
        sq = "-" if row["sqnr_db_vs_ort_fp32"] is None else f"{row['sqnr_db_vs_ort_fp32']:.1f}"
        print(f"| {name} | {row['median_ms']:.2f} | {row['p10_ms']:.2f}-{row['p90_ms']:.2f} | {sq} |")
    print(", ".join(f"{k}: {v:.2f}x" for k, v in ratios.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
