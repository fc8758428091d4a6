"""Compiled artifacts: what `qpass compile` writes into OUTDIR, and how `qpass run` runs it.

    OUTDIR/model.so          the library for the triple (tvm.runtime.load_module + relax.VirtualMachine)
    OUTDIR/model.qir (.npz)  the integer IR the library implements (after target legalization)
    OUTDIR/meta.json         target, input and output names/shapes/dtypes
    OUTDIR/report.json       quantization and build report (written by qpass.compiler)
    OUTDIR/report.html       the same for people: tables and an SQNR plot
    aarch64: qpass-run, libtvm_runtime.so, libtvm_ffi.so  a Python-free runner and the runtime it needs
    cuda: model.cu           the generated CUDA source, for inspection

The directory is assembled in a temporary sibling and renamed into place, so OUTDIR is either
complete or absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from qpass.errors import QpassError
from qpass.targets.registry import TargetSpec, resolve_target

LIBRARY = "model.so"
RUNNER = "qpass-run"
AARCH64_RUNTIME = ("libtvm_runtime.so", "libtvm_ffi.so")
TVM_PINS = ("apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post1")


def cache_dir() -> Path:
    return Path(os.environ.get("QPASS_CACHE", Path.home() / ".cache" / "qpass"))


def aarch64_runtime() -> Path:
    """A folder with the aarch64 TVM runtime libraries and tvm_ffi headers, fetched once from PyPI."""
    folder = cache_dir() / "aarch64-runtime"
    if all((folder / name).exists() for name in AARCH64_RUNTIME) and (folder / "include").is_dir():
        return folder
    import zipfile
    from qpass.targets.build import progress
    with tempfile.TemporaryDirectory() as tmp:
        bar = progress(len(TVM_PINS), "aarch64 runtime (first run only)")
        try:
            for pin in TVM_PINS:                       # one wheel at a time, so the bar moves
                bar.set_description_str(f"downloading {pin} for aarch64 (first run only)")
                cmd = ["python3", "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                       "--platform", "manylinux_2_28_aarch64", "--python-version", "3.11", "-d", tmp, pin]
                result = subprocess.run(cmd, capture_output=True, text=True)
                if result.returncode != 0:
                    raise QpassError("cannot fetch the aarch64 TVM runtime (pip download of the apache-tvm and "
                                     f"apache-tvm-ffi aarch64 wheels failed: {result.stderr.strip()[-300:]}); check "
                                     f"network access to PyPI or put {', '.join(AARCH64_RUNTIME)} and tvm_ffi's "
                                     f"include/ in {folder}")
                bar.update()
        finally:
            bar.close()
        staging = Path(tempfile.mkdtemp(dir=cache_dir() if cache_dir().exists() else None))
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as z:
                for member in z.namelist():
                    if member.endswith(("tvm/lib/libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so")):
                        (staging / Path(member).name).write_bytes(z.read(member))
                    elif member.startswith("tvm_ffi/include/"):
                        target = staging / "include" / member[len("tvm_ffi/include/"):]
                        if not member.endswith("/"):
                            target.parent.mkdir(parents=True, exist_ok=True)
                            target.write_bytes(z.read(member))
        folder.parent.mkdir(parents=True, exist_ok=True)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    return folder


def build_runner(out: Path) -> None:
    """Cross-compile the C++ runner (targets/runner/runner.cc) for aarch64 into `out`."""
    compiler = shutil.which("aarch64-linux-gnu-g++")
    if compiler is None:
        raise QpassError("aarch64-linux-gnu-g++ is not installed; it links the aarch64 library and runner "
                         "(apt-get install g++-aarch64-linux-gnu)")
    runtime = aarch64_runtime()
    source = Path(__file__).parent / "runner" / "runner.cc"
    cmd = [compiler, "-std=c++17", "-O2", "-I", str(runtime / "include"), str(source), "-o", str(out / RUNNER),
           "-L", str(runtime), "-ltvm_ffi", "-Wl,-rpath,$ORIGIN"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise QpassError(f"building the aarch64 runner failed: {result.stderr.strip()[-600:]}")
    for name in AARCH64_RUNTIME:
        shutil.copy(runtime / name, out / name)


def _describe(values) -> list[dict]:
    return [{"name": v.name, "shape": list(v.type.shape), "dtype": v.type.dtype} for v in values]


def write_artifact(built, outdir, report: dict, force: bool = False) -> Path:
    """Write OUTDIR whole (temporary sibling, then rename); refuses to replace it without `force`."""
    from qpass.ir import save
    from qpass.ir.serialize import atomic_write
    outdir = Path(outdir)
    if outdir.exists() and not force:
        raise QpassError(f"{outdir} exists; pass --force to replace it, or choose another -o")
    parent = outdir.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise QpassError(f"cannot write {outdir}: the directory {parent} does not exist or is not writable")
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{outdir.name}."))
    try:
        spec = built.spec
        family = spec.family_target
        cc, package = family.linker or (None, None)
        if cc and shutil.which(cc) is None:
            raise QpassError(f"{cc} is not installed; it links the {spec.triple} library (apt-get install "
                             f"{package})")
        built.executable.export_library(str(staging / LIBRARY), **({"cc": cc} if cc else {}))
        if family.standalone_runner:
            build_runner(staging)
        if family.device_source:
            kind, name = family.device_source
            (staging / name).write_text(device_source(built.executable, kind))
        save(built.graph, staging / "model.qir")
        meta = {"target": {"triple": spec.triple, "mcpu": spec.mcpu, "mattr": list(spec.mattr), "arch": spec.arch},
                "inputs": _describe(built.graph.inputs), "outputs": _describe(built.graph.outputs)}
        atomic_write(staging / "meta.json", json.dumps(meta, indent=2).encode())
        atomic_write(staging / "report.json", json.dumps(report, indent=2, default=_jsonable).encode())
        from qpass.tools.report_html import render_report_html
        atomic_write(staging / "report.html", render_report_html(report, built.graph).encode())
        if outdir.exists():
            shutil.rmtree(outdir)
        staging.rename(outdir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return outdir


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def device_source(executable, kind: str) -> str:
    """The source TVM generated for the device module of `kind` inside the host module ("" if none)."""
    def find(module):
        if module.kind == kind:
            return module
        for child in module.imports:
            found = find(child)
            if found is not None:
                return found
        return None
    device = find(executable.mod)
    return device.inspect_source(kind) if device is not None else ""


def cuda_source(executable) -> str:
    """The CUDA C source TVM generated."""
    return device_source(executable, "cuda")


def physical_cores() -> int:
    """Cores (not hyperthreads) among the CPUs this process may run on."""
    cpus = os.sched_getaffinity(0)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(tuple((topology / name).read_text().strip() for name in ("physical_package_id", "core_id")))
        except OSError:
            return len(cpus)
    return len(cores) or len(cpus)


def use_every_core() -> None:
    """One TVM worker thread per physical core, unless TVM_NUM_THREADS says otherwise.

    TVM's default is half the logical CPUs, which assumes two hyperthreads per core: on a machine
    without SMT (such as a 2-vCPU cloud VM) it leaves half the cores idle. TVM reads the variable
    when its thread pool starts (the first parallel kernel in the process), so this runs before
    qpass creates a VM; it cannot resize a pool that other TVM code in the process already started.
    """
    os.environ.setdefault("TVM_NUM_THREADS", str(physical_cores()))


class Artifact:
    """A compiled OUTDIR, loaded for running."""

    def __init__(self, outdir):
        self.dir = Path(outdir)
        meta_path = self.dir / "meta.json"
        if not meta_path.is_file() or not (self.dir / LIBRARY).is_file():
            raise QpassError(f"{outdir} is not a qpass artifact (no meta.json or {LIBRARY}); make one with "
                             "`qpass compile MODEL --target TRIPLE -o OUTDIR`")
        self.meta = json.loads(meta_path.read_text())
        t = self.meta["target"]
        self.spec: TargetSpec = resolve_target(t["triple"], t["mcpu"], t["mattr"] or None, t["arch"])
        self._vm = None

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.meta["inputs"]]

    def check_inputs(self, inputs: dict) -> list[np.ndarray]:
        from qpass.ir.types import numpy_dtype
        arrays = []
        for spec in self.meta["inputs"]:
            if spec["name"] not in inputs:
                raise QpassError(f"missing input {spec['name']!r}; the model takes "
                                 + ", ".join(f"{i['name']}: {i['dtype']}{i['shape']}" for i in self.meta["inputs"]))
            array = np.asarray(inputs[spec["name"]])
            if list(array.shape) != spec["shape"]:
                raise QpassError(f"input {spec['name']!r} has shape {list(array.shape)}, the model expects "
                                 f"{spec['shape']}")
            arrays.append(np.ascontiguousarray(array.astype(numpy_dtype(spec["dtype"]), copy=False)))
        unknown = set(inputs) - set(self.input_names)
        if unknown:
            raise QpassError(f"unknown input(s) {', '.join(sorted(unknown))}; the model takes "
                             f"{', '.join(self.input_names)}")
        return arrays

    def runnable(self) -> tuple[bool, str]:
        return self.spec.runnable_here()

    def run(self, inputs: dict) -> dict[str, np.ndarray]:
        """Run on this machine (host, qemu-aarch64, or the GPU); outputs by name."""
        arrays = self.check_inputs(inputs)
        ok, why = self.runnable()
        if not ok:
            raise QpassError(f"cannot run a {self.spec.describe()} artifact here: {why}")
        if self.spec.family_target.emulated():
            results = self._run_emulated(arrays)
        else:
            results = self._run_vm(arrays)
        return {o["name"]: r for o, r in zip(self.meta["outputs"], results)}

    def vm_function(self):
        """The Relax VM's `main` on this machine (host x86 or CUDA) and its device, loaded once."""
        if self._vm is None:
            import tvm
            from tvm import relax
            device = self.spec.family_target.device()
            use_every_core()
            library = tvm.runtime.load_module(str(self.dir / LIBRARY))
            self._vm = (relax.VirtualMachine(library, device)["main"], device)
        return self._vm

    def _run_vm(self, arrays):
        import tvm
        main, device = self.vm_function()
        result = main(*[tvm.runtime.tensor(a, device) for a in arrays])
        return [r.numpy() for r in result]

    def _run_emulated(self, arrays):
        """Run the standalone runner under the family's emulator, through .npy files."""
        if not (self.dir / RUNNER).is_file():
            raise QpassError(f"{self.dir} has no {RUNNER}; recompile it for {self.spec.triple}")
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for k, a in enumerate(arrays):
                paths.append(str(Path(tmp) / f"in{k}.npy"))
                np.save(paths[-1], a)
            emulator = self.spec.family_target.emulator_command(
                {"LD_PRELOAD": "./libtvm_runtime.so", "LD_LIBRARY_PATH": "."})
            cmd = [*emulator, f"./{RUNNER}", LIBRARY, *paths, "-o", str(Path(tmp) / "out")]
            result = subprocess.run(cmd, cwd=self.dir, capture_output=True, text=True)
            if result.returncode != 0:
                raise QpassError(f"the {self.spec.triple} runner failed under {emulator[0]} (exit "
                                 f"{result.returncode}): {result.stderr.strip()[-600:]}")
            return [np.load(Path(tmp) / f"out{k}.npy") for k in range(len(self.meta["outputs"]))]

    def time(self, inputs: dict, repeat: int = 20) -> Optional[dict]:
        """Median and spread of run time in ms where the library runs natively (not under qemu)."""
        import time as clock
        if not self.runnable()[0] or self.spec.family_target.emulated():
            return None
        import tvm
        main, device = self.vm_function()
        args = [tvm.runtime.tensor(a, device) for a in self.check_inputs(inputs)]
        main(*args)
        samples = []
        for _ in range(repeat):
            start = clock.perf_counter()
            main(*args)
            device.sync()
            samples.append((clock.perf_counter() - start) * 1e3)
        return {"median_ms": float(np.median(samples)), "p10_ms": float(np.percentile(samples, 10)),
                "p90_ms": float(np.percentile(samples, 90)), "runs": repeat}
