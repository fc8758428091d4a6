"""The TVM backend as the core's backend registry sees it (qpass.backends)."""

from __future__ import annotations

from qpass.targets.artifact import Artifact, write_artifact
from qpass.targets.build import build
from qpass.targets.registry import resolve_target, target_table


class TvmBackend:
    """Integer IR -> Relax + TIR with qpass's kernels -> a TVM library for a target triple."""

    name = "tvm"
    resolve_target = staticmethod(resolve_target)
    build = staticmethod(build)
    write_artifact = staticmethod(write_artifact)
    load_artifact = staticmethod(Artifact)
    target_table = staticmethod(target_table)


BACKEND = TvmBackend()
