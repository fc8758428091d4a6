"""Real-label accuracy of the Fashion-MNIST CNN (qpass/data/fashion_cnn.onnx): fp32 against qpass's PTQ.

Calibration comes from the training split only: the calibration slice that scripts/train_fashion.py
kept out of training (the first --calib images of it). Evaluation is on the full 10,000-image test
split when the Debian package dataset-fashion-mnist is installed (/usr/share/datasets/fashion-mnist),
else on the 1,000 test images shipped in qpass/data/fashion_test.npz. No option below is chosen by
looking at these figures: the configurations are the issue's, fixed before the first run.

For each configuration: top-1 accuracy against the real labels, its difference from fp32 in
points, top-1 agreement with fp32, logit SQNR against fp32, weight bytes.

    python scripts/eval_fashion.py [--calib 256] [--limit N] [--configs w8 w8-cle w4 ...] [--json OUT.json]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_fashion import DEBIAN_DIR, load_split, split_training, to_float  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "qpass" / "data" / "fashion_cnn.onnx"
SHIPPED = REPO / "qpass" / "data" / "fashion_test.npz"

# name -> quantization_pipeline keywords; fixed a priori (the list).
CONFIGS = {
    "W8A8": dict(bits=8),
    "W8A8+CLE": dict(bits=8, cle=True),
    "W4A8": dict(bits=4),
    "W4A8+AdaRound": dict(bits=4, adaround=True),
    "W4A8+CLE+AdaRound": dict(bits=4, cle=True, adaround=True),
    "mixed (budget 0.6)": dict(bits="mixed"),
}


def load_data(calib: int, source: str = "auto"):
    """(calibration images float32, test images float32, test labels, description of the split)."""
    use_debian = source == "debian" or (source == "auto" and (DEBIAN_DIR / "t10k-images-idx3-ubyte.gz").exists())
    if use_debian:
        train_images, train_labels = load_split("train")
        test_images, test_labels = load_split("t10k")
        calib_images = split_training(train_images, train_labels)[2][:calib]
        where = (f"calibration: first {len(calib_images)} images of the calibration slice of the training split "
                 f"(kept out of training); evaluation: the full test split ({len(test_images)} images), "
                 f"from {DEBIAN_DIR}")
    else:
        with np.load(SHIPPED) as data:
            calib_images, test_images, test_labels = data["calib_images"][:calib], data["images"], data["labels"]
        where = (f"calibration: {len(calib_images)} images from the training split's calibration slice; "
                 f"evaluation: the {len(test_images)} test images shipped in {SHIPPED.relative_to(REPO)}")
    return to_float(calib_images), to_float(test_images), test_labels, where


def logits_of(graph, images: np.ndarray) -> np.ndarray:
    """The graph's logits for each image, one at a time (the model's batch is 1)."""
    name = graph.inputs[0].name
    return np.concatenate([next(iter(qpass.interpret(graph, {name: x[None]}).values())) for x in images])


def figures(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy against the labels, top-1 agreement and logit SQNR against the fp32 logits."""
    noise = float(np.sum((reference - logits) ** 2))
    return {"accuracy": float(np.mean(logits.argmax(1) == labels)),
            "agreement_with_fp32": float(np.mean(logits.argmax(1) == reference.argmax(1))),
            "sqnr_db": float(10 * np.log10(np.sum(reference ** 2) / noise)) if noise > 0 else float("inf")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calib", type=int, default=256, help="calibration images from the training split")
    parser.add_argument("--data", choices=["auto", "debian", "shipped"], default="auto",
                        help="auto: the full test split when the Debian package is installed, else the npz")
    parser.add_argument("--limit", type=int, default=0, help="evaluate on the first N test images only (0: all)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), metavar="NAME",
                        help=f"configurations to run (default all): {', '.join(CONFIGS)}")
    parser.add_argument("--method", default="percentile", help="range-analysis method (default: the pipeline's)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    calib, images, labels, where = load_data(args.calib, args.data)
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]
        where += f" (first {args.limit} only)"
    print(f"split: {where}", flush=True)
    graph = qpass.import_onnx(str(MODEL))
    start = time.perf_counter()
    reference = logits_of(graph, images)
    fp32 = float(np.mean(reference.argmax(1) == labels))
    results = {"model": MODEL.name, "split": where, "eval_images": len(labels), "method": args.method,
               "fp32": {"accuracy": fp32, "weight_bytes": weight_bytes(graph),
                        "eval_seconds": round(time.perf_counter() - start, 1)}, "runs": {}}
    print(f"{'configuration':<22} {'accuracy':>9} {'vs fp32':>8} {'agree':>7} {'SQNR dB':>8} {'weights B':>10}")
    print(f"{'fp32':<22} {100 * fp32:8.2f}% {'':>8} {'':>7} {'':>8} {weight_bytes(graph):>10}", flush=True)
    samples = [{graph.inputs[0].name: x[None]} for x in calib]
    for name in args.configs:
        pipeline = qpass.quantization_pipeline(method=args.method, **CONFIGS[name])
        start = time.perf_counter()
        q = qpass.quantize(graph, samples, pipeline=pipeline, quiet=True)
        seconds = time.perf_counter() - start
        row = figures(reference, logits_of(q, images), labels)
        row.update(points_vs_fp32=round(100 * (row["accuracy"] - fp32), 2), weight_bytes=weight_bytes(q),
                   quantize_seconds=round(seconds, 1), pipeline=pipeline)
        results["runs"][name] = row
        print(f"{name:<22} {100 * row['accuracy']:8.2f}% {row['points_vs_fp32']:+8.2f} "
              f"{100 * row['agreement_with_fp32']:6.2f}% {row['sqnr_db']:8.2f} {row['weight_bytes']:>10}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
