"""Target triples and their options -> TVM target, ISA features and the int8 micro-kernel to use.

A `TargetSpec` is what every backend step reads: which dtype activations should have (u8 for
x86's u8 x s8 dot products, i8 for ARM sdot and CUDA dp4a), which dot-product micro-kernel the
conv/dense schedules tensorize with (targets.microkernels), and whether int4 weights stay packed
in the artifact. What differs between the target families (x86, arm, cuda): the options a triple
takes, the TVM target, whether an artifact runs here, the schedules, the Relax pipeline and how an
artifact is linked and run, is a method or field of the family's `Family` object
(`spec.family_target`), so no other module asks which family a target is.
"""

from __future__ import annotations

import dataclasses
import platform
import shutil
from typing import Optional, Sequence

from qpass.errors import QpassError
from qpass.targets import microkernels, schedule

_AVX2, _AVXVNNI, _VNNI = frozenset({"avx2"}), frozenset({"avx2", "avxvnni"}), frozenset({"avx2", "vnni", "avx512"})
# Each --mcpu and the ISA features qpass's micro-kernels need from it (LLVM's CPU implies them; a
# test checks the two agree). AVX-VNNI (VEX vpdpbusd ymm) without AVX-512: Alder Lake and later
# client parts; both on Sapphire Rapids and Zen 5 (which take the AVX-512 VNNI kernel first).
X86_CPU_FEATURES = {
    "x86-64-v3": _AVX2, "haswell": _AVX2, "skylake": _AVX2, "znver2": _AVX2, "znver3": _AVX2,
    "alderlake": _AVXVNNI, "raptorlake": _AVXVNNI, "meteorlake": _AVXVNNI, "arrowlake": _AVXVNNI,
    "lunarlake": _AVXVNNI,
    "cascadelake": _VNNI, "icelake-server": _VNNI, "znver4": _VNNI,
    "sapphirerapids": _VNNI | _AVXVNNI, "znver5": _VNNI | _AVXVNNI,
}
X86_CPUS = tuple(X86_CPU_FEATURES)
# --mcpu native: the first host /proc/cpuinfo flag present picks the micro-kernel; the mcpu is LLVM's
# name for the host CPU when it is one of X86_CPUS with that micro-kernel, else this CPU.
X86_NATIVE = (("avx512_vnni", "vnni", "cascadelake"), ("avx_vnni", "avxvnni", "alderlake"),
              ("avx2", "avx2", "x86-64-v3"))
X86_HOST_FLAGS = {"avx2": "avx2", "avxvnni": "avx_vnni", "vnni": "avx512_vnni"}   # feature: cpuinfo flag
ARM_FEATURES = ("+neon", "+dotprod", "+i8mm")
CUDA_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90")
QPASS_DTYPES = {"int8": "i8", "uint8": "u8"}


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    """One compilation target: a triple plus CPU/features/arch, resolved and validated."""

    triple: str
    family: str                      # "x86", "arm" or "cuda": a key of FAMILIES
    mcpu: Optional[str] = None
    mattr: tuple[str, ...] = ()
    arch: Optional[str] = None
    features: frozenset = frozenset()
    native: Optional[str] = None     # for --mcpu native: why mcpu is what it is (the host flag that chose it)
    weight_range: Optional[tuple[int, int]] = None   # set by `fitted`: the graph's conv/dense weights' (lo, hi)

    @property
    def family_target(self) -> "Family":
        """The family object that knows everything family-specific about this target."""
        return FAMILIES[self.family]

    @property
    def activation_dtype(self) -> str:
        """The 8-bit activation dtype the target's micro-kernel wants (legalize-activations): u8 for
        vpdpbusd (u8 x s8) and AVX2's u8 x s7 kernel; i8 elsewhere (AVX2's exact sign trick for
        8-bit weights, sdot, smmla and dp4a are s8 x s8)."""
        kernel = microkernels.for_target(self.family, self.features, self.weight_range)
        return QPASS_DTYPES[kernel.activation_dtype] if kernel is not None else "i8"

    @property
    def micro_kernel(self) -> Optional[str]:
        """The dot-product micro-kernel the conv/dense kernels are tensorized with; None for a
        target without one (aarch64 without +dotprod), whose convolutions are plain loops."""
        kernel = microkernels.for_target(self.family, self.features, self.weight_range)
        return kernel.name if kernel is not None else None

    def fitted(self, graph) -> "TargetSpec":
        """This target for one integer graph: its micro-kernel may need narrower weights than any
        8-bit ones (AVX2's u8 x s7 kernel: [-64, 63]) when all the graph's conv/dense weights fit."""
        from qpass.targets.kernels import gemm_weight_range
        return dataclasses.replace(self, weight_range=gemm_weight_range(graph))

    def describe(self) -> str:
        """The target as command-line options: `aarch64-linux-gnu --mattr +neon,+dotprod`."""
        parts = [self.triple]
        if self.native:
            parts.append(f"--mcpu native (= {self.mcpu}, {self.micro_kernel}: {self.native})")
        elif self.mcpu:
            parts.append(f"--mcpu {self.mcpu}")
        if self.mattr:
            parts.append("--mattr " + ",".join(self.mattr))
        if self.arch:
            parts.append(f"--arch {self.arch}")
        return " ".join(parts)

    def tvm_target(self):
        """The TVM target (JSON-dict form, as TVM 0.27 wants)."""
        return self.family_target.tvm_target(self)

    def runnable_here(self) -> tuple[bool, str]:
        """Can an artifact for this target run on this machine, and if not, why."""
        return self.family_target.runnable_here(self)


class Family:
    """What one target family does its own way (one instance per family, in FAMILIES)."""

    name: str                        # TargetSpec.family
    triple: str
    options: str                     # the options the triple takes, for messages listing known targets
    table_options: tuple[dict, ...]  # the configurations `qpass targets` lists
    linker: Optional[tuple[str, str]] = None   # (C++ compiler linking its libraries, its apt package)
    standalone_runner = False        # artifacts carry qpass-run, the Python-free C++ runner
    device_source: Optional[tuple[str, str]] = None   # (module kind, file): generated device code to keep
    default_schedule = False         # the Relax pipeline schedules the kernels qpass leaves unscheduled

    def resolve(self, mcpu: Optional[str], mattr: tuple[str, ...], arch: Optional[str]) -> TargetSpec:
        """Validate the triple's options; wrong ones raise with what is known."""
        raise NotImplementedError

    def tvm_target(self, spec: TargetSpec):
        """The TVM target for `spec`."""
        raise NotImplementedError

    def runnable_here(self, spec: TargetSpec) -> tuple[bool, str]:
        """Can an artifact for `spec` run on this machine, and if not, why."""
        raise NotImplementedError

    def emulated(self) -> bool:
        """Does an artifact run here only under an emulator (then through its standalone runner)?"""
        return False

    def emulator_command(self, env: dict[str, str]) -> list[str]:
        """The command prefix that runs one of the family's programs here with environment `env`."""
        raise QpassError(f"{self.triple} artifacts run natively; there is no emulator for them")

    def device(self):
        """The TVM device an artifact's VM runs on."""
        raise NotImplementedError

    def schedule_conv(self, sch, plan) -> None:
        """qpass's schedule for a conv/dense kernel (plan: kernels.ConvPlan)."""
        raise NotImplementedError

    def schedule_elementwise(self, sch) -> None:
        """qpass's schedule for an elementwise kernel (families with `default_schedule` have none)."""
        raise NotImplementedError

    def relax_steps(self) -> list:
        """Relax passes between legalization and TVM's default build pipeline."""
        return []


class CpuFamily(Family):
    """A CPU: qpass's CPU schedules, the host's TVM device."""

    def device(self):
        import tvm
        return tvm.cpu(0)

    def schedule_conv(self, sch, plan):
        schedule.schedule_cpu_conv(sch, plan)

    def schedule_elementwise(self, sch):
        schedule.schedule_cpu_elementwise(sch)

    def relax_steps(self):
        """After legalization: parallel loops for the kernels TVM legalized from Relax ops."""
        import tvm

        @tvm.transform.module_pass(opt_level=0, name="qpass.ScheduleLegalized")
        def schedule_legalized(mod, ctx):
            for gv, func in list(mod.functions.items()):
                if not isinstance(func, tvm.tirx.PrimFunc) or (func.attrs and "tir.is_scheduled" in func.attrs):
                    continue
                sch = tvm.s_tir.Schedule(func)
                try:
                    if not schedule.schedule_cpu_legalized(sch):
                        continue
                except Exception:      # noqa: BLE001 - a shape the generic schedule does not take stays as is
                    continue
                mod[gv] = sch.mod["main"].with_attr("tir.is_scheduled", True)
            return mod
        return [schedule_legalized]


class X86(CpuFamily):
    """x86-64 with AVX2, optionally AVX-VNNI (`--mcpu alderlake`) or AVX-512 VNNI (`--mcpu cascadelake`),
    or whatever this machine has (`--mcpu native`)."""

    name, triple = "x86", "x86_64-linux-gnu"
    options = f"x86_64-linux-gnu [--mcpu native|{'|'.join(X86_CPUS)}]"
    table_options = ({}, {"mcpu": "alderlake"}, {"mcpu": "cascadelake"}, {"mcpu": "native"})

    def resolve(self, mcpu, mattr, arch):
        if mattr or arch:
            raise QpassError(f"x86_64-linux-gnu takes --mcpu, not --mattr/--arch; {_known()}")
        if mcpu == "native":
            return self._resolve_native()
        mcpu = mcpu or "x86-64-v3"
        if mcpu not in X86_CPUS:
            raise QpassError(f"unknown --mcpu {mcpu!r} for x86_64-linux-gnu; known: native, {', '.join(X86_CPUS)}")
        return TargetSpec(self.triple, self.name, mcpu=mcpu, features=X86_CPU_FEATURES[mcpu])

    def _resolve_native(self) -> TargetSpec:
        """The best micro-kernel the host's CPU flags allow, with an mcpu that builds code for it."""
        flags = _cpu_flags()
        choice = next(((flag, kernel, cpu) for flag, kernel, cpu in X86_NATIVE if flag in flags), None)
        if choice is None or platform.machine() != "x86_64":
            raise QpassError(f"--mcpu native: this machine ({platform.machine()}) is not an x86-64 CPU with avx2; "
                             f"give a named --mcpu ({', '.join(X86_CPUS)})")
        flag, kernel, mcpu = choice
        host = _llvm_host_cpu()
        if host in X86_CPU_FEATURES and microkernels.for_target(self.name, X86_CPU_FEATURES[host]).name == kernel:
            mcpu = host
        return TargetSpec(self.triple, self.name, mcpu=mcpu, features=X86_CPU_FEATURES[mcpu],
                          native=f"host has {flag}" + (f"; LLVM's host CPU {host}" if host and host != mcpu else ""))

    def tvm_target(self, spec):
        import tvm
        return tvm.target.Target({"kind": "llvm", "mtriple": spec.triple, "mcpu": spec.mcpu})

    def runnable_here(self, spec):
        host = platform.machine()
        if host != "x86_64":
            return False, f"this machine is {host}, not x86_64"
        flags = _cpu_flags()
        lacking = [flag for name, flag in X86_HOST_FLAGS.items() if name in spec.features and flag not in flags]
        if lacking:
            return False, f"this CPU lacks {', '.join(lacking)} (the artifact was built for {spec.mcpu})"
        return True, "host x86_64"


class Arm(CpuFamily):
    """aarch64 with NEON, optionally dotprod (sdot) and i8mm (smmla); runs under qemu elsewhere."""

    name, triple = "arm", "aarch64-linux-gnu"
    options = f"aarch64-linux-gnu [--mattr {','.join(ARM_FEATURES)}]"
    table_options = ({"mattr": "+neon,+dotprod"}, {"mattr": "+neon,+dotprod,+i8mm"})
    linker = ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu")
    standalone_runner = True

    def resolve(self, mcpu, mattr, arch):
        if mcpu or arch:
            raise QpassError(f"aarch64-linux-gnu takes --mattr (e.g. +neon,+dotprod,+i8mm), not --mcpu/--arch; "
                             f"{_known()}")
        mattr = mattr or ("+neon", "+dotprod")
        unknown = [m for m in mattr if m not in ARM_FEATURES]
        if unknown:
            raise QpassError(f"unknown --mattr feature(s) {', '.join(unknown)} for aarch64-linux-gnu; "
                             f"known: {', '.join(ARM_FEATURES)}")
        mattr = tuple(dict.fromkeys(("+neon",) + mattr))
        return TargetSpec(self.triple, self.name, mattr=mattr, features=frozenset(m[1:] for m in mattr))

    def tvm_target(self, spec):
        import tvm
        return tvm.target.Target({"kind": "llvm", "mtriple": spec.triple, "mattr": list(spec.mattr)})

    def runnable_here(self, spec):
        if platform.machine() == "aarch64":
            return True, "host aarch64"
        if shutil.which("qemu-aarch64"):
            return True, "under qemu-aarch64"
        return False, "this machine is x86_64 and qemu-aarch64 is not installed (apt-get install qemu-user)"

    def emulated(self):
        return platform.machine() != "aarch64"

    def emulator_command(self, env):
        command = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]
        for key, value in env.items():
            command += ["-E", f"{key}={value}"]
        return command


class Cuda(Family):
    """NVIDIA GPUs (dp4a), host code for x86-64; qpass schedules the conv kernels, dlight the rest."""

    name, triple = "cuda", "cuda"
    options = f"cuda [--arch {'|'.join(CUDA_ARCHS)}]"
    table_options = tuple({"arch": a} for a in CUDA_ARCHS)
    device_source = ("cuda", "model.cu")
    default_schedule = True

    def resolve(self, mcpu, mattr, arch):
        if mcpu or mattr:
            raise QpassError(f"cuda takes --arch (e.g. --arch sm_80), not --mcpu/--mattr; {_known()}")
        arch = arch or "sm_80"
        if arch not in CUDA_ARCHS:
            raise QpassError(f"unknown --arch {arch!r} for cuda; known: {', '.join(CUDA_ARCHS)}")
        number = int(arch[3:])
        features = {"dp4a", "mma_i8"} | ({"mma_i4"} if number < 90 else set())
        return TargetSpec(self.triple, self.name, arch=arch, features=frozenset(features))

    def tvm_target(self, spec):
        import tvm
        return tvm.target.Target({"kind": "cuda", "arch": spec.arch},
                                 host={"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v3"})

    def runnable_here(self, spec):
        try:
            import tvm
            if tvm.cuda(0).exist:
                return True, "CUDA device 0"
        except Exception:                               # noqa: BLE001 - no driver at all
            pass
        return False, "no CUDA GPU on this machine"

    def device(self):
        import tvm
        return tvm.cuda(0)

    def schedule_conv(self, sch, plan):
        schedule.schedule_cuda_conv(sch, plan)

    def relax_steps(self):
        from tvm.s_tir import dlight
        return [dlight.ApplyDefaultSchedule(dlight.gpu.Reduction(), dlight.gpu.GeneralReduction(),
                                            dlight.gpu.Fallback())]


FAMILIES: dict[str, Family] = {family.name: family for family in (X86(), Arm(), Cuda())}


def _cpu_flags() -> set[str]:
    """This machine's CPU flags (/proc/cpuinfo); tests replace it to simulate another host."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _llvm_host_cpu() -> Optional[str]:
    """LLVM's name for this machine's CPU (e.g. znver5, alderlake); None if TVM cannot tell."""
    try:
        from tvm.target import codegen
        return str(codegen.llvm_get_system_cpu())
    except Exception:                               # noqa: BLE001 - TVM without LLVM
        return None


def _known() -> str:
    return "known triples: " + ", ".join(family.options for family in FAMILIES.values())


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
    for family in FAMILIES.values():
        if family.triple == triple:
            return family.resolve(mcpu, mattr, arch)
    raise QpassError(f"unknown target triple {triple!r}; {_known()}")


def target_table() -> list[dict]:
    """What `qpass targets` prints: each known configuration and what it lowers to."""
    rows = []
    for family in FAMILIES.values():
        for options in family.table_options:
            try:
                spec = resolve_target(family.triple, **options)
            except QpassError:                      # --mcpu native on a host that has no x86 kernel
                continue
            ok, why = spec.runnable_here()
            rows.append({"target": spec.describe(), "activations": spec.activation_dtype,
                         "micro_kernel": spec.micro_kernel, "features": sorted(spec.features),
                         "runs_here": ok, "how": why})
    return rows
