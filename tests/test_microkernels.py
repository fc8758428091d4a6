"""The micro-kernel table (targets.microkernels): its records agree with their TVM intrinsics, every
target family gets the micro-kernel it had before the table, and conv_plan picks a layer's kernel
(or plain loops) by the table's eligibility rules. AVX-VNNI (a record added to the table) builds
VEX vpdpbusd and is bit-exact; --mcpu native takes the best kernel the host's CPU flags allow; 7-bit
weights give AVX2 its u8 x s7 kernel (tests/test_exact_avx2.py)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from qpass.errors import QpassError
from qpass.ir.types import dtype_range
from qpass.targets import registry
from qpass.targets.build import build, legalize
from qpass.targets.kernels import conv_plan
from qpass.targets.microkernels import MICRO_KERNELS
from qpass.targets.registry import FAMILIES, X86_CPU_FEATURES, CpuFamily, resolve_target
from test_backends import assert_bit_exact, conv_graph, dense_graph, quantized

AVX2 = resolve_target("x86_64-linux-gnu")
VNNI = resolve_target("x86_64-linux-gnu", mcpu="cascadelake")
AVXVNNI = resolve_target("x86_64-linux-gnu", mcpu="alderlake")
NEON = resolve_target("aarch64-linux-gnu", mattr="+neon")
SDOT = resolve_target("aarch64-linux-gnu", mattr="+neon,+dotprod")
I8MM = resolve_target("aarch64-linux-gnu", mattr="+neon,+dotprod,+i8mm")
CUDA = resolve_target("cuda", arch="sm_80")
QPASS_DTYPES = {"int8": "i8", "uint8": "u8"}


@pytest.mark.parametrize("name", sorted(MICRO_KERNELS))
def test_records_match_their_intrinsics(name):
    """The intrinsic registers, and its description has the record's block shape and operand dtypes."""
    from tvm.s_tir import TensorIntrin
    kernel = MICRO_KERNELS[name]
    desc = TensorIntrin.get(kernel.tensor_intrinsic()).desc
    a, b, c = (param.ty for param in desc.params)              # the operand buffers' types
    rows = (kernel.pixels,) if kernel.pixels > 1 else ()
    assert [int(d) for d in a.shape] == [*rows, kernel.reduction] and str(a.dtype) == kernel.activation_dtype
    assert [int(d) for d in b.shape] == [kernel.lanes, kernel.reduction] and str(b.dtype) == kernel.weight_dtype
    assert [int(d) for d in c.shape] == [*rows, kernel.lanes] and str(c.dtype) == "int32"
    assert kernel.tensor_intrinsic() == kernel.intrinsic        # registering twice is harmless


@pytest.mark.parametrize("name", sorted(MICRO_KERNELS))
def test_records_are_consistent(name):
    kernel = MICRO_KERNELS[name]
    assert kernel.family in FAMILIES
    assert kernel.activation_range == dtype_range(QPASS_DTYPES[kernel.activation_dtype])
    lo, hi = dtype_range(QPASS_DTYPES[kernel.weight_dtype])
    assert lo <= kernel.weight_range[0] <= kernel.weight_range[1] <= hi
    if kernel.fallback is not None:
        assert MICRO_KERNELS[kernel.fallback].family == kernel.family
    assert (kernel.register_budget is not None) == isinstance(FAMILIES[kernel.family], CpuFamily)


@pytest.mark.parametrize("spec, micro, activations", [
    (AVX2, "avx2", "i8"), (VNNI, "vnni", "u8"), (AVXVNNI, "avxvnni", "u8"), (NEON, None, "i8"), (SDOT, "sdot", "i8"), (I8MM, "smmla", "i8"),
    (CUDA, "dp4a", "i8"),
], ids=["avx2", "vnni", "avxvnni", "neon", "sdot", "i8mm", "cuda"])
def test_each_target_gets_its_micro_kernel(spec, micro, activations):
    assert spec.micro_kernel == micro and spec.activation_dtype == activations


@pytest.mark.parametrize("spec, micro, activations", [
    (AVX2, "avx2-u8s7", "u8"), (VNNI, "vnni", "u8"), (AVXVNNI, "avxvnni", "u8"), (NEON, None, "i8"),
    (SDOT, "sdot", "i8"), (I8MM, "smmla", "i8"), (CUDA, "dp4a", "i8"),
], ids=["avx2", "vnni", "avxvnni", "neon", "sdot", "i8mm", "cuda"])
def test_7_bit_weights_change_only_the_avx2_kernel(spec, micro, activations):
    """A graph whose weights all lie in [-64, 63] (--exact-range) gives AVX2 its u8 x s7 kernel;
    every other target keeps its kernel, and weights beyond that range keep AVX2's sign trick."""
    import dataclasses
    seven = dataclasses.replace(spec, weight_range=(-64, 63))
    assert seven.micro_kernel == micro and seven.activation_dtype == activations
    eight = dataclasses.replace(spec, weight_range=(-127, 127))
    assert (eight.micro_kernel, eight.activation_dtype) == (spec.micro_kernel, spec.activation_dtype)


def _plan(graph, spec, legal=True, dense=False):
    graph = legalize(graph, spec) if legal else graph
    return conv_plan(graph.find_ops("qdense" if dense else "qconv2d")[0], spec, dense=dense)


def _with_weight_minus_128(graph):
    weight = graph.find_ops("qconv2d")[0].inputs[1]
    data = np.array(weight.data)
    data.flat[0] = -128
    weight.data = data
    weight._digest = None
    return graph


@pytest.fixture(scope="module")
def even():
    """A 3x3 conv with an even output width (8)."""
    return quantized(conv_graph(0, in_c=8, out_c=16, hw=(8, 8), kernel=(3, 3)))


@pytest.fixture(scope="module")
def odd():
    """A 3x3 conv with an odd output width (9)."""
    return quantized(conv_graph(0, in_c=8, out_c=16, hw=(9, 9), kernel=(3, 3)))


def test_vnni_takes_u8_activations_and_packs_16x4_blocks(even):
    plan = _plan(even, VNNI)
    assert (plan.kind, plan.micro_kernel, plan.lanes, plan.reduction) == ("gemm", "vnni", 16, 4)
    assert plan.weight.shape == (1, 3, 3, 2, 16, 4)


def test_vnni_falls_back_to_avx2_for_i8_activations(even):
    assert _plan(even, VNNI, legal=False).micro_kernel == "avx2"
    assert _plan(_with_weight_minus_128(even.copy()), VNNI, legal=False).kind == "grouped"


def test_avx2_leaves_a_weight_of_minus_128_to_plain_loops(even):
    assert _plan(even, AVX2).micro_kernel == "avx2"
    plan = _plan(_with_weight_minus_128(even.copy()), AVX2)
    assert (plan.kind, plan.micro_kernel) == ("grouped", None)
    assert _plan(_with_weight_minus_128(even.copy()), VNNI).micro_kernel == "vnni"   # vpdpbusd takes -128


def test_smmla_needs_pairs_of_pixels_at_stride_1(even, odd):
    plan = _plan(even, I8MM)
    assert (plan.micro_kernel, plan.lanes, plan.reduction, plan.pixels) == ("smmla", 2, 8, 2)
    assert _plan(odd, I8MM).micro_kernel == "sdot"
    strided = quantized(conv_graph(0, in_c=8, out_c=16, hw=(8, 8), kernel=(3, 3), strides=(1, 2)))
    assert _plan(strided, I8MM).micro_kernel == "sdot"
    assert _plan(quantized(dense_graph(1, k=24, n=10)), I8MM, dense=True).micro_kernel == "sdot"


def test_dotprod_cuda_and_plain_neon(even):
    assert _plan(even, SDOT).micro_kernel == "sdot"
    assert _plan(even, CUDA).micro_kernel == "dp4a"
    plan = _plan(even, NEON)
    assert (plan.kind, plan.micro_kernel) == ("grouped", None)


# LLVM's names for the features X86_CPU_FEATURES promises.
LLVM_FEATURES = {"avx2": "avx2", "avxvnni": "avxvnni", "vnni": "avx512vnni", "avx512": "avx512f"}


@pytest.mark.parametrize("mcpu", sorted(X86_CPU_FEATURES))
def test_x86_cpus_have_the_features_llvm_gives_them(mcpu):
    """Each --mcpu's features are exactly those of LLVM's CPU of that name that the kernels use."""
    from tvm.target import codegen
    llvm = {str(f) for f in codegen.llvm_get_cpu_features(resolve_target("x86_64-linux-gnu", mcpu=mcpu).tvm_target())}
    assert X86_CPU_FEATURES[mcpu] == {ours for ours, theirs in LLVM_FEATURES.items() if theirs in llvm}


def test_avx512_vnni_comes_before_avx_vnni():
    both = resolve_target("x86_64-linux-gnu", mcpu="znver5")
    assert {"vnni", "avxvnni"} <= both.features and both.micro_kernel == "vnni"
    assert resolve_target("x86_64-linux-gnu", mcpu="znver4").micro_kernel == "vnni"      # no AVX-VNNI
    assert resolve_target("x86_64-linux-gnu", mcpu="meteorlake").micro_kernel == "avxvnni"


def test_avxvnni_packs_8x4_blocks_and_falls_back_to_avx2(even):
    plan = _plan(even, AVXVNNI)
    assert (plan.kind, plan.micro_kernel, plan.lanes, plan.reduction) == ("gemm", "avxvnni", 8, 4)
    assert plan.weight.shape == (2, 3, 3, 2, 8, 4)      # 16 output channels: 2 blocks of 8
    assert _plan(even, AVXVNNI, legal=False).micro_kernel == "avx2"
    assert _plan(_with_weight_minus_128(even.copy()), AVXVNNI).micro_kernel == "avxvnni"


def test_avxvnni_uses_vex_vpdpbusd_ymm_and_is_bit_exact_where_the_cpu_has_it():
    """alderlake has AVX-VNNI and no AVX-512: vpdpbusd comes out VEX-encoded, on ymm, never zmm."""
    conv = build(quantized(conv_graph(4, 16, 32, (8, 8), (3, 3))), AVXVNNI)
    dense = build(quantized(dense_graph(5, 64, 32)), AVXVNNI)
    assert {k["schedule"] for k in conv.kernels if k["op"] == "qconv2d"} == {"avxvnni"}
    assert {k["schedule"] for k in dense.kernels if k["op"] == "qdense"} == {"avxvnni"}
    for built in (conv, dense):
        asm = built.executable.mod.imports[0].inspect_source("asm")
        assert re.search(r"\{vex\}\s+vpdpbusd\s+[^\n]*%ymm", asm) and "%zmm" not in asm
    ok, why = AVXVNNI.runnable_here()
    assert ok == ("avx_vnni" in registry._cpu_flags()), why
    if ok:
        assert_bit_exact(conv)
        assert_bit_exact(dense)


HOSTS = {                      # simulated /proc/cpuinfo flags -> (micro-kernel, mcpu if LLVM's host CPU is unknown)
    "avx512-vnni": ({"avx2", "avx512f", "avx512_vnni", "avx_vnni"}, "vnni", "cascadelake"),
    "avx-vnni": ({"avx2", "avx_vnni"}, "avxvnni", "alderlake"),
    "avx2": ({"avx2", "fma"}, "avx2", "x86-64-v3"),
}


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_native_takes_the_best_kernel_the_host_flags_allow(monkeypatch, host):
    flags, kernel, fallback_cpu = HOSTS[host]
    monkeypatch.setattr(registry, "_cpu_flags", lambda: set(flags))
    monkeypatch.setattr(registry.platform, "machine", lambda: "x86_64")
    for llvm_host, mcpu in (("mystery-cpu", fallback_cpu), ("znver5", "znver5" if kernel == "vnni" else fallback_cpu),
                            ("arrowlake", "arrowlake" if kernel == "avxvnni" else fallback_cpu)):
        monkeypatch.setattr(registry, "_llvm_host_cpu", lambda: llvm_host)
        spec = resolve_target("x86_64-linux-gnu", mcpu="native")
        assert (spec.micro_kernel, spec.mcpu) == (kernel, mcpu), llvm_host
        assert spec.runnable_here()[0]
        assert f"--mcpu native (= {mcpu}, {kernel}: host has " in spec.describe()


def test_native_on_this_host():
    spec = resolve_target("x86_64-linux-gnu", mcpu="native")
    flags = registry._cpu_flags()
    want = "vnni" if "avx512_vnni" in flags else "avxvnni" if "avx_vnni" in flags else "avx2"
    assert spec.micro_kernel == want and spec.runnable_here()[0] and spec.mcpu in X86_CPU_FEATURES
    assert spec.describe().startswith(f"x86_64-linux-gnu --mcpu native (= {spec.mcpu}, {want}: host has ")


def test_native_needs_an_x86_host_with_avx2(monkeypatch):
    monkeypatch.setattr(registry, "_cpu_flags", lambda: {"sse2"})
    with pytest.raises(QpassError, match="--mcpu native"):
        resolve_target("x86_64-linux-gnu", mcpu="native")
