"""Running pipelines: `PassContext` holds settings, instruments and analysis results."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Optional, Sequence, Union

from qpass.errors import PassError, QpassError
from qpass.passmgr.instruments import Instrument, VerifyEach
from qpass.ir.graph import Graph
from qpass.passmgr.passes import Pass, PassResult
from qpass.passmgr.pipeline import format_pass, parse_pipeline

_local = threading.local()


@dataclasses.dataclass
class Analyses:
    """Results that analysis passes leave for later passes and for the report, each field owned
    (written) by one pass; `custom` is for passes outside qpass (key them by your pass's name)."""

    ranges: Optional[dict[str, tuple[float, float]]] = None   # range-analysis: value name -> (lo, hi)
    range_method: Optional[str] = None                         # range-analysis: the observer used
    float_ops: dict[str, str] = dataclasses.field(default_factory=dict)   # fold-fake-quant: op -> why float
    bitwidth: Optional[dict[str, dict]] = None                 # assign-bitwidth: layer -> bits, sensitivity
    adaround: Optional[dict[str, dict]] = None                 # adaround: layer -> loss before/after
    custom: dict[str, Any] = dataclasses.field(default_factory=dict)


class PassContext:
    """Settings for a pipeline run, used as `with PassContext(...) as ctx:`.

    The caller owns the settings (`calibration`: a list of samples, each input name -> array;
    `quiet`: no progress bars); passes read them. `analyses` holds what analysis passes found
    (see `Analyses`).
    """

    def __init__(self, instruments: Sequence[Instrument] = (), verify_each: bool = False, *,
                 calibration: Optional[list[dict]] = None, quiet: bool = False):
        self.instruments = list(instruments)
        if verify_each and not any(isinstance(i, VerifyEach) for i in self.instruments):
            self.instruments.append(VerifyEach())
        self.analyses = Analyses()
        self.calibration = calibration
        self.quiet = quiet

    def require_calibration(self, pass_name: str) -> list[dict]:
        """The calibration samples, or an error saying how to give them."""
        if not self.calibration:
            raise PassError(f"{pass_name} needs calibration data: pass calibration=... to qpass.quantize, "
                            "--calib PATH on the command line, or PassContext(calibration=samples)")
        return list(self.calibration)

    def __enter__(self) -> "PassContext":
        stack = getattr(_local, "stack", [])
        stack.append(self)
        _local.stack = stack
        return self

    def __exit__(self, *exc) -> None:
        _local.stack.pop()

    @staticmethod
    def current() -> "PassContext":
        stack = getattr(_local, "stack", [])
        return stack[-1] if stack else PassContext()


def run_passes(graph: Graph, pipeline: Union[str, Sequence[Pass]],
               ctx: Optional[PassContext] = None) -> Graph:
    """Run `pipeline` (a string or pass instances) on `graph`; returns the resulting graph."""
    passes = parse_pipeline(pipeline) if isinstance(pipeline, str) else list(pipeline)
    ctx = ctx or PassContext.current()
    for inst in ctx.instruments:
        inst.run_before_pipeline(graph, passes)
    for index, p in enumerate(passes, start=1):
        for inst in ctx.instruments:
            inst.run_before_pass(index, p, graph)
        start, revision = time.perf_counter(), graph.revision
        try:
            result = p.run(graph, ctx)
        except QpassError as e:
            done = ", ".join(format_pass(q) for q in passes[:index - 1]) or "nothing"
            raise PassError(f"pass '{format_pass(p)}' (step {index} of {len(passes)}, after {done}) failed: {e}") from e
        except Exception as e:
            raise PassError(f"internal error in pass '{format_pass(p)}' (step {index} of {len(passes)}): "
                            f"{type(e).__name__}: {e}. This is a bug in the pass; run with --debug for "
                            "the traceback.") from e
        seconds = time.perf_counter() - start
        if not isinstance(result, PassResult):
            raise PassError(f"pass '{p.name}' returned {type(result).__name__}; it must return "
                            "PassResult(graph, changed)")
        # Whether the IR changed is the graph's own record, not only the pass's word: a pass that
        # edits the graph it was given and says it did not cannot hide the edit from instruments.
        changed = result.changed or (result.graph is graph and graph.revision != revision)
        graph = result.graph
        for inst in ctx.instruments:
            inst.run_after_pass(index, p, graph, changed, seconds)
    for inst in ctx.instruments:
        inst.run_after_pipeline(graph)
    return graph
