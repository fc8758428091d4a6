"""How often does a quantized MobileNetV2 keep the float model's answer?

Calibrates on seeded random crops of ../shared/data/photos and evaluates on other seeded crops
and flips of the same photos (a different seed, never the calibration crops). Reports, against
the FP32 logits: top-1 agreement, agreement on crops where FP32's softmax top-1 >= 0.5, FP32
top-1 inside the quantized top-5, and logit SQNR (10 log10 sum ref^2 / sum (ref - q)^2).

    python scripts/eval_agreement.py [--calib 64] [--eval 220] [--method percentile] [--bits 8 mixed]
        [--cle] [--adaround] [--keep-int8 first last] [--no-bias-correction]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import qpass
from qpass.compiler import weight_bytes
from qpass.frontend.images import load_images, random_crops

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def metrics(reference: np.ndarray, quantized: np.ndarray) -> dict:
    """Agreement figures of quantized logits against reference logits ([N, classes] each)."""
    top1_ref, top1_q = reference.argmax(1), quantized.argmax(1)
    probs = np.exp(reference - reference.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    confident = probs.max(1) >= 0.5
    top5 = np.argsort(-quantized, axis=1)[:, :5]
    noise = np.sum((reference - quantized) ** 2)
    return {
        "top1_agreement": float(np.mean(top1_ref == top1_q)),
        "confident_agreement": float(np.mean((top1_ref == top1_q)[confident])) if confident.any() else None,
        "confident_crops": int(confident.sum()),
        "ref_top1_in_top5": float(np.mean([r in t for r, t in zip(top1_ref, top5)])),
        "sqnr_db": float(10 * np.log10(np.sum(reference ** 2) / noise)) if noise > 0 else float("inf"),
    }


def run(graph, crops) -> np.ndarray:
    name = graph.inputs[0].name
    return np.concatenate([next(iter(qpass.interpret(graph, {name: c}).values())) for c in crops])


def layer_local_differences(literal, folded, crop) -> tuple[int, int, int]:
    """Run every integer op of `folded` on the values the literal QDQ graph computed for its operands
    and compare with the literal graph's value of the same name: (max step difference, differing
    elements, elements). This separates per-layer semantics from the way a deep network amplifies
    one-step differences."""
    from qpass.interpreter import run_op
    name = literal.inputs[0].name
    values = {}
    qpass.interpret(literal, {name: crop}, observe=lambda v, a: values.__setitem__(v.name, a))
    worst = differing = total = 0
    for op in folded.ops:
        if op.kind == "quantize" or op.output.name not in values or not all(
                v.is_constant or v.name in values for v in op.inputs):
            continue
        (out,) = run_op(op, [v.data if v.is_constant else values[v.name] for v in op.inputs])
        d = np.abs(out.astype(np.int64) - values[op.output.name].astype(np.int64))
        worst, differing, total = max(worst, int(d.max())), differing + int((d > 0).sum()), total + d.size
    return worst, differing, total


def ort_static_int8(model: Path, calib) -> "callable":
    """onnxruntime's own static int8 (QDQ, per-channel, MinMax), for orientation."""
    import tempfile
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    ort.set_default_logger_severity(3)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": c} for c in calib])

        def get_next(self):
            return next(self.it, None)

    out = Path(tempfile.mkdtemp()) / "mobilenet_v2.qdq.onnx"
    quantize_static(str(model), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    literal = ort.SessionOptions()                     # no fusions: DequantizeLinear -> float op -> QuantizeLinear
    literal.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = ort.InferenceSession(str(out), literal, providers=["CPUExecutionProvider"])

    def runner(s):
        return lambda crops: np.concatenate([s.run(None, {"input": c})[0] for c in crops])
    return out, runner(session), runner(reference)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SHARED / "models" / "mobilenet_v2.onnx"))
    parser.add_argument("--photos", default=str(SHARED / "data" / "photos"))
    parser.add_argument("--calib", type=int, default=64, help="calibration crops (seed 0)")
    parser.add_argument("--eval", type=int, default=220, help="evaluation crops (seed 1)")
    parser.add_argument("--method", default="percentile")
    parser.add_argument("--bits", nargs="+", default=["8", "mixed"])
    parser.add_argument("--budget", type=float, default=0.6)
    parser.add_argument("--cle", action="store_true", help="cross-layer equalization (equalize-cross-layer) first")
    parser.add_argument("--adaround", action="store_true", help="learn the weight rounding (adaround)")
    parser.add_argument("--no-bias-correction", action="store_true", help="leave out correct-bias")
    parser.add_argument("--keep-int8", nargs="*", default=[], metavar="PATTERN",
                        help="layers whose weights stay 8-bit under --bits 4: first, last or op name patterns")
    parser.add_argument("--ort", action="store_true", help="also measure onnxruntime's static int8")
    parser.add_argument("--qdq", action="store_true", help="fold onnxruntime's QDQ model with qpass and compare "
                        "it with onnxruntime running that same model")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    if not Path(args.model).exists():
        print(f"eval_agreement: {args.model} is missing (it lives in ../shared/models)", file=sys.stderr)
        return 2
    images = load_images(args.photos)
    calib = random_crops(images, args.calib, seed=0)
    evals = random_crops(images, args.eval, seed=1)
    graph = qpass.import_onnx(args.model)
    reference = run(graph, evals)
    results = {"model": Path(args.model).name, "calibration_crops": args.calib, "eval_crops": args.eval,
               "method": args.method, "float_weight_bytes": weight_bytes(graph), "runs": {}}
    for bits in args.bits:
        bits = int(bits) if bits.isdigit() else bits
        keep_int8 = args.keep_int8 if bits == 4 else []
        pipeline = qpass.quantization_pipeline(bits, args.method, budget=args.budget,
                                               bias_correction=not args.no_bias_correction, cle=args.cle,
                                               adaround=args.adaround, keep_int8=keep_int8)
        start = time.perf_counter()
        q = qpass.quantize(graph, [{"input": c} for c in calib], pipeline=pipeline, quiet=True)
        seconds = time.perf_counter() - start
        figures = metrics(reference, run(q, evals))
        figures.update(quantize_seconds=round(seconds, 1), weight_bytes=weight_bytes(q), pipeline=pipeline)
        label = f"qpass W{bits}A8" + "".join(f" {name}" for name, on in [
            ("+CLE", args.cle), ("+AdaRound", args.adaround), ("-bias-correction", args.no_bias_correction),
            (f"(8-bit: {' '.join(keep_int8)})", keep_int8)] if on)
        results["runs"][label] = figures
        print(f"{label}: {json.dumps(figures)}", flush=True)
    if args.ort or args.qdq:
        qdq_path, ort_run, ort_literal_run = ort_static_int8(Path(args.model), calib)
        ort_logits = ort_run(evals)
        figures = metrics(reference, ort_logits)
        results["runs"]["onnxruntime static int8 (MinMax, per-channel)"] = figures
        print(f"onnxruntime static int8: {json.dumps(figures)}", flush=True)
    if args.qdq:
        ctx = qpass.PassContext(verify_each=True)
        imported = qpass.import_onnx(qdq_path)
        with ctx:
            folded = qpass.run_passes(imported.copy(),
                                      qpass.api.CANONICALIZE + ",fold-fake-quant,fuse-requant,eliminate-dead-code", ctx)
        worst, differing, total = layer_local_differences(imported, folded, evals[0])
        ours = run(folded, evals)
        literal = ort_literal_run(evals)
        figures = metrics(reference, ours)
        figures.update(max_abs_logit_difference_vs_onnxruntime_unfused=float(np.abs(ours - literal).max()),
                       top1_agreement_with_onnxruntime_unfused=float(np.mean(ours.argmax(1) == literal.argmax(1))),
                       output_step=float(folded.producer(folded.outputs[0]).inputs[0].type.quant.scale),
                       layer_local_max_step_difference=worst, layer_local_differing_elements=differing,
                       layer_local_elements=total)
        figures.update(max_abs_logit_difference_vs_onnxruntime=float(np.abs(ours - ort_logits).max()),
                       top1_agreement_with_onnxruntime=float(np.mean(ours.argmax(1) == ort_logits.argmax(1))),
                       ops_left_float=ctx.analyses.float_ops,
                       integer_ops=sum(op.kind.startswith("q") or op.kind == "lut" for op in folded.ops))
        results["runs"]["onnxruntime QDQ model folded by qpass"] = figures
        print(f"onnxruntime QDQ folded by qpass: {json.dumps(figures)}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
