"""ONNX's own node test cases through qpass: import, interpret, compare with ONNX's expected outputs.

The installed onnx package ships no data folder, but `onnx.backend.test.case.node.collect_testcases`
builds every node case in process (a model and its input/output arrays); the generators draw from
numpy's global random state, which is seeded here so every run sees the same arrays. Only cases
whose ops all have a qpass converter run. A case input that qpass needs as a constant (a shape, axes,
pads, scales or quantization parameter, which qpass requires to be static) is bound as an
initializer with the case's value, as a real model holds it; every other input stays a run-time
input. Integer and bool outputs must match exactly; float outputs within np.allclose(rtol=1e-3,
atol=1e-5), the tolerance ONNX's own runner uses. A case qpass refuses with a clear FrontendError is
skipped with the reason; any other exception, or a wrong result, fails.

`scripts/onnx_node_coverage.py` uses the helpers below for its per-op table (qpass vs ONNX Runtime).
"""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import qpass
from qpass.compiler import check_lowerable
from qpass.errors import FrontendError, QpassError
from qpass.frontend.onnx_fallback import unsupported_reason
from qpass.frontend.onnx_import import converter_for
from qpass.frontend.onnx_node import CONVERTERS
from qpass.interpreter import interpret

# Cases whose expected output qpass's interpreter does not reproduce because of an op kernel
# (qpass/ops), not the frontend: case name -> why.
KERNEL_XFAILS = {
    "test_resize_downsample_scales_linear_align_corners":
        "resize kernel (qpass/ops/movement.py): with scales given, ONNX align_corners divides by "
        "in_len*scale - 1 (a float length), the kernel by out_len - 1",
}

# Cases the interpreter passes but the compiled module gets wrong or cannot build (the backend's
# lowering, targets/, not the frontend): case name -> why.
BACKEND_XFAILS = {
    **{f"test_clip_default_int8_{kind}": "clip lowering: an int8 clip with the default (float32 max) bound "
       "becomes an int8 literal TVM rejects" for kind in ("inbounds", "max", "min")},
    "test_clip_min_greater_than_max": "clip lowering: with min > max ONNX gives max everywhere; the compiled "
                                      "clip differs",
    "test_dequantizelinear_blocked": "dequantize lowering: block_size (blocked scales) gives wrong values",
    "test_quantizelinear_blocked_asymmetric": "quantize lowering: block_size gives wrong integers",
    "test_quantizelinear_blocked_symmetric": "quantize lowering: block_size gives wrong integers",
    **{name: "onnx_node Attention through TVM's Relax ONNX frontend: a fully masked row gives NaN, ONNX 0"
       for name in ("test_attention_23_boolmask_fullymasked_row_nan_robustness",
                    "test_attention_23_fullymasked_qk_matmul_output_mode3_zero",
                    "test_attention_24_fullymasked_qk_matmul_output_mode3_zero",
                    "test_attention_causal_boolmask_nan_robustness")},
    "test_attention_24_qk_matmul_output_mode3_softmax_precision":
        "onnx_node Attention through TVM's Relax ONNX frontend: softmax_precision is not honoured (5e-4 off)",
}

_RUNTIME_PARAMETER = re.compile(r"'([^']*)' is computed at run time")


@functools.lru_cache(maxsize=1)
def all_cases() -> dict:
    """Every ONNX node test case by name (seeded: the generators draw random inputs)."""
    from onnx.backend.test.case.node import collect_testcases
    state = np.random.get_state()
    np.random.seed(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cases = collect_testcases(None)
    finally:
        np.random.set_state(state)
    return {case.name: case for case in cases}


def op_types(case) -> set[str]:
    return {node.op_type for node in case.model.graph.node}


def _opset(case) -> int:
    return next(o.version for o in case.model.opset_import if o.domain in ("", "ai.onnx"))


def converted_cases() -> list[str]:
    """Names of the cases whose every op is in the default domain and has a qpass converter."""
    return sorted(name for name, case in all_cases().items()
                  if op_types(case) <= set(CONVERTERS)
                  and all(node.domain in ("", "ai.onnx") for node in case.model.graph.node))


def fallback_cases() -> list[str]:
    """Names of the other cases that qpass imports through a fallback (an If decided at import, an
    ONNX function body, an onnx_node run by onnx.reference)."""
    converted = set(converted_cases())
    return sorted(name for name, case in all_cases().items() if name not in converted
                  and any(o.domain in ("", "ai.onnx") for o in case.model.opset_import)
                  and all(converter_for(node) is not None or unsupported_reason(node, _opset(case)) is None
                          for node in case.model.graph.node))


def refused_cases() -> list[str]:
    """The default-domain cases qpass refuses before converting (an op no path imports)."""
    taken = set(converted_cases()) | set(fallback_cases())
    return sorted(name for name, case in all_cases().items() if name not in taken
                  and any(o.domain in ("", "ai.onnx") for o in case.model.opset_import))


def _array(value):
    """A case's input or output as an array (cases give TensorProtos for float8/int4 and numpy
    scalars for rank-0 values); sequences and optionals stay as they are."""
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    return np.asarray(value) if isinstance(value, np.generic) else value


@dataclass
class Prepared:
    """A case imported by qpass: the graph, its feeds (by IR input name) and the expected outputs."""
    model: onnx.ModelProto
    graph: object
    feeds: dict
    expected: list
    frozen: list


def prepare(case) -> Prepared:
    """Import `case` (first data set); raises FrontendError when qpass refuses it.

    Inputs qpass needs as constants become initializers, one at a time, as the refusals name them.
    """
    inputs, outputs = case.data_sets[0]
    inputs, outputs = [_array(a) for a in inputs], [_array(a) for a in outputs]
    if any(not isinstance(a, np.ndarray) for a in (*inputs, *outputs)):
        raise FrontendError("a sequence or optional value: qpass imports tensors only")
    initialized = {init.name for init in case.model.graph.initializer}
    names = [info.name for info in case.model.graph.input if info.name not in initialized]
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    frozen: dict[str, np.ndarray] = {}
    while True:
        shapes = {n: a.shape for n, a in zip(names, inputs) if n not in frozen and a.ndim}
        try:
            graph = qpass.import_onnx(model, shapes)
            break
        except FrontendError as e:
            found = _RUNTIME_PARAMETER.search(str(e))
            name = found.group(1) if found else None
            if name not in names or name in frozen:
                raise
            frozen[name] = inputs[names.index(name)]
            model.graph.initializer.append(numpy_helper.from_array(frozen[name], name))
    runtime = [a for n, a in zip(names, inputs) if n not in frozen]
    feeds = {value.name: array for value, array in zip(graph.inputs, runtime)}
    return Prepared(model, graph, feeds, outputs, sorted(frozen))


def mismatch(got: list, expected: list) -> str:
    """'' when every result matches its expected array (exact for integers/bools, allclose for
    floats), else what differs."""
    if len(got) != len(expected):
        return f"{len(got)} results for {len(expected)} expected outputs"
    for i, (a, want) in enumerate(zip(got, expected)):
        a = np.asarray(a)
        if a.shape != want.shape:
            return f"output {i}: shape {list(a.shape)}, expected {list(want.shape)}"
        if want.dtype.kind in "fc":
            if not np.allclose(a.astype(np.float64), want.astype(np.float64), rtol=1e-3, atol=1e-5,
                               equal_nan=True):
                err = np.nanmax(np.abs(a.astype(np.float64) - want.astype(np.float64)))
                return f"output {i}: max abs difference {err:.3g}"
        elif not np.array_equal(a.astype(want.dtype), want):
            return f"output {i}: integer values differ"
    return ""


def run_interpreter(prepared: Prepared) -> str:
    results = interpret(prepared.graph, prepared.feeds)
    return mismatch([results[v.name] for v in prepared.graph.outputs], prepared.expected)


def run_compiled(prepared: Prepared, host) -> str:
    import tvm
    from tvm import relax
    b, spec = host
    main = relax.VirtualMachine(b.build(prepared.graph, spec).executable, tvm.cpu())["main"]
    args = [tvm.runtime.tensor(prepared.feeds[v.name]) for v in prepared.graph.inputs]
    out = main(*args)
    got = [r.numpy() for r in out] if isinstance(out, (list, tuple)) or hasattr(out, "__len__") else [out.numpy()]
    return mismatch(got, prepared.expected)


def _param(name):
    marks = [pytest.mark.xfail(strict=True, reason=KERNEL_XFAILS[name])] if name in KERNEL_XFAILS else []
    return pytest.param(name, marks=marks, id=name)


def _prepared_or_skip(name) -> Prepared:
    try:
        return prepare(all_cases()[name])
    except FrontendError as e:
        pytest.skip(f"qpass refuses it: {e}")


@pytest.mark.parametrize("name", [_param(n) for n in converted_cases()])
def test_node_case_in_interpreter(name):
    prepared = _prepared_or_skip(name)
    assert run_interpreter(prepared) == ""


@pytest.mark.parametrize("name", fallback_cases())
def test_fallback_case_in_interpreter(name):
    """Cases imported through If folding, an ONNX function body or an onnx_node (onnx.reference)."""
    prepared = _prepared_or_skip(name)
    if name in RANDOM_CASES:
        pytest.skip("a random op: the case's seed is not onnx.reference's")
    assert run_interpreter(prepared) == ""


# Random ops: onnx.reference draws other numbers than the generator that wrote the case.
RANDOM_CASES = {"test_bernoulli_seed", "test_bernoulli_seed_expanded"}


def compiled_op_types(names=None) -> dict[str, list[str]]:
    """Single-op cases by op type, for compile + run of one case per op type."""
    by_op: dict[str, list[str]] = {}
    for name in converted_cases() if names is None else names:
        ops = op_types(all_cases()[name])
        if len(ops) == 1 and name not in KERNEL_XFAILS:
            by_op.setdefault(next(iter(ops)), []).append(name)
    return by_op


@pytest.fixture(scope="module")
def host():
    from qpass.backends import backend
    b = backend()
    return b, b.resolve_target("x86_64-linux-gnu")


@pytest.mark.parametrize("op_type", sorted(compiled_op_types()))
def test_node_case_compiled(op_type, host):
    """The first case of `op_type` that qpass imports, built for the host and run in the Relax VM."""
    for name in compiled_op_types()[op_type]:
        try:
            prepared = prepare(all_cases()[name])
        except FrontendError:
            continue
        if not prepared.feeds:
            continue   # folded to constants at import: nothing reaches the backend
        try:
            check_lowerable(prepared.graph)
        except QpassError as e:   # a variant imported as an onnx_node that TVM's frontend cannot lower
            assert "onnx_node" in str(e) and "TVM's Relax ONNX frontend" in str(e)
            continue
        assert run_compiled(prepared, host) == "", name
        return
    pytest.skip(f"qpass imports no {op_type} case with a run-time input that compiles")


@pytest.mark.parametrize("op_type", sorted(compiled_op_types(fallback_cases())))
def test_fallback_case_compiled(op_type, host):
    """The first case of a fallback op type that imports with a run-time input and passes in the
    interpreter: either it compiles (through TVM's Relax ONNX frontend) and matches, or the compile
    refuses it up front, naming the op and why."""
    for name in compiled_op_types(fallback_cases())[op_type]:
        try:
            prepared = prepare(all_cases()[name])
        except FrontendError:
            continue
        if not prepared.feeds or name in BACKEND_XFAILS or run_interpreter(prepared) != "":
            continue
        try:
            check_lowerable(prepared.graph)
        except QpassError as e:
            assert "onnx_node" in str(e) and "TVM's Relax ONNX frontend" in str(e)
            pytest.skip(f"refused before building, as it should be: {e}")
        assert run_compiled(prepared, host) == "", name
        return
    pytest.skip(f"qpass imports no {op_type} case with a run-time input")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=why), id=n)
                                  for n, why in sorted(BACKEND_XFAILS.items())])
def test_known_compiled_failures(name, host):
    """The backend failures the node cases found (strict xfail: a fix makes it fail, then drop the entry)."""
    prepared = prepare(all_cases()[name])
    assert run_interpreter(prepared) == ""
    assert run_compiled(prepared, host) == ""


def test_most_converted_cases_pass():
    """A floor under the pass count, so a regression that turns passes into refusals shows."""
    passed = 0
    for name in converted_cases():
        if name in KERNEL_XFAILS:
            continue
        try:
            prepared = prepare(all_cases()[name])
        except FrontendError:
            continue
        passed += run_interpreter(prepared) == ""
    assert passed >= 640        # 655 of 916 when it was set


def test_most_fallback_cases_pass():
    """A floor under the fallback paths' pass count (642 of 851 when it was set)."""
    passed = 0
    for name in fallback_cases():
        try:
            prepared = prepare(all_cases()[name])
        except FrontendError:
            continue
        passed += run_interpreter(prepared) == ""
    assert passed >= 600


RECURRENT_CASES = sorted(n for n in all_cases() if re.match(r"test_(lstm|gru|rnn|simple_rnn)_", n))


@pytest.mark.parametrize("name", RECURRENT_CASES)
def test_recurrent_cases_unroll_with_constant_weights(name):
    """LSTM/GRU/RNN with their weights as initializers (as exported models have them) unroll into
    dense and gate ops, and still give ONNX's expected outputs; variants qpass does not unroll
    (peepholes, batch-first layout) stay one onnx_node."""
    case = all_cases()[name]
    inputs, outputs = case.data_sets[0]
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    node = model.graph.node[0]
    constant = {node.input[i] for i in (1, 2, 3) if len(node.input) > i and node.input[i]}
    feeds = {}
    for info, array in zip(list(case.model.graph.input), inputs):
        if info.name in constant:
            model.graph.initializer.append(numpy_helper.from_array(np.asarray(array), info.name))
        else:
            feeds[info.name] = np.asarray(array)
    graph = qpass.import_onnx(model, {n: a.shape for n, a in feeds.items()})
    kinds = {op.kind for op in graph.ops}
    variant = any(k in name for k in ("peephole", "batchwise"))
    assert ("onnx_node" in kinds) == variant, kinds
    if not variant:
        assert "dense" in kinds
    results = interpret(graph, {v.name: feeds[n] for v, n in zip(graph.inputs, feeds)})
    assert mismatch([results[v.name] for v in graph.outputs], [_array(a) for a in outputs]) == ""
