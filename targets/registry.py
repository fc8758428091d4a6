"""Target triples and their options -> TVM target, ISA features and the int8 micro-kernel to use.

A `TargetSpec` is what every backend step reads: which dtype activations should have (u8 for
x86's u8 x s8 dot products, i8 for ARM sdot and CUDA dp4a), which dot-product micro-kernel the
conv/dense schedules tensorize with, and whether int4 weights stay packed in the artifact.
"""

from __future__ import annotations

import dataclasses
import platform
import shutil
from typing import Optional, Sequence

from qpass.errors import QpassError

X86_VNNI_CPUS = ("cascadelake", "icelake-server", "sapphirerapids")
X86_CPUS = ("x86-64-v3", "haswell", "skylake", "znver2", "znver3") + X86_VNNI_CPUS
ARM_FEATURES = ("+neon", "+dotprod", "+i8mm")
CUDA_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90")
TRIPLES = ("x86_64-linux-gnu", "aarch64-linux-gnu", "cuda")


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    """One compilation target: a triple plus CPU/features/arch, resolved and validated."""

    triple: str
    family: str                      # "x86", "arm" or "cuda"
    mcpu: Optional[str] = None
    mattr: tuple[str, ...] = ()
    arch: Optional[str] = None
    features: frozenset = frozenset()

    @property
    def activation_dtype(self) -> str:
        """The 8-bit activation dtype the target's dot products want (legalize-activations): u8 for
        vpdpbusd (u8 x s8); i8 elsewhere (AVX2's exact sign trick, sdot, smmla and dp4a are s8 x s8)."""
        return "u8" if "vnni" in self.features else "i8"

    @property
    def micro_kernel(self) -> str:
        """The dot-product instruction the conv/dense kernels are tensorized with."""
        if self.family == "x86":
            return "vnni" if "vnni" in self.features else "avx2"
        if self.family == "arm":
            return "smmla" if "i8mm" in self.features else "sdot" if "dotprod" in self.features else "neon"
        return "dp4a"

    @property
    def lanes(self) -> int:
        """Output channels one micro-kernel call produces (the packed weight block)."""
        return {"vnni": 16, "avx2": 8, "sdot": 4, "neon": 4, "smmla": 2, "dp4a": 4}[self.micro_kernel]

    @property
    def reduction(self) -> int:
        """Input channels one micro-kernel call consumes (K is padded to a multiple of this)."""
        return 8 if self.micro_kernel == "smmla" else 4

    def describe(self) -> str:
        parts = [self.triple]
        if self.mcpu:
            parts.append(f"--mcpu {self.mcpu}")
        if self.mattr:
            parts.append("--mattr " + ",".join(self.mattr))
        if self.arch:
            parts.append(f"--arch {self.arch}")
        return " ".join(parts)

    def tvm_target(self):
        """The TVM target (JSON-dict form, as TVM 0.27 wants)."""
        import tvm
        if self.family == "cuda":
            return tvm.target.Target({"kind": "cuda", "arch": self.arch},
                                     host={"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v3"})
        spec = {"kind": "llvm", "mtriple": self.triple}
        if self.family == "x86":
            spec["mcpu"] = self.mcpu
        else:
            spec["mattr"] = list(self.mattr)
        return tvm.target.Target(spec)

    def runnable_here(self) -> tuple[bool, str]:
        """Can an artifact for this target run on this machine, and if not, why."""
        host = platform.machine()
        if self.family == "x86":
            if host != "x86_64":
                return False, f"this machine is {host}, not x86_64"
            missing = {"avx2": "avx2", "vnni": "avx512_vnni"}
            flags = _cpu_flags()
            lacking = [name for name, flag in missing.items() if name in self.features and flag not in flags]
            if lacking:
                return False, f"this CPU lacks {', '.join(lacking)} (the artifact was built for {self.mcpu})"
            return True, "host x86_64"
        if self.family == "arm":
            if host == "aarch64":
                return True, "host aarch64"
            if shutil.which("qemu-aarch64"):
                return True, "under qemu-aarch64"
            return False, "this machine is x86_64 and qemu-aarch64 is not installed (apt-get install qemu-user)"
        try:
            import tvm
            if tvm.cuda(0).exist:
                return True, "CUDA device 0"
        except Exception:                               # noqa: BLE001 - no driver at all
            pass
        return False, "no CUDA GPU on this machine"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _known() -> str:
    return (f"known triples: x86_64-linux-gnu [--mcpu {'|'.join(X86_CPUS)}], "
            f"aarch64-linux-gnu [--mattr {','.join(ARM_FEATURES)}], cuda [--arch {'|'.join(CUDA_ARCHS)}]")


def resolve_target(triple: str, mcpu: Optional[str] = None, mattr: Optional[Sequence[str] | str] = None,
                   arch: Optional[str] = None) -> TargetSpec:
    """Validate a triple and its options; unknown ones raise with the list of known ones."""
    if isinstance(mattr, str):
        mattr = [m.strip() for m in mattr.split(",") if m.strip()]
    mattr = tuple(mattr or ())
    aliases = {"x86_64": "x86_64-linux-gnu", "x86_64-pc-linux-gnu": "x86_64-linux-gnu",
               "x86_64-unknown-linux-gnu": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu",
               "aarch64-unknown-linux-gnu": "aarch64-linux-gnu", "nvptx": "cuda"}
    triple = aliases.get(triple, triple)
    if triple.startswith("cuda") and ":" in triple:      # "cuda:sm_80" shorthand
        triple, arch = "cuda", arch or triple.split(":", 1)[1]
    if triple == "x86_64-linux-gnu":
        if mattr or arch:
            raise QpassError(f"x86_64-linux-gnu takes --mcpu, not --mattr/--arch; {_known()}")
        mcpu = mcpu or "x86-64-v3"
        if mcpu not in X86_CPUS:
            raise QpassError(f"unknown --mcpu {mcpu!r} for x86_64-linux-gnu; known: {', '.join(X86_CPUS)}")
        features = {"avx2"} | ({"vnni", "avx512"} if mcpu in X86_VNNI_CPUS else set())
        return TargetSpec(triple, "x86", mcpu=mcpu, features=frozenset(features))
    if triple == "aarch64-linux-gnu":
        if mcpu or arch:
            raise QpassError(f"aarch64-linux-gnu takes --mattr (e.g. +neon,+dotprod,+i8mm), not --mcpu/--arch; "
                             f"{_known()}")
        mattr = mattr or ("+neon", "+dotprod")
        unknown = [m for m in mattr if m not in ARM_FEATURES]
        if unknown:
            raise QpassError(f"unknown --mattr feature(s) {', '.join(unknown)} for aarch64-linux-gnu; "
                             f"known: {', '.join(ARM_FEATURES)}")
        mattr = tuple(dict.fromkeys(("+neon",) + mattr))
        return TargetSpec(triple, "arm", mattr=mattr, features=frozenset(m[1:] for m in mattr))
    if triple == "cuda":
        if mcpu or mattr:
            raise QpassError(f"cuda takes --arch (e.g. --arch sm_80), not --mcpu/--mattr; {_known()}")
        arch = arch or "sm_80"
        if arch not in CUDA_ARCHS:
            raise QpassError(f"unknown --arch {arch!r} for cuda; known: {', '.join(CUDA_ARCHS)}")
        number = int(arch[3:])
        features = {"dp4a", "mma_i8"} | ({"mma_i4"} if number < 90 else set())
        return TargetSpec("cuda", "cuda", arch=arch, features=frozenset(features))
    raise QpassError(f"unknown target triple {triple!r}; {_known()}")


def target_table() -> list[dict]:
    """What `qpass targets` prints: each known configuration and what it lowers to."""
    rows = []
    configs = [("x86_64-linux-gnu", {}), ("x86_64-linux-gnu", {"mcpu": "cascadelake"}),
               ("aarch64-linux-gnu", {"mattr": "+neon,+dotprod"}),
               ("aarch64-linux-gnu", {"mattr": "+neon,+dotprod,+i8mm"})]
    configs += [("cuda", {"arch": a}) for a in CUDA_ARCHS]
    for triple, options in configs:
        spec = resolve_target(triple, **options)
        ok, why = spec.runnable_here()
        rows.append({"target": spec.describe(), "activations": spec.activation_dtype,
                     "micro_kernel": spec.micro_kernel, "features": sorted(spec.features),
                     "runs_here": ok, "how": why})
    return rows
