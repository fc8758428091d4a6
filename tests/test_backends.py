"""Backends: compiled integer code equals the reference interpreter bit for bit.

Host x86 runs here; aarch64 runs under qemu-aarch64 (installed by scripts/test.sh); VNNI runs
where the CPU has it and is otherwise checked in the assembly; CUDA is checked in the PTX.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

import qpass
from qpass.errors import QpassError
from qpass.ir import Graph, TensorType
from qpass.targets.build import build
from qpass.targets.registry import resolve_target

HOST = resolve_target("x86_64-linux-gnu")
VNNI = resolve_target("x86_64-linux-gnu", mcpu="cascadelake")


def conv_graph(seed, in_c, out_c, hw, kernel, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1,
               relu=True) -> Graph:
    rng = np.random.default_rng(seed)
    g = Graph("conv")
    x = g.add_input("x", TensorType((1, in_c, *hw), "f32"))
    w = g.add_constant(rng.standard_normal((out_c, in_c // groups, *kernel)).astype(np.float32), "w")
    b = g.add_constant(rng.standard_normal(out_c).astype(np.float32), "b")
    y = g.add_op("conv2d", [x, w, b], dict(strides=list(strides), pads=list(pads), dilations=list(dilations),
                                           groups=groups), names=["conv"]).output
    if relu:
        y = g.add_op("relu", [y], names=["relu"]).output
    g.set_outputs([y])
    return g


def dense_graph(seed, k, n, batch=1, rows=()) -> Graph:
    rng = np.random.default_rng(seed)
    g = Graph("dense")
    x = g.add_input("x", TensorType((batch, *rows, k), "f32"))
    w = g.add_constant(rng.standard_normal((n, k)).astype(np.float32), "w")
    b = g.add_constant(rng.standard_normal(n).astype(np.float32), "b")
    g.set_outputs([g.add_op("dense", [x, w, b], names=["fc"]).output])
    return g


def quantized(graph, bits=8, weights="per-channel", seed=1):
    rng = np.random.default_rng(seed)
    x = graph.inputs[0]
    samples = [{x.name: rng.standard_normal(x.type.shape).astype(np.float32)} for _ in range(4)]
    return qpass.quantize(graph, samples, bits=bits, weights=weights, quiet=True)


def run_host(built, inputs):
    import tvm
    from tvm import relax
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    return [r.numpy() for r in vm["main"](*[tvm.runtime.tensor(inputs[v.name]) for v in built.graph.inputs])]


def assert_bit_exact(built, seed=7):
    rng = np.random.default_rng(seed)
    inputs = {v.name: (rng.standard_normal(v.type.shape) * 2).astype(np.float32) for v in built.graph.inputs}
    got = run_host(built, inputs)
    want = qpass.interpret(built.graph, inputs)
    for g, w in zip(got, want.values()):
        assert g.dtype == w.dtype and np.array_equal(g, w), np.abs(g - w).max()


def integer_ops(graph):
    return {op.kind for op in graph.ops}


CASES = {
    "conv3x3": dict(in_c=8, out_c=16, hw=(9, 9), kernel=(3, 3)),
    "conv-odd": dict(in_c=3, out_c=5, hw=(7, 11), kernel=(3, 2), strides=(2, 1), pads=(1, 0, 2, 1)),
    "conv-dilated": dict(in_c=6, out_c=12, hw=(10, 10), kernel=(3, 3), dilations=(2, 2), pads=(2, 2, 2, 2)),
    "pointwise": dict(in_c=16, out_c=24, hw=(5, 6), kernel=(1, 1), pads=(0, 0, 0, 0), relu=False),
    "depthwise": dict(in_c=16, out_c=16, hw=(8, 8), kernel=(3, 3), groups=16, strides=(2, 2)),
    "grouped": dict(in_c=8, out_c=8, hw=(6, 6), kernel=(3, 3), groups=2),
}


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("case", sorted(CASES))
def test_conv_bit_exact_on_host(case, bits):
    graph = quantized(conv_graph(0, **CASES[case]), bits=bits)
    assert "qconv2d" in integer_ops(graph)
    built = build(graph, HOST)
    assert_bit_exact(built)
    schedules = {k["schedule"] for k in built.kernels if k["op"] == "qconv2d"}
    # 4-bit weights fit avx2-u8s7's 7-bit range, so the host takes the full-rate kernel for them.
    expected = {"depthwise": "depthwise", "grouped": "grouped"}.get(case, "avx2-u8s7" if bits == 4 else "avx2")
    assert schedules == {expected}, (schedules, built.notes)


@pytest.mark.parametrize("weights", ["per-channel", "per-tensor"])
@pytest.mark.parametrize("bits", [8, 4])
def test_dense_bit_exact_on_host(bits, weights):
    built = build(quantized(dense_graph(1, k=37, n=21, batch=3), bits=bits, weights=weights), HOST)
    assert_bit_exact(built)
    assert {k["schedule"] for k in built.kernels if k["op"] == "qdense"} == {"avx2-u8s7" if bits == 4 else "avx2"}


@pytest.mark.parametrize("target", [HOST, VNNI], ids=["avx2", "vnni"])
def test_dense_on_a_3d_input_is_bit_exact(target):
    """[B, S, K] x [K, N], as a transformer's projections are (the rows are every leading axis)."""
    built = build(quantized(dense_graph(2, k=24, n=40, batch=1, rows=(5,))), target)
    assert built.graph.find_ops("qdense")[0].inputs[0].type.rank == 3
    if target is HOST or target.runnable_here()[0]:
        assert_bit_exact(built)


def test_weights_of_minus_128_fall_back_to_exact_loops():
    """The AVX2 sign trick is exact only for weights > -128: such layers use plain loops, and say so."""
    graph = quantized(conv_graph(2, 4, 8, (6, 6), (3, 3)))
    conv = graph.find_ops("qconv2d")[0]
    weight = conv.inputs[1]
    data = np.array(weight.data)
    data.flat[0] = -128
    weight.data = data
    weight._digest = None
    built = build(graph, HOST)
    assert_bit_exact(built)
    assert any("plain loops" in note for note in built.notes)



@pytest.mark.parametrize("target", [HOST, VNNI], ids=["avx2", "vnni"])
@pytest.mark.parametrize("shift", [None, 32], ids=["narrow", "wide"])
def test_requantize_epilogue_narrow_and_wide(target, shift):
    """The 32-bit epilogue (shift >= 33) and the int64 one (here shift 32) both equal the interpreter."""
    from qpass.targets.kernels import conv_plan
    graph = quantized(conv_graph(6, 16, 16, (7, 7), (3, 3)))
    conv = graph.find_ops("qconv2d")[0]
    if shift is not None:          # the same multiplier with less precision: m * 2^-s unchanged
        s = np.asarray(conv.attrs["shift"], np.int64)
        conv.attrs["multiplier"] = (np.asarray(conv.attrs["multiplier"], np.int64) >> (s - shift)).tolist()
        conv.attrs["shift"] = [shift] * len(s)
    built = build(graph, target)
    plan = conv_plan(built.graph.find_ops("qconv2d")[0], target)
    assert plan.epilogue.narrow == (shift is None)
    if target.runnable_here()[0]:
        assert_bit_exact(built)

def test_legalized_u8_activations_equal_the_original(tmp_path):
    graph = quantized(conv_graph(3, 8, 8, (6, 6), (3, 3)))
    legal = qpass.run_passes(graph.copy(), "legalize-activations{dtype=u8}")
    assert any(v.type.dtype == "u8" for v in legal.values())
    x = {"x": np.random.default_rng(0).standard_normal((1, 8, 6, 6)).astype(np.float32)}
    assert np.array_equal(qpass.interpret(legal, x)["relu"], qpass.interpret(graph, x)["relu"])


def test_vnni_kernels_use_vpdpbusd_and_run_where_the_cpu_has_it():
    graph = quantized(conv_graph(4, 16, 32, (8, 8), (3, 3)))
    built = build(graph, VNNI)
    asm = built.executable.mod.imports[0].inspect_source("asm")
    assert re.search(r"\bvpdpbusd\b", asm)
    assert {k["schedule"] for k in built.kernels if k["op"] == "qconv2d"} == {"vnni"}
    dense = build(quantized(dense_graph(5, 64, 32)), VNNI)
    assert re.search(r"\bvpdpbusd\b", dense.executable.mod.imports[0].inspect_source("asm"))
    if VNNI.runnable_here()[0]:
        assert_bit_exact(built)
        assert_bit_exact(dense)


def _needs_aarch64_tools():
    for tool in ("qemu-aarch64", "aarch64-linux-gnu-g++"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/test.sh installs qemu-user and g++-aarch64-linux-gnu)")


@pytest.mark.parametrize("mattr", ["+neon,+dotprod", "+neon,+dotprod,+i8mm"])
def test_aarch64_under_qemu_bit_exact(mattr):
    _needs_aarch64_tools()
    graph = quantized(conv_graph(6, 8, 16, (6, 8), (3, 3)), bits=4)
    for g in (graph, quantized(dense_graph(7, 24, 10))):
        compiled = qpass.compile(g, "aarch64-linux-gnu", mattr=mattr)
        kernel = "smmla" if "i8mm" in mattr and g is graph else "sdot"
        assert kernel in {k["schedule"] for k in compiled.report["kernels"]}
        x = {"x": np.random.default_rng(1).standard_normal(g.inputs[0].type.shape).astype(np.float32)}
        got = compiled.run(x)
        want = qpass.interpret(compiled.graph, x)
        assert all(np.array_equal(got[k], want[k]) for k in want)


def test_cuda_sm80_ptx_has_dp4a(tmp_path):
    nvcc = shutil.which("nvcc") or (shutil.which("/usr/local/cuda/bin/nvcc"))
    if nvcc is None:
        pytest.skip("nvcc is not installed; the CUDA build needs it")
    from qpass.targets.artifact import cuda_source
    built = build(quantized(conv_graph(8, 16, 32, (8, 8), (3, 3))), resolve_target("cuda", arch="sm_80"))
    assert {k["schedule"] for k in built.kernels if k["op"] == "qconv2d"} == {"dp4a"}
    source = tmp_path / "model.cu"
    source.write_text(cuda_source(built.executable))
    subprocess.run([nvcc, "--ptx", "-arch=sm_80", str(source), "-o", str(tmp_path / "model.ptx")], check=True)
    assert re.search(r"\bdp4a\.s32\.s32\b", (tmp_path / "model.ptx").read_text())


def test_unknown_targets_list_the_known_ones():
    with pytest.raises(QpassError, match="known triples"):
        resolve_target("riscv64-linux-gnu")
    with pytest.raises(QpassError, match=r"\+i8mm"):
        resolve_target("aarch64-linux-gnu", mattr="+sve")
    with pytest.raises(QpassError, match="cascadelake"):
        resolve_target("x86_64-linux-gnu", mcpu="pentium")
    with pytest.raises(QpassError, match="sm_80"):
        resolve_target("cuda", arch="sm_61")
