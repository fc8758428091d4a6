"""Instruments observe a pipeline run: printing, dumping, timing and verifying after passes.

Passes never print or dump IR themselves; these do, hooked into the pass manager.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Optional, TextIO

from qpass.errors import PassError, QpassError
from qpass.ir.graph import Graph
from qpass.ir.serialize import atomic_write
from qpass.ir.text import print_graph


class Instrument:
    """Hooks called by the pass manager; override the ones you need."""

    def run_before_pipeline(self, graph: Graph, passes) -> None: ...
    def run_before_pass(self, index: int, p, graph: Graph) -> None: ...
    def run_after_pass(self, index: int, p, graph: Graph, changed: bool, seconds: float) -> None: ...
    def run_after_pipeline(self, graph: Graph) -> None: ...


class PrintAfter(Instrument):
    """Print the IR after the named passes (all of them when `names` is None)."""

    def __init__(self, names: Optional[set[str]] = None, stream: Optional[TextIO] = None):
        self.names, self.stream = names, stream

    def run_after_pass(self, index, p, graph, changed, seconds):
        if self.names is None or p.name in self.names:
            out = self.stream or sys.stderr
            out.write(f"// ----- IR after {p} ({'changed' if changed else 'unchanged'}) ----- //\n")
            out.write(print_graph(graph))
            out.flush()


class DumpIR(Instrument):
    """Write `00-input.qir`, then `NN-<pass>.qir` and `NN-<pass>.diff` after each pass that changed the IR."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.previous: Optional[tuple[str, str]] = None
        self.files: list[Path] = []

    def _write(self, stem: str, text: str) -> None:
        path = self.directory / f"{stem}.qir"
        atomic_write(path, text.encode())
        self.files.append(path)
        if self.previous is not None:
            old_name, old_text = self.previous
            diff = difflib.unified_diff(old_text.splitlines(keepends=True), text.splitlines(keepends=True),
                                        fromfile=old_name, tofile=path.name)
            diff_path = self.directory / f"{stem}.diff"
            atomic_write(diff_path, "".join(diff).encode())
            self.files.append(diff_path)
        self.previous = (path.name, text)

    def run_before_pipeline(self, graph, passes):
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise QpassError(f"cannot create the IR dump directory {self.directory}: {e.strerror}. "
                             "Choose a writable --dump-ir directory.") from None
        self._write("00-input", print_graph(graph))

    def run_after_pass(self, index, p, graph, changed, seconds):
        if changed:
            self._write(f"{index:02d}-{p.name}", print_graph(graph))


class Timing(Instrument):
    """Record wall time per pass; `report()` gives a table."""

    def __init__(self):
        self.records: list[tuple[str, float, bool]] = []

    def run_after_pass(self, index, p, graph, changed, seconds):
        self.records.append((str(p), seconds, changed))

    def report(self) -> str:
        total = sum(s for _, s, _ in self.records) or 1e-12
        width = max([len(n) for n, _, _ in self.records] + [4])
        lines = [f"{'pass':<{width}}  {'time (ms)':>10}  {'share':>6}  changed"]
        for name, seconds, changed in self.records:
            lines.append(f"{name:<{width}}  {seconds * 1e3:>10.2f}  {seconds / total:>6.1%}  {'yes' if changed else 'no'}")
        lines.append(f"{'total':<{width}}  {total * 1e3:>10.2f}")
        return "\n".join(lines)


class VerifyEach(Instrument):
    """Verify the IR after every pass, and check that a pass reporting `changed=False` changed nothing."""

    def __init__(self):
        self.before: Optional[str] = None

    def run_before_pipeline(self, graph, passes):
        try:
            graph.verify()
        except QpassError as e:
            raise PassError(f"the input IR does not verify, before any pass ran:\n{e}") from e

    def run_before_pass(self, index, p, graph):
        self.before = print_graph(graph)

    def run_after_pass(self, index, p, graph, changed, seconds):
        try:
            graph.verify()
        except QpassError as e:
            raise PassError(f"the IR does not verify after pass '{p.name}' (step {index}):\n{e}") from e
        if not changed and print_graph(graph) != self.before:
            raise PassError(f"pass '{p.name}' (step {index}) reported changed=False but changed the IR; "
                            "it must return PassResult(graph, changed=True)")
