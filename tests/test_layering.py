"""Import layering of the installed package: the core (everything under `qpass` but the built-in
passes and targets) imports neither `qpass.passes` nor `qpass.targets` (it finds them through
registries), and no two modules import each other, directly or around a cycle. Imports inside
functions count: a lazy import is still a dependency; those under `if TYPE_CHECKING:` do not
(annotations only, never executed)."""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
from pathlib import Path

import networkx as nx

PLUGINS = ("qpass.passes", "qpass.targets")


def _modules() -> dict[str, Path]:
    """Module name -> source file, for every module of the installed qpass package."""
    found = {}
    for root in ("qpass", *PLUGINS):
        spec = importlib.util.find_spec(root)
        found[root] = Path(spec.origin)
        for info in pkgutil.walk_packages(spec.submodule_search_locations, prefix=root + "."):
            module_spec = importlib.util.find_spec(info.name)
            if module_spec is not None and module_spec.origin and module_spec.origin.endswith(".py"):
                found[info.name] = Path(module_spec.origin)
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The qpass modules that module `name` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:                  # `from pkg import module` names a module
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {t for t in targets if t in modules and t != name}


def import_graph() -> nx.DiGraph:
    modules = _modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        graph.add_edges_from((name, target) for target in _imports(name, path, modules))
    return graph


def _is_core(name: str) -> bool:
    return not any(name == p or name.startswith(p + ".") for p in PLUGINS)


def test_the_import_graph_covers_the_package():
    graph = import_graph()
    assert {"qpass.ir.graph", "qpass.passmgr.manager", "qpass.passes.quantize", "qpass.targets.lower"} <= set(graph)
    assert graph.has_edge("qpass.passes.quantize", "qpass.passmgr.passes") or \
        graph.has_edge("qpass.passes.quantize", "qpass")


def test_the_core_imports_no_pass_and_no_target():
    graph = import_graph()
    wrong = sorted(f"{a} imports {b}" for a, b in graph.edges if _is_core(a) and not _is_core(b))
    assert not wrong, "the core must find passes and targets through registries:\n" + "\n".join(wrong)


def test_no_import_cycles():
    graph = import_graph()
    # A package's __init__ re-exporting its modules is not a cycle between files.
    for name in list(graph):
        for target in list(graph.successors(name)):
            if target.startswith(name + "."):
                graph.remove_edge(name, target)
    cycles = sorted(" -> ".join(c + [c[0]]) for c in nx.simple_cycles(graph) if len(c) < 8)
    assert not cycles, f"{len(cycles)} import cycles, e.g.:\n" + "\n".join(cycles[:15])
