"""Transformers end to end: the integer activation x activation matmul (qmatmul), and BERT- and
GPT-2-shaped models exported from `transformers` with seeded random weights, imported, checked
against onnxruntime, quantized W8A8 and compiled for x86.

The qmatmul tests need no transformers; the model tests skip without it (pip install transformers).
Model-size tests are marked slow; `test_tiny_bert_*` covers the same path in seconds.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

import qpass
from qpass import PassContext, parse_graph, print_graph, run_passes
from qpass.compiler import compare_outputs
from qpass.interpreter import run_op

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"

ATTENTION_QDQ = """
graph @main(%q: f32[1,2,8,16], %k: f32[1,2,16,8]) {
  %q.q = quantize(%q) : i8[1,2,8,16]{scale=0.02, zp=3}
  %q.dq = dequantize(%q.q) : f32[1,2,8,16]
  %k.q = quantize(%k) : u8[1,2,16,8]{scale=0.015, zp=120}
  %k.dq = dequantize(%k.q) : f32[1,2,16,8]
  %s = matmul(%q.dq, %k.dq) : f32[1,2,8,8]
  %s.q = quantize(%s) : i8[1,2,8,8]{scale=0.01, zp=-5}
  return %s.q
}
"""

ATTENTION_INTEGER = """
graph @main(%q: f32[1,2,8,16], %k: f32[1,2,16,8]) {
  %q.q = quantize(%q) : i8[1,2,8,16]{scale=0.02, zp=3}
  %k.q = quantize(%k) : u8[1,2,16,8]{scale=0.015, zp=120}
  %s.q = qmatmul(%q.q, %k.q) {multiplier=[2061584256], out_dtype="i8", shift=[36]} : i8[1,2,8,8]{scale=0.01, zp=-5}
  return %s.q
}
"""


def _attention_inputs(seed):
    rng = np.random.default_rng(seed)
    return {"q": rng.standard_normal((1, 2, 8, 16)).astype(np.float32),
            "k": rng.standard_normal((1, 2, 16, 8)).astype(np.float32)}


def test_fold_fake_quant_writes_qmatmul_for_a_product_of_activations():
    before = parse_graph(ATTENTION_QDQ)
    after = run_passes(before.copy(), "fold-fake-quant,fuse-requant,eliminate-dead-code", PassContext(quiet=True))
    assert print_graph(after) == print_graph(parse_graph(ATTENTION_INTEGER))
    for seed in range(3):
        inputs = _attention_inputs(seed)
        fake = qpass.interpret(before, inputs)["s.q"].astype(np.int64)
        exact = qpass.interpret(after, inputs)["s.q"].astype(np.int64)
        # The same product; only the one rounding of the rescale may differ (float vs fixed point).
        assert np.abs(fake - exact).max() <= 1
        assert np.mean(fake == exact) > 0.95


def test_qmatmul_kernel_is_the_exact_integer_product():
    graph = parse_graph(ATTENTION_INTEGER.replace(' {multiplier=[2061584256], out_dtype="i8", shift=[36]} : '
                                                  'i8[1,2,8,8]{scale=0.01, zp=-5}', " : i32[1,2,8,8]"))
    inputs = _attention_inputs(0)
    values = {}
    qpass.interpret(graph, inputs, observe=lambda v, a: values.__setitem__(v.name, a))
    q, k = values["q.q"].astype(np.int64) - 3, values["k.q"].astype(np.int64) - 120
    want = np.einsum("bhik,bhkj->bhij", q, k)
    assert values["s.q"].dtype == np.int32 and np.array_equal(values["s.q"], want)


def test_qmatmul_refuses_operands_it_cannot_compute_exactly():
    with pytest.raises(qpass.errors.IRError, match="per-tensor"):
        parse_graph("""
graph @main(%a: i8[2,4]{scale=[0.1, 0.2], zp=[0, 0], axis=0}, %b: i8[4,3]{scale=0.1, zp=0}) {
  %c = qmatmul(%a, %b) : i32[2,3]
  return %c
}""").verify()
    with pytest.raises(qpass.errors.IRError, match="overflow its int32"):
        parse_graph("""
graph @main(%a: u8[1,40000]{scale=0.1, zp=0}, %b: u8[40000,1]{scale=0.1, zp=0}) {
  %c = qmatmul(%a, %b) : i32[1,1]
  return %c
}""").verify()


TARGETS = {"x86": ("x86_64-linux-gnu", {}), "aarch64": ("aarch64-linux-gnu", {"mattr": "+neon,+dotprod"})}


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("operand_dtype", ["i8", "u8"])
def test_compiled_qmatmul_is_bit_exact(operand_dtype, target):
    if target == "aarch64":
        for tool in ("qemu-aarch64", "aarch64-linux-gnu-g++"):
            if shutil.which(tool) is None:
                pytest.skip(f"{tool} is not installed (scripts/test.sh installs it)")
    text = ATTENTION_INTEGER
    if operand_dtype == "i8":
        text = text.replace("u8[1,2,16,8]{scale=0.015, zp=120}", "i8[1,2,16,8]{scale=0.015, zp=-8}")
    graph = parse_graph(text)
    triple, options = TARGETS[target]
    compiled = qpass.compiler.compile(graph, triple, pipeline="", **options)
    for seed in range(3):
        inputs = _attention_inputs(seed)
        result = compare_outputs(compiled.run(inputs), qpass.interpret(graph, inputs))
        assert result["bit_exact"], result["comparison"]


# --------------------------------------------------------------------------- models from transformers
def _export(kind: str, path, **sizes):
    """A seeded random BertModel / GPT2Model exported to ONNX (scripts/transformer_models.py)."""
    pytest.importorskip("torch", reason="the transformer model tests export with torch: pip install torch")
    pytest.importorskip("transformers", reason="the transformer model tests need `pip install transformers`")
    seq = sizes.pop("seq")
    _exporter().export_transformer(kind, path, seq=seq, **sizes)
    return path


def _exporter():
    spec = importlib.util.spec_from_file_location("transformer_models", SCRIPTS / "transformer_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _token_ids(seed, samples, seq, vocab):
    return np.random.default_rng(seed).integers(0, vocab, size=(samples, seq)).astype(np.int64)


def sqnr_db(reference, approximation) -> float:
    """Signal-to-quantization-noise ratio of `approximation` against `reference`, in dB."""
    reference, approximation = np.asarray(reference, np.float64), np.asarray(approximation, np.float64)
    return float(10 * np.log10(np.sum(reference ** 2) / np.sum((reference - approximation) ** 2)))


def check_every_op(graph, inputs, target: str = "x86") -> dict:
    """Compile `graph` with every value exposed as an output, then re-run each op in the interpreter
    on the operands the compiled code computed: integer results must be equal bit for bit, float
    results equal within float rounding (compare_outputs' rule). So a float island that rounds one
    ulp differently in TVM (and flips a quantize after it) fails no integer op, while any integer
    op that computes differently from its definition fails.

    Returns counts of the ops checked by each rule and of those that agree.
    """
    exposed = graph.copy()
    exposed.set_outputs([v for op in exposed.ops for v in op.outputs])
    triple, options = TARGETS[target]
    got = qpass.compiler.compile(exposed, triple, pipeline="", **options).run(inputs)
    counts = {"integer": 0, "integer_exact": 0, "float": 0, "float_agrees": 0}
    for op in exposed.ops:
        operands = [v.data if v.is_constant else got[v.name] if exposed.producer(v) else inputs[v.name]
                    for v in op.inputs]
        for value, want in zip(op.outputs, run_op(op, operands)):
            result = compare_outputs({value.name: got[value.name]}, {value.name: want})
            rule = "float" if np.issubdtype(want.dtype, np.floating) else "integer"
            counts[rule] += 1
            counts["integer_exact" if rule == "integer" else "float_agrees"] += bool(
                result["bit_exact"] if rule == "integer" else result["matches_interpreter"])
    return counts


def _check_model(path, vocab, seq, min_sqnr_db, calibration_samples=8):
    """Import, match onnxruntime, compile float, quantize, compile the integer graph; returns figures."""
    import onnxruntime as ort
    graph = qpass.import_onnx(str(path))
    held_out = {"input_ids": _token_ids(1, 1, seq, vocab)}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ort_out,) = session.run(None, held_out)
    float_out = qpass.interpret(graph, held_out)["hidden"]
    assert np.abs(float_out - ort_out).max() <= 1e-4 * np.abs(ort_out).max()
    float_compiled = qpass.compiler.compile(graph, "x86_64-linux-gnu", pipeline="").run(held_out)
    assert compare_outputs(float_compiled, {"hidden": float_out})["matches_interpreter"]

    calibration = {"input_ids": _token_ids(2, calibration_samples, seq, vocab)}   # disjoint seeds: other ids
    ctx = PassContext(verify_each=True, quiet=True)
    integer = qpass.quantize(graph, calibration, ctx=ctx)
    kinds = [op.kind for op in integer.ops]
    attention_products = sum(op.kind == "matmul" for op in graph.ops)
    assert kinds.count("qmatmul") == attention_products and "matmul" not in kinds
    quantized_out = qpass.interpret(integer, held_out)["hidden"]
    sqnr = sqnr_db(float_out, quantized_out)
    assert sqnr >= min_sqnr_db

    compiled = qpass.compiler.compile(integer, "x86_64-linux-gnu", pipeline="").run(held_out)
    end_to_end = compare_outputs(compiled, {"hidden": quantized_out})
    # Float islands round differently in TVM by an ulp now and then, and a quantize after one may then
    # flip a code that later integer ops carry on: end to end, the artifact is as accurate as the IR.
    compiled_sqnr = sqnr_db(float_out, compiled["hidden"])
    assert compiled_sqnr >= min_sqnr_db
    counts = check_every_op(integer, held_out)
    assert counts["integer_exact"] == counts["integer"] > 0 and counts["float_agrees"] == counts["float"]
    float_kinds = sorted(why.split(":", 1)[0] for why in ctx.analyses.float_ops.values())
    print(f"{path.name}: SQNR {sqnr:.2f} dB (compiled {compiled_sqnr:.2f} dB); float ops {len(float_kinds)} "
          f"{ {k: float_kinds.count(k) for k in dict.fromkeys(float_kinds)} }; every-op check {counts}; "
          f"end to end: {end_to_end['comparison']}")
    return {"float_ops": ctx.analyses.float_ops, "sqnr_db": sqnr, "kinds": kinds, "ops": counts,
            "end_to_end": end_to_end}


TINY_BERT = dict(vocab_size=100, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128,
                 max_position_embeddings=32, seq=16)


def test_tiny_bert_quantizes_with_integer_attention_and_compiles(tmp_path):
    path = _export("bert", tmp_path / "bert.onnx", **TINY_BERT)
    figures = _check_model(path, vocab=100, seq=16, min_sqnr_db=15.0)
    assert figures["kinds"].count("qmatmul") == 2


@pytest.mark.slow
def test_bert_encoder_6x384_quantizes_and_compiles(tmp_path):
    sizes = dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536, seq=128)
    path = _export("bert", tmp_path / "bert.onnx", **sizes)
    figures = _check_model(path, vocab=30522, seq=128, min_sqnr_db=15.0)
    assert figures["kinds"].count("qmatmul") == 12


@pytest.mark.slow
def test_gpt2_decoder_4x256_quantizes_and_compiles(tmp_path):
    sizes = dict(n_layer=4, n_embd=256, n_head=4, n_positions=64, seq=64)
    path = _export("gpt2", tmp_path / "gpt2.onnx", **sizes)
    figures = _check_model(path, vocab=50257, seq=64, min_sqnr_db=15.0)
    assert figures["kinds"].count("qmatmul") == 8


def test_tiny_bert_integer_ops_are_bit_exact_on_aarch64_under_qemu(tmp_path):
    for tool in ("qemu-aarch64", "aarch64-linux-gnu-g++"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/test.sh installs it)")
    path = _export("bert", tmp_path / "bert.onnx", **TINY_BERT)
    graph = qpass.import_onnx(str(path))
    integer = qpass.quantize(graph, {"input_ids": _token_ids(2, 4, 16, 100)}, quiet=True)
    counts = check_every_op(integer, {"input_ids": _token_ids(1, 1, 16, 100)}, target="aarch64")
    print(f"aarch64 every-op check {counts}")
    assert counts["integer_exact"] == counts["integer"] > 0 and counts["float_agrees"] == counts["float"]
