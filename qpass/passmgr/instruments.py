"""Instruments observe a pipeline run: printing, dumping, timing and verifying after passes.

Passes never print or dump IR themselves; these do, hooked into the pass manager.
"""

from __future__ import annotations

import dataclasses
import difflib
import html
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional, TextIO

from qpass.errors import PassError, QpassError
from qpass.ir.graph import Graph
from qpass.ir.serialize import atomic_write
from qpass.ir.printer import print_graph


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


def creation_problem(directory) -> Optional[str]:
    """Why nothing can be created in the existing `directory` (None when it can): a probe entry is
    created and removed, which catches read-only mounts and /proc that permission bits do not."""
    try:
        probe = tempfile.mkdtemp(dir=directory, prefix=".qpass-probe-")
    except OSError as e:
        return e.strerror or str(e)
    os.rmdir(probe)
    return None


def check_dump_dir(directory, option: str = "--dump-ir") -> None:
    """Refuse, before any work, an IR dump directory that could not be created or written."""
    path = Path(directory)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    why = None
    if not existing.is_dir():
        why = "it is a file" if existing == path else f"{existing} is a file"
    else:
        problem = creation_problem(existing)
        if problem:
            why = f"nothing can be created in {existing} ({problem})"
    if why:
        raise QpassError(f"cannot create the IR dump directory {path}: {why}. Choose a writable {option} "
                         "directory.")


class DumpIR(Instrument):
    """Write `00-input.qir`, then `NN-<pass>.qir` and `NN-<pass>.diff` after each pass that changed the IR.

    At the end of the pipeline, `index.html` steps through every pass: its time, whether it
    changed the IR, the diff and the IR text. Used for several pipelines in turn (compile's passes,
    then the backend's legalization), it keeps numbering where the last one stopped.
    """

    def __init__(self, directory):
        self.directory = Path(directory)
        self.previous: Optional[tuple[str, str]] = None
        self.files: list[Path] = []
        self.steps: list[DumpStep] = []
        self.texts: list[str] = []
        self.offset = 0                  # passes dumped by earlier pipelines

    def _write(self, stem: str, text: str) -> str:
        """Write `stem`.qir and, after the first, its diff from the previous dump; returns the diff."""
        path = self.directory / f"{stem}.qir"
        atomic_write(path, text.encode())
        self.files.append(path)
        diff = ""
        if self.previous is not None:
            old_name, old_text = self.previous
            diff = "".join(difflib.unified_diff(old_text.splitlines(keepends=True), text.splitlines(keepends=True),
                                                fromfile=old_name, tofile=path.name))
            diff_path = self.directory / f"{stem}.diff"
            atomic_write(diff_path, diff.encode())
            self.files.append(diff_path)
        self.previous = (path.name, text)
        self.texts.append(text)
        return diff

    def run_before_pipeline(self, graph, passes):
        if self.steps:                   # a later pipeline: continue after the passes dumped so far
            self.offset = self.steps[-1].index
            text = print_graph(graph)
            if text != self.texts[-1]:   # changed between the pipelines: dump it as that pipeline's input
                self.offset += 1
                diff = self._write(f"{self.offset:02d}-input", text)
                self.steps.append(DumpStep(self.offset, "input", None, True, self.previous[0], diff,
                                           len(self.texts) - 1))
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise QpassError(f"cannot create the IR dump directory {self.directory}: {e.strerror}. "
                             "Choose a writable --dump-ir directory.") from None
        self.steps, self.texts = [], []
        self._write("00-input", print_graph(graph))
        self.steps.append(DumpStep(0, "input", None, True, "00-input.qir", "", 0))

    def run_after_pass(self, index, p, graph, changed, seconds):
        index += self.offset
        diff = self._write(f"{index:02d}-{p.name}", print_graph(graph)) if changed else ""
        self.steps.append(DumpStep(index, str(p), seconds, changed, self.previous[0], diff, len(self.texts) - 1))

    def run_after_pipeline(self, graph):
        path = self.directory / "index.html"
        atomic_write(path, dump_index_html(self.steps, self.texts).encode())
        self.files.append(path)


@dataclasses.dataclass(frozen=True)
class DumpStep:
    """One step of a dumped pipeline: the pass, its time, and the dump holding the IR after it.

    `file` is that dump's name (an earlier one when the pass changed nothing); `text` indexes the
    IR texts given with the steps.
    """

    index: int
    label: str
    seconds: Optional[float]
    changed: bool
    file: str
    diff: str
    text: int


_INDEX_STYLE = """
body { margin: 0; font: 13px system-ui, sans-serif; color: #212529; display: flex; height: 100vh; }
nav { width: 300px; overflow: auto; border-right: 1px solid #dee2e6; padding: 8px; }
nav h1 { font-size: 15px; margin: 4px 4px 8px; }
nav ol { list-style: none; padding: 0; margin: 0; }
nav li { padding: 4px 6px; border-radius: 4px; cursor: pointer; display: flex; gap: 6px; }
nav li.unchanged { color: #868e96; }
nav li.current { background: #d0ebff; }
nav .time { margin-left: auto; font-variant-numeric: tabular-nums; }
main { flex: 1; overflow: auto; padding: 8px 16px; }
header { display: flex; gap: 10px; align-items: center; }
header h2 { font-size: 16px; margin: 0; }
pre { font: 12px ui-monospace, Menlo, Consolas, monospace; background: #f8f9fa; padding: 8px; overflow: auto; }
#diff span { display: block; white-space: pre; min-width: 100%; width: max-content; }
#diff .add { background: #d3f9d8; color: #2b8a3e; }
#diff .del { background: #ffe3e3; color: #c92a2a; }
#diff .hunk { color: #1971c2; }
"""

_INDEX_SCRIPT = r"""
const dumps = JSON.parse(document.getElementById('qpass-dumps').textContent);
const items = [...document.querySelectorAll('nav li')];
let current = 0;
function lineClass(line) {
  if (line.startsWith('+++') || line.startsWith('---')) return 'file';
  return {'+': 'add', '-': 'del', '@': 'hunk'}[line[0]] || '';
}
function showStep(i) {
  current = Math.max(0, Math.min(dumps.steps.length - 1, i));
  const step = dumps.steps[current];
  items.forEach((li, j) => li.classList.toggle('current', j === current));
  items[current].scrollIntoView({block: 'nearest'});
  document.getElementById('step-title').textContent = `${String(step.index).padStart(2, '0')} ${step.label}`;
  const time = step.seconds === null ? '' : `${(step.seconds * 1e3).toFixed(2)} ms, `;
  const state = step.index === 0 ? 'the input IR' : step.changed ? 'changed the IR' : 'left the IR unchanged';
  document.getElementById('step-info').textContent = time + state;
  const diff = document.getElementById('diff');
  const lines = step.diff ? step.diff.replace(/\n$/, '').split('\n')
                          : [step.index === 0 ? '(the IR before any pass)' : step.changed ? '(no textual change)'
                                                                                          : '(unchanged)'];
  diff.replaceChildren(...lines.map(line => {
    const span = document.createElement('span');
    span.className = lineClass(line);
    span.textContent = line;
    return span;
  }));
  document.getElementById('file').textContent = step.changed ? step.file : `unchanged, as in ${step.file}`;
  document.getElementById('text').textContent = dumps.texts[step.text];
  document.getElementById('prev').disabled = current === 0;
  document.getElementById('next').disabled = current === dumps.steps.length - 1;
  history.replaceState(null, '', `#step-${step.index}`);
}
items.forEach((li, i) => li.addEventListener('click', () => showStep(i)));
document.getElementById('prev').addEventListener('click', () => showStep(current - 1));
document.getElementById('next').addEventListener('click', () => showStep(current + 1));
document.addEventListener('keydown', event => {
  if (event.key === 'ArrowLeft' || event.key === 'k') showStep(current - 1);
  if (event.key === 'ArrowRight' || event.key === 'j') showStep(current + 1);
});
const wanted = dumps.steps.findIndex(s => `#step-${s.index}` === location.hash);
showStep(wanted < 0 ? 0 : wanted);
"""


def _step_item(step: DumpStep) -> str:
    time = "" if step.seconds is None else f"{step.seconds * 1e3:.2f} ms"
    css = "changed" if step.changed else "unchanged"
    return (f'<li class="{css}"><span>{step.index:02d}</span><span>{html.escape(step.label)}</span>'
            f'<span class="time">{time}</span></li>')


def dump_index_html(steps: list[DumpStep], texts: list[str]) -> str:
    """A self-contained page stepping through a pipeline's dumps (prev/next, arrow keys, a list)."""
    total = sum(step.seconds or 0.0 for step in steps)
    data = json.dumps({"steps": [dataclasses.asdict(step) for step in steps], "texts": texts},
                      ensure_ascii=False).replace("</", "<\\/")
    items = "\n".join(_step_item(step) for step in steps)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>qpass IR dumps</title><style>{_INDEX_STYLE}</style></head>
<body>
<nav><h1>{len(steps) - 1} passes, {total * 1e3:.2f} ms</h1><ol>
{items}
</ol></nav>
<main><header><button id="prev">&#9664; prev</button><button id="next">next &#9654;</button>
<h2 id="step-title"></h2><span id="step-info"></span></header>
<h3>diff</h3><pre id="diff"></pre>
<details open><summary>IR text (<span id="file"></span>)</summary><pre id="text"></pre></details></main>
<script type="application/json" id="qpass-dumps">{data}</script>
<script>{_INDEX_SCRIPT}</script>
</body></html>
"""


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
