"""Where the core finds its code generators: a registry of backends.

A backend turns integer IR into a runnable artifact for target triples. The built-in one (TVM,
`qpass.targets`) and those of the `qpass.backends` entry-point group are found on first use; the
core never imports a backend's modules itself. A backend object offers:

    resolve_target(triple, mcpu, mattr, arch) -> spec   # validated, or QpassError listing the known
    build(graph, spec) -> built                          # .graph (the IR it implements), .spec, .notes,
                                                         # .kernels, .seconds
    write_artifact(built, outdir, report, force) -> Path
    load_artifact(outdir) -> artifact                    # .run(inputs), .runnable(), .time(inputs, n)
    target_table() -> list[dict]                         # what `qpass targets` prints
    check_output(outdir, force)                          # refuse an unusable output place up front
"""

from __future__ import annotations

import importlib
from typing import Any

from qpass.errors import QpassError

ENTRY_POINT_GROUP = "qpass.backends"
BUILTIN = {"tvm": "qpass.targets.backend"}
DEFAULT = "tvm"

_BACKENDS: dict[str, Any] = {}


def register_backend(name: str, backend: Any) -> Any:
    """Make `backend` available under `name`; a name registered twice is an error."""
    if name in _BACKENDS and _BACKENDS[name] is not backend:
        raise QpassError(f"backend name '{name}' is already registered")
    _BACKENDS[name] = backend
    return backend


def backend(name: str = DEFAULT) -> Any:
    """The backend registered as `name`, loading the built-in and plugin backends on first use."""
    if name not in _BACKENDS and name in BUILTIN:
        module = importlib.import_module(BUILTIN[name])
        register_backend(name, module.BACKEND)
    if name not in _BACKENDS:
        from importlib.metadata import entry_points
        for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
            register_backend(name, ep.load())
    if name not in _BACKENDS:
        known = sorted(set(BUILTIN) | set(_BACKENDS))
        raise QpassError(f"unknown backend '{name}'; known: {', '.join(known)}")
    return _BACKENDS[name]
