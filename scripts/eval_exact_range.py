"""What --exact-range (7-bit weights, within [-64, 63]) costs in accuracy against full 8-bit weights.

Both configurations run the same default int8 pipeline (`qpass.quantization_pipeline(8)`), one with
`exact_range=True`; each model is quantized from the same calibration data and evaluated in the
reference interpreter (the integer IR the compiled code equals bit for bit) on data kept apart
from calibration:

    mobilenet_v2  ../shared/models/mobilenet_v2.onnx; the photos of ../shared/data/photos are dealt,
                  in file-name order, into --folds folds (photo i -> fold i mod N); each fold is
                  calibrated on seeded random crops (seed 0) of the *other* folds' photos and
                  evaluated on seeded crops (seed 1) of its own photos. Against the fp32 logits:
                  top-1 agreement and logit SQNR (10 log10 sum ref^2 / sum (ref - q)^2), pooled.
    digits        the bundled digits CNN (qpass/data): calibrated on the first --digits-calib images
                  of digits_test.npz, evaluated on the rest: top-1 accuracy against the labels,
                  agreement with fp32 and SQNR.

    python scripts/eval_exact_range.py [--models mobilenet_v2 digits] [--folds 4] [--calib 64]
        [--eval 220] [--digits-calib 64] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import qpass
from qpass.frontend.images import image_files, load_images, random_crops

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
CONFIGS = {"W8A8": False, "W7A8 (--exact-range)": True}


def metrics(reference: np.ndarray, quantized: np.ndarray, labels=None) -> dict:
    """Top-1 agreement with the reference logits, SQNR, and top-1 accuracy when labels are given."""
    noise = float(np.sum((reference - quantized) ** 2))
    figures = {"top1_agreement": float(np.mean(reference.argmax(1) == quantized.argmax(1))),
               "sqnr_db": float(10 * np.log10(np.sum(reference ** 2) / noise)) if noise > 0 else float("inf"),
               "samples": int(len(reference))}
    if labels is not None:
        figures["top1_accuracy"] = float(np.mean(quantized.argmax(1) == labels))
    return figures


def logits(graph, samples) -> np.ndarray:
    name = graph.inputs[0].name
    return np.concatenate([next(iter(qpass.interpret(graph, {name: s}).values())).reshape(1, -1)
                           for s in samples])


def weight_ranges(graph) -> list[int]:
    """The smallest and largest integer weight of the graph's conv/dense layers."""
    weights = [op.inputs[1].data for op in graph.ops if op.kind in ("qconv2d", "qdense")]
    return [int(min(w.min() for w in weights)), int(max(w.max() for w in weights))]


def quantize_both(graph, calibration) -> dict:
    """Each configuration's integer graph from the same calibration samples."""
    out = {}
    for label, exact in CONFIGS.items():
        start = time.perf_counter()
        out[label] = qpass.quantize(graph, calibration, bits=8, exact_range=exact, quiet=True)
        print(f"  quantized {label} in {time.perf_counter() - start:.1f} s, weights in "
              f"{weight_ranges(out[label])}", flush=True)
    return out


def mobilenet(args) -> dict:
    model = SHARED / "models" / "mobilenet_v2.onnx"
    graph = qpass.import_onnx(model)
    names = [p.name for p in image_files(args.photos)]
    images = load_images(args.photos)
    if not 1 < args.folds <= len(names):
        raise SystemExit(f"eval_exact_range: --folds must be between 2 and {len(names)}")
    references, quantized, split = [], {label: [] for label in CONFIGS}, []
    for k in range(args.folds):
        held = list(range(k, len(names), args.folds))
        others = [i for i in range(len(names)) if i not in held]
        count = max(1, round(args.eval * len(held) / len(names)))
        calib = random_crops([images[i] for i in others], args.calib, seed=0)
        evals = random_crops([images[i] for i in held], count, seed=1)
        split.append({"calibrate": [names[i] for i in others], "evaluate": [names[i] for i in held],
                      "eval_crops": count})
        print(f"fold {k}: calibrate on {args.calib} crops of {len(others)} photos, evaluate on {count} crops of "
              f"{', '.join(names[i] for i in held)}", flush=True)
        references.append(logits(graph, evals))
        for label, q in quantize_both(graph, [{graph.inputs[0].name: c} for c in calib]).items():
            quantized[label].append(logits(q, evals))
            print(f"  {label}: {json.dumps(metrics(references[-1], quantized[label][-1]))}", flush=True)
    reference = np.concatenate(references)
    return {"protocol": f"leave-photos-out, {args.folds} folds", "calibration_crops_per_fold": args.calib,
            "split": split, "runs": {label: {**metrics(reference, np.concatenate(q)),
                                             "per_fold_top1_agreement": [round(float(np.mean(
                                                 r.argmax(1) == f.argmax(1))), 4) for r, f in zip(references, q)]}
                                     for label, q in quantized.items()}}


def digits(args) -> dict:
    from qpass.tools.demo import bundled_test_set
    graph = qpass.import_onnx(REPO / "qpass" / "data" / "digits_cnn.onnx")
    images, labels = bundled_test_set()
    calib, evals, eval_labels = images[:args.digits_calib], images[args.digits_calib:], labels[args.digits_calib:]
    name = graph.inputs[0].name
    reference = logits(graph, [e[None] for e in evals])
    runs = {"fp32": {"top1_accuracy": float(np.mean(reference.argmax(1) == eval_labels)), "samples": len(evals)}}
    for label, q in quantize_both(graph, [{name: c[None]} for c in calib]).items():
        runs[label] = metrics(reference, logits(q, [e[None] for e in evals]), eval_labels)
    return {"protocol": f"calibrate on the first {args.digits_calib} images of digits_test.npz, evaluate on the "
                        f"other {len(evals)}", "runs": runs}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=["mobilenet_v2", "digits"], default=["mobilenet_v2", "digits"])
    parser.add_argument("--photos", default=str(SHARED / "data" / "photos"))
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--calib", type=int, default=64, help="calibration crops per fold (seed 0)")
    parser.add_argument("--eval", type=int, default=220, help="evaluation crops in all folds together (seed 1)")
    parser.add_argument("--digits-calib", type=int, default=64, help="digits images that calibrate (the rest evaluate)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    results = {}
    for model in args.models:
        print(f"{model}:", flush=True)
        results[model] = mobilenet(args) if model == "mobilenet_v2" else digits(args)
        for label, figures in results[model]["runs"].items():
            print(f"{model} {label}: {json.dumps(figures)}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
