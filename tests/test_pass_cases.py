"""Textual pass tests: each file in pass_cases/ holds a pipeline, an input graph and the expected graph.

    # PIPELINE: fold-batchnorm
    graph @main(...) { ... }
    # ----- EXPECTED -----
    graph @main(...) { ... }

The pass output must print exactly as the expected graph, and compute the same function as the
input graph in the reference interpreter (seeded random inputs): to float rounding, or within an
absolute `# TOLERANCE:` the case states (passes that trade float for integer arithmetic).
"""

import difflib
from pathlib import Path

import numpy as np
import pytest

from qpass import PassContext, interpret, parse_graph, print_graph, run_passes

CASES = sorted((Path(__file__).parent / "pass_cases").glob("*.qir"))
SEPARATOR = "# ----- EXPECTED -----"


def _load_case(path: Path):
    text = path.read_text()
    pipeline = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("# PIPELINE:"))
    tolerance = next((float(line.split(":", 1)[1].split()[0]) for line in text.splitlines()
                      if line.startswith("# TOLERANCE:")), 1e-6)
    before, expected = text.split(SEPARATOR)
    return pipeline, tolerance, parse_graph(before, source=str(path)), parse_graph(expected, source=str(path))


def _random_inputs(graph, seed=0):
    rng = np.random.default_rng(seed)
    return {v.name: rng.standard_normal(v.type.shape).astype(v.type.numpy_dtype) for v in graph.inputs}


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_pass_case(path):
    pipeline, tolerance, graph, expected = _load_case(path)
    graph.verify()
    inputs = _random_inputs(graph)
    reference = interpret(graph, inputs)
    with PassContext(verify_each=True) as ctx:
        result = run_passes(graph.copy(), pipeline, ctx)
    got, want = print_graph(result), print_graph(expected)
    assert got == want, "pass output differs from the expected graph:\n" + "".join(
        difflib.unified_diff(want.splitlines(True), got.splitlines(True), "expected", "got"))
    outputs = interpret(result, inputs)
    for name, value in reference.items():
        np.testing.assert_allclose(outputs[name], value, rtol=1e-5, atol=tolerance, err_msg=name)


def test_cases_exist():
    assert len(CASES) >= 6
