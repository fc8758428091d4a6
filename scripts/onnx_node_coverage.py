"""ONNX node test cases per op type: how many qpass passes (interpreter, compiled) and ONNX Runtime.

    python scripts/onnx_node_coverage.py [--no-compile]

Runs every case of onnx's node test suite of the default domain (the same cases and the same
comparison as tests/test_onnx_node_cases.py: those qpass converts, those it imports through a
fallback, and those it refuses): qpass's interpreter, qpass compiled for the host and run in the
Relax VM, and ONNX Runtime's CPU provider on the original model with every input fed.
Prints one row per op type and the totals ("qpass passes X of Y, ORT Z of Y").
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _cases_module():
    spec = importlib.util.spec_from_file_location("onnx_node_cases", ROOT / "tests" / "test_onnx_node_cases.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def _ort_passes(case, cases) -> bool:
    import onnxruntime as ort
    inputs, outputs = case.data_sets[0]
    inputs, outputs = [cases._array(a) for a in inputs], [cases._array(a) for a in outputs]
    if any(not isinstance(a, np.ndarray) for a in (*inputs, *outputs)):
        return False
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        session = ort.InferenceSession(case.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        initialized = {init.name for init in case.model.graph.initializer}
        names = [info.name for info in case.model.graph.input if info.name not in initialized]
        got = session.run(None, dict(zip(names, inputs)))
    except Exception:   # ORT refuses or fails the case: it does not pass
        return False
    return cases.mismatch(got, outputs) == ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled (TVM) column")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    cases = _cases_module()
    from qpass.errors import FrontendError, QpassError
    host = None
    if not args.no_compile:
        from qpass.backends import backend
        b = backend()
        host = (b, b.resolve_target("x86_64-linux-gnu"))
    rows: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    reasons: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for name in [*cases.converted_cases(), *cases.fallback_cases(), *cases.refused_cases()]:
        case = cases.all_cases()[name]
        ops = sorted(cases.op_types(case))
        key = ops[0] if len(ops) == 1 else "(multi-op cases)"
        row = rows[key]
        row["cases"] += 1
        row["ort"] += _ort_passes(case, cases)
        try:
            prepared = cases.prepare(case)
        except FrontendError as e:
            row["refused"] += 1
            reasons[key][str(e).split(": ", 1)[-1][:90]] += 1
            continue
        except Exception as e:   # a crash: counts as a failure, shown as a reason
            reasons[key][f"CRASH {type(e).__name__}: {e}"[:90]] += 1
            continue
        try:
            row["interpreter"] += cases.run_interpreter(prepared) == ""
        except Exception as e:
            reasons[key][f"CRASH in interpreter {type(e).__name__}"] += 1
        if host is not None:
            try:
                row["compiled"] += (not prepared.feeds) or cases.run_compiled(prepared, host) == ""
            except QpassError as e:   # refused before building: an op without a lowering
                reasons[key][f"does not compile: {e}"[:90]] += 1
            except Exception as e:
                reasons[key][f"compile failed: {type(e).__name__}: {e}"[:90]] += 1
    header = f"| op type | cases | qpass interpreter | qpass compiled | refused | ORT CPU | refusal reasons |"
    print(header)
    print("|" + "---|" * 7)
    total = collections.Counter()
    for key in sorted(rows):
        row = rows[key]
        total.update(row)
        why = "; ".join(f"{n}x {r}" for r, n in reasons[key].most_common(3))
        compiled = row["compiled"] if host is not None else "-"
        print(f"| {key} | {row['cases']} | {row['interpreter']} | {compiled} | {row['refused']} | {row['ort']} | {why} |")
    compiled = total["compiled"] if host is not None else "-"
    print(f"| **total** | {total['cases']} | {total['interpreter']} | {compiled} | {total['refused']} | "
          f"{total['ort']} | |")
    print(f"\nqpass passes {total['interpreter']} of {total['cases']} in its interpreter"
          + (f", {total['compiled']} compiled" if host is not None else "")
          + f"; ORT CPU {total['ort']} of {total['cases']}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
