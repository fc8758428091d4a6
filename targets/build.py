"""Integer IR -> scheduled Relax/TIR module -> TVM executable for a target."""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Optional

from qpass.errors import QpassError
from qpass.passmgr.manager import run_passes
from qpass.targets.lower import Lowered, lower
from qpass.targets.registry import TargetSpec


@dataclasses.dataclass
class Built:
    """What `build` made: the executable, the IR it implements, and notes for the report."""

    executable: object               # tvm.relax.VMExecutable
    graph: object                    # the legalized integer IR the executable implements
    spec: TargetSpec
    notes: list[str]
    kernels: list[dict]
    seconds: float


class _NoProgress:
    """What `progress` gives when it is silent."""

    def update(self, n: int = 1) -> None:
        pass

    def set_description_str(self, desc: str) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int, desc: str, quiet: Optional[bool] = None):
    """A tqdm bar on stderr for `total` steps; silent when `quiet` (None: the current PassContext's
    setting), when stderr is not a terminal, or without tqdm."""
    if quiet is None:
        from qpass.passmgr.manager import PassContext
        quiet = PassContext.current().quiet
    if quiet or not sys.stderr.isatty():
        return _NoProgress()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoProgress()
    return tqdm(total=total, desc=desc, unit="step", leave=False, file=sys.stderr)


def legalize(graph, spec: TargetSpec):
    """The target-independent IR adjusted for `spec` (activation signedness)."""
    return run_passes(graph.copy(), f"legalize-activations{{dtype={spec.activation_dtype}}}")


def schedule(lowered: Lowered, spec: TargetSpec, bar=None) -> tuple[object, list[dict]]:
    """Apply qpass's schedule to each kernel; a kernel whose schedule fails stays correct but slow.
    `bar` (see `progress`) advances one step per kernel."""
    import tvm
    family = spec.family_target
    mod = lowered.module
    summary = []
    bar = bar or _NoProgress()
    for kernel in lowered.kernels:
        bar.set_description_str(f"scheduling {kernel.name}")
        bar.update()
        gv = mod.get_global_var(kernel.name)
        sch = tvm.s_tir.Schedule(mod[gv])
        how = "plain loops"
        try:
            if kernel.kind == "conv":
                family.schedule_conv(sch, kernel.plan)
                how = kernel.plan.micro_kernel or kernel.plan.kind
            elif family.default_schedule:
                continue                # elementwise kernels get the pipeline's (dlight's on a GPU)
            else:
                family.schedule_elementwise(sch)
                how = "vectorized"
        except Exception as e:          # noqa: BLE001 - TVM raises many kinds; the kernel stays unscheduled
            lowered.notes.append(f"{kernel.name}: schedule failed ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:160]}); left as plain loops")
            sch = tvm.s_tir.Schedule(mod[gv])
            how = "unscheduled"
            if family.default_schedule:
                continue
        mod[gv] = sch.mod["main"].with_attr("tir.is_scheduled", True)
        summary.append({"kernel": kernel.name, "op": kernel.op, "schedule": how})
    return mod, summary


def relax_pipeline(spec: TargetSpec):
    """Legalize the Relax ops, the family's own steps (dlight on CUDA), then TVM's default build."""
    import tvm
    from tvm import relax
    steps = [relax.transform.LegalizeOps(), *spec.family_target.relax_steps(),
             relax.pipeline.default_build_pipeline()]
    return tvm.transform.Sequential(steps)


def build(graph, spec: TargetSpec, quiet: Optional[bool] = None) -> Built:
    """Compile an integer graph for `spec`, with a progress bar (see `progress`): one step per
    kernel scheduled, then TVM's build (Relax pipeline and code generation)."""
    import tvm
    start = time.perf_counter()
    spec = spec.fitted(graph)           # the micro-kernel for this graph's weights (and its activation dtype)
    legal = legalize(graph, spec)
    lowered = lower(legal, spec)
    bar = progress(len(lowered.kernels) + 1, "scheduling", quiet)
    try:
        mod, summary = schedule(lowered, spec, bar)
        bar.set_description_str(f"tvm.compile for {spec.triple}")
        try:
            executable = tvm.compile(mod, target=spec.tvm_target(), relax_pipeline=relax_pipeline(spec))
        except Exception as e:          # noqa: BLE001
            raise QpassError(f"TVM failed to build the model for {spec.describe()}: {type(e).__name__}: "
                             f"{str(e).strip().splitlines()[-1][:400]}") from e
        bar.update()
    finally:
        bar.close()
    return Built(executable, legal, spec, lowered.notes, summary, time.perf_counter() - start)
