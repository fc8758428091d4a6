"""How often does a quantized MobileNetV2 keep the float model's answer, on photos it never saw?

Leave-photos-out protocol (the default, `--folds 4`): the photos of ../shared/data/photos are dealt,
in file-name order, round-robin into N folds (photo i goes to fold i mod N). For each fold, the
model is calibrated on seeded random crops (seed 0) of the photos of the *other* folds and
evaluated on seeded crops and flips (seed 1) of the held-out fold's photos only; the figures pool
every fold's evaluation crops. `--folds 1` is the old protocol: calibration and evaluation crops
of the same photos (different seeds), which measures fit, not generalization.

Reports, against the FP32 logits: top-1 agreement, agreement on crops where FP32's softmax top-1
>= 0.5, FP32 top-1 inside the quantized top-5, and logit SQNR (10 log10 sum ref^2 / sum (ref - q)^2),
pooled over folds, plus each fold's top-1 agreement and SQNR.

    python scripts/eval_agreement.py [--folds 4] [--calib 64] [--eval 220] [--method percentile]
        [--bits 8 mixed] [--cle] [--adaround] [--keep-int8 first last] [--no-bias-correction]
        [--pipeline-suffix STR] [--ort] [--qdq] [--json OUT.json]
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
from qpass.frontend.images import image_files, load_images, random_crops

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


def photo_folds(names: list[str], folds: int) -> list[list[int]]:
    """Photo indices per fold: photo i (in file-name order) goes to fold i mod `folds`. One fold means
    the old protocol (every photo both calibrates and evaluates)."""
    if folds < 1 or folds > len(names):
        raise SystemExit(f"eval_agreement: --folds must be between 1 and the number of photos ({len(names)})")
    return [list(range(len(names)))] if folds == 1 else [list(range(k, len(names), folds)) for k in range(folds)]


def split_plan(names: list[str], folds: int, calib: int, evals: int) -> list[dict]:
    """Per fold: the photos that calibrate, the photos that evaluate and how many crops of each.
    Evaluation crops are shared out by photo count (`evals` in all); each fold calibrates on `calib`."""
    plan = []
    for held in photo_folds(names, folds):
        calibrating = list(range(len(names))) if folds == 1 else [i for i in range(len(names)) if i not in held]
        plan.append({"calibrate": [names[i] for i in calibrating], "evaluate": [names[i] for i in held],
                     "calib_crops": calib, "eval_crops": max(1, round(evals * len(held) / len(names))),
                     "_calibrate": calibrating, "_evaluate": held})
    return plan


def run_label(bits, args, keep_int8) -> str:
    """The name a configuration is reported under, e.g. "qpass W4A8 +CLE +AdaRound"."""
    return f"qpass W{bits}A8" + "".join(f" {name}" for name, on in [
        ("+CLE", args.cle), ("+AdaRound", args.adaround), ("-bias-correction", args.no_bias_correction),
        (f"(8-bit: {' '.join(keep_int8)})", keep_int8)] if on)


def pooled(reference: list[np.ndarray], quantized: list[np.ndarray], extras: list[dict]) -> dict:
    """Metrics over every fold's evaluation crops together, plus each fold's top-1 and SQNR."""
    figures = metrics(np.concatenate(reference), np.concatenate(quantized))
    per_fold = [metrics(r, q) for r, q in zip(reference, quantized)]
    figures["per_fold_top1_agreement"] = [round(f["top1_agreement"], 4) for f in per_fold]
    figures["per_fold_sqnr_db"] = [round(f["sqnr_db"], 2) for f in per_fold]
    for key in sorted({k for e in extras for k in e}):
        values = [e[key] for e in extras if key in e]
        if key.endswith(("_seconds", "_elements")) or "disagreements" in key:
            figures[key] = round(sum(values), 1) if key.endswith("_seconds") else sum(values)
        elif "max_" in key:
            figures[key] = max(values)
        else:                                   # the same in every fold, or one entry per fold
            figures[key] = values[0] if all(v == values[0] for v in values) else values
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SHARED / "models" / "mobilenet_v2.onnx"))
    parser.add_argument("--photos", default=str(SHARED / "data" / "photos"))
    parser.add_argument("--folds", type=int, default=4,
                        help="leave-photos-out folds (default 4); 1: calibrate and evaluate on the same photos")
    parser.add_argument("--calib", type=int, default=64, help="calibration crops per fold (seed 0)")
    parser.add_argument("--eval", type=int, default=220,
                        help="evaluation crops in all (seed 1), shared out over the folds by photo count")
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
    names = [p.name for p in image_files(args.photos)]
    images = load_images(args.photos)
    plan = split_plan(names, args.folds, args.calib, args.eval)
    protocol = ("same photos for calibration and evaluation (fit, not generalization)" if args.folds == 1
                else f"leave-photos-out, {args.folds} folds (photo i in file-name order -> fold i mod {args.folds})")
    print(f"protocol: {protocol}")
    for k, fold in enumerate(plan):
        print(f"fold {k}: calibrate on {fold['calib_crops']} crops of {', '.join(fold['calibrate'])}; "
              f"evaluate on {fold['eval_crops']} crops of {', '.join(fold['evaluate'])}", flush=True)
    graph = qpass.import_onnx(args.model)
    results = {"model": Path(args.model).name, "protocol": protocol, "folds": args.folds,
               "calibration_crops_per_fold": args.calib, "eval_crops": sum(f["eval_crops"] for f in plan),
               "method": args.method, "float_weight_bytes": weight_bytes(graph),
               "split": [{k: v for k, v in f.items() if not k.startswith("_")} for f in plan], "runs": {}}
    configs = []
    for bits in args.bits:
        bits = int(bits) if bits.isdigit() else bits
        keep_int8 = args.keep_int8 if bits == 4 else []
        pipeline = qpass.quantization_pipeline(bits, args.method, budget=args.budget,
                                               bias_correction=not args.no_bias_correction, cle=args.cle,
                                               adaround=args.adaround, keep_int8=keep_int8)
        configs.append((run_label(bits, args, keep_int8), pipeline))
    references, logits, extras = [], {}, {}
    for k, fold in enumerate(plan):
        calib = random_crops([images[i] for i in fold["_calibrate"]], fold["calib_crops"], seed=0)
        evals = random_crops([images[i] for i in fold["_evaluate"]], fold["eval_crops"], seed=1)
        reference = run(graph, evals)
        references.append(reference)
        for label, pipeline in configs:
            start = time.perf_counter()
            q = qpass.quantize(graph, [{"input": c} for c in calib], pipeline=pipeline, quiet=True)
            seconds = time.perf_counter() - start
            logits.setdefault(label, []).append(run(q, evals))
            extras.setdefault(label, []).append({"quantize_seconds": round(seconds, 1), "weight_bytes": weight_bytes(q),
                                                 "pipeline": pipeline})
            print(f"fold {k} {label}: {json.dumps(metrics(reference, logits[label][-1]))}", flush=True)
        if args.ort or args.qdq:
            label = "onnxruntime static int8 (MinMax, per-channel)"
            qdq_path, ort_run, ort_literal_run = ort_static_int8(Path(args.model), calib)
            ort_logits = ort_run(evals)
            logits.setdefault(label, []).append(ort_logits)
            extras.setdefault(label, []).append({})
            print(f"fold {k} onnxruntime static int8: {json.dumps(metrics(reference, ort_logits))}", flush=True)
        if args.qdq:
            label = "onnxruntime QDQ model folded by qpass"
            ctx = qpass.PassContext(verify_each=True)
            imported = qpass.import_onnx(qdq_path)
            with ctx:
                folded = qpass.run_passes(imported.copy(),
                                          qpass.api.CANONICALIZE + ",fold-fake-quant,fuse-requant,eliminate-dead-code",
                                          ctx)
            worst, differing, total = layer_local_differences(imported, folded, evals[0])
            ours = run(folded, evals)
            literal = ort_literal_run(evals)
            logits.setdefault(label, []).append(ours)
            extras.setdefault(label, []).append(dict(
                max_abs_logit_difference_vs_onnxruntime_unfused=float(np.abs(ours - literal).max()),
                top1_disagreements_with_onnxruntime_unfused=int(np.sum(ours.argmax(1) != literal.argmax(1))),
                output_step=float(folded.producer(folded.outputs[0]).inputs[0].type.quant.scale),
                layer_local_max_step_difference=worst, layer_local_differing_elements=differing,
                layer_local_elements=total,
                max_abs_logit_difference_vs_onnxruntime=float(np.abs(ours - ort_logits).max()),
                top1_disagreements_with_onnxruntime=int(np.sum(ours.argmax(1) != ort_logits.argmax(1))),
                ops_left_float=ctx.analyses.float_ops,
                integer_ops=sum(op.kind.startswith("q") or op.kind == "lut" for op in folded.ops)))
            print(f"fold {k} onnxruntime QDQ folded by qpass: {json.dumps(metrics(reference, ours))}", flush=True)
    for label in logits:
        figures = pooled(references, logits[label], extras[label])
        results["runs"][label] = figures
        print(f"{label} (pooled over {len(plan)} fold(s), {results['eval_crops']} crops): {json.dumps(figures)}",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
