"""The `qpass` command line: `show`, `passes`, `opt`, `quantize`, `compile`, `run`, `targets`, `demo`.

Every user error is one clear paragraph on stderr and a non-zero exit; tracebacks appear only
with --debug. Output files are written whole or not at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from pathlib import Path
from typing import Optional

from qpass.backends import backend
from qpass.errors import QpassError
from qpass.tools.commands import (COMMANDS, add_evaluation_options, add_exact_range_option, add_quantization_options,
                                  command, exact_range_pipeline,
                                  evaluation_source, load_model, load_plugin, parse_shape_arg)

# Modules whose import registers more subcommands with @command (kept out of this file so that
# each feature owns its command).
COMMAND_MODULES: tuple[str, ...] = ("qpass.tools.viewer", "qpass.tools.debug", "qpass.tools.opdocs")


@command("show", "print the IR of an ONNX model or .qir file")
def _show(parser):
    parser.add_argument("model", help="an .onnx model or a .qir file")
    parser.add_argument("--input-shape", action="append", metavar="NAME=DxD...", help="fix a dynamic input shape")
    parser.add_argument("--html", metavar="OUT.html", help="also draw the graph into a self-contained page")
    parser.add_argument("--svg", metavar="OUT.svg", help="also draw the graph as an SVG image")

    def run(args):
        for path in filter(None, [args.html, args.svg]):
            _check_writable_file(path)
        graph = load_model(args.model, args.input_shape)
        sys.stdout.write(str(graph))
        if args.html or args.svg:
            from qpass.tools.viewer import graph_html, graph_svg, write_text_file
            if args.html:
                write_text_file(args.html, graph_html(graph), "the page")
                print(f"wrote the HTML page {args.html}", file=sys.stderr)
            if args.svg:
                write_text_file(args.svg, graph_svg(graph), "the picture")
                print(f"wrote the SVG picture {args.svg}", file=sys.stderr)
        return 0
    return run


@command("passes", "list the registered passes and their options")
def _passes(parser):
    def run(args):
        from qpass.passmgr.passes import REGISTRY, describe_type
        for name in REGISTRY.names():
            cls = REGISTRY.get(name)
            print(f"{name}\n    {summary(cls.__doc__)}")
            for field, hint in cls.option_types().items():
                f = next(f for f in cls.options() if f.name == field)
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                doc = " ".join(f.metadata.get("doc", "").split())
                print(f"    {field.replace('_', '-')}: {describe_type(hint)} = {default}{'  ' + doc if doc else ''}")
        return 0
    return run


def summary(doc: Optional[str]) -> str:
    """A docstring's first paragraph on one line (its source line breaks removed, nothing cut)."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())


@command("opt", "run a pass pipeline on an ONNX model or .qir file (like mlir-opt)")
def _opt(parser):
    parser.add_argument("model", help="an .onnx model or a .qir file")
    parser.add_argument("--pipeline", "-p", required=True, help="passes, e.g. 'fold-constants,fold-batchnorm'")
    parser.add_argument("-o", "--output", help="write the result here (.qir plus .npz of constants); "
                        "default: print to stdout")
    parser.add_argument("--input-shape", action="append", metavar="NAME=DxD...", help="fix a dynamic input shape")
    parser.add_argument("--print-ir-after-all", action="store_true", help="print the IR after every pass")
    parser.add_argument("--print-ir-after", metavar="NAMES", help="print the IR after these passes (comma list)")
    parser.add_argument("--dump-ir", metavar="DIR", help="write NN-<pass>.qir and .diff files after each change")
    parser.add_argument("--timing", action="store_true", help="print a table of time per pass")
    parser.add_argument("--no-verify-each", action="store_true", help="skip verifying the IR after every pass")

    def run(args):
        from qpass import PassContext, run_passes
        from qpass.passmgr.instruments import DumpIR, PrintAfter, Timing
        from qpass.ir import save
        from qpass.passmgr.pipeline import parse_pipeline
        passes = parse_pipeline(args.pipeline)          # bad names fail before any work
        if args.output:
            _check_writable_file(args.output)
        graph = load_model(args.model, args.input_shape)
        instruments = []
        if args.print_ir_after_all or args.print_ir_after:
            names = None if args.print_ir_after_all else {n.strip() for n in args.print_ir_after.split(",")}
            instruments.append(PrintAfter(names))
        if args.dump_ir:
            instruments.append(DumpIR(args.dump_ir))
        timing = Timing() if args.timing else None
        if timing:
            instruments.append(timing)
        with PassContext(instruments, verify_each=not args.no_verify_each) as ctx:
            graph = run_passes(graph, passes, ctx)
        graph.verify()
        if timing:
            print(timing.report(), file=sys.stderr)
        if args.output:
            save(graph, args.output)
        else:
            sys.stdout.write(str(graph))
        return 0
    return run


@command("quantize", "quantize a float model to integer IR with calibration data (no TVM involved)")
def _quantize(parser):
    parser.add_argument("model", help="an .onnx model or a .qir file")
    add_quantization_options(parser, calib_required=False)      # required unless --print-pipeline
    add_exact_range_option(parser)
    parser.add_argument("--budget", type=float, default=0.6, help="--bits mixed: weight bytes kept vs int8")
    parser.add_argument("--pipeline", "-p", help="run this pipeline instead of the default one")
    parser.add_argument("--input-shape", action="append", metavar="NAME=DxD...", help="fix a dynamic input shape")
    parser.add_argument("-o", "--output", help="write the integer IR here (.qir + .npz); required unless "
                        "--print-pipeline")
    parser.add_argument("--report", metavar="FILE.json", help="also write the quantization report as JSON")
    parser.add_argument("--dump-ir", metavar="DIR", help="write NN-<pass>.qir and .diff files after each change")
    parser.add_argument("--quiet", action="store_true", help="no progress bars and no report on stdout")
    parser.add_argument("--print-pipeline", action="store_true",
                        help="print the pass pipeline quantize would run (for --pipeline) and exit")

    def run(args):
        from qpass import PassContext, run_passes
        from qpass.api import CANONICALIZE, quantize
        from qpass.passmgr.instruments import DumpIR, check_dump_dir
        from qpass.ir import save
        from qpass.passmgr.pipeline import parse_pipeline
        from qpass.quant.calibration import load_calibration
        from qpass.quant.report import dumps, format_report, quantization_report
        bits = int(args.bits) if args.bits.isdigit() else args.bits
        if args.pipeline:
            parse_pipeline(args.pipeline)                        # bad names fail before any work
        if args.print_pipeline:
            return _print_pipeline(args, "quantize")
        missing = [flag for flag, value in (("--calib PATH", args.calib), ("-o OUT.qir", args.output)) if not value]
        if missing:
            raise QpassError(f"{' and '.join(missing)} {'are' if len(missing) > 1 else 'is'} required: the "
                             "calibration data (an .npz of input name -> samples, or a folder of .npy/.npz "
                             "samples) and where to write the integer IR (or --print-pipeline to print the "
                             "passes without running them)")
        for path in filter(None, [args.output, args.report]):
            _check_writable_file(path)
        if args.dump_ir:
            check_dump_dir(args.dump_ir)
        graph = load_model(args.model, args.input_shape)
        pipeline = exact_range_pipeline(args, graph) or args.pipeline
        samples = load_calibration(args.calib, graph)
        ctx = PassContext([DumpIR(args.dump_ir)] if args.dump_ir else [], verify_each=True)
        quantized = quantize(graph, samples, bits, args.method, budget=args.budget, pipeline=pipeline, ctx=ctx,
                             quiet=args.quiet)
        report = quantization_report(run_passes(graph.copy(), CANONICALIZE), quantized, samples[:16],
                                     ctx.analyses.float_ops, ctx.analyses.bitwidth)
        save(quantized, args.output)
        if args.report:
            from qpass.ir.serialize import atomic_write
            atomic_write(args.report, dumps(report).encode())
        if not args.quiet:
            print(format_report(report))
        return 0
    return run


@command("demo", "import, print and run the bundled digits model on its held-out test set")
def _demo(parser):
    parser.add_argument("--quiet", action="store_true", help="do not print the IR")

    def run(args):
        from qpass.tools.demo import run_demo
        return run_demo(print_ir=not args.quiet)
    return run


@command("compile", "quantize (if needed) and compile a model for a target triple into OUTDIR")
def _compile(parser):
    parser.add_argument("model", help="an .onnx model (float or QDQ) or a .qir file")
    parser.add_argument("--target", "-t", default="x86_64-linux-gnu",
                        help="target triple: x86_64-linux-gnu, aarch64-linux-gnu or cuda (see `qpass targets`)")
    parser.add_argument("--mcpu", help="x86 CPU, e.g. cascadelake for AVX-512 VNNI")
    parser.add_argument("--mattr", help="aarch64 features, e.g. +neon,+dotprod,+i8mm")
    parser.add_argument("--arch", help="CUDA architecture, e.g. sm_80")
    add_quantization_options(parser, calib_required=False)    # float models need --calib; its first sample
    # also checks and times the artifact
    add_exact_range_option(parser)
    add_evaluation_options(parser)
    parser.add_argument("--budget", type=float, default=0.6, help="--bits mixed: weight bytes kept vs int8")
    parser.add_argument("--pipeline", "-p", help="run this pass pipeline instead of the default one")
    parser.add_argument("--input-shape", action="append", metavar="NAME=DxD...", help="fix a dynamic input shape")
    parser.add_argument("--dump-ir", metavar="DIR", help="write NN-<pass>.qir and .diff files after each change")
    parser.add_argument("--print-ir-after-all", action="store_true", help="print the IR after every pass")
    parser.add_argument("-o", "--output", metavar="OUTDIR", help="the artifact directory (required unless "
                        "--print-pipeline)")
    parser.add_argument("--force", action="store_true", help="replace OUTDIR if it exists")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--print-pipeline", action="store_true",
                        help="print the pass pipeline compile would run (for --pipeline) and exit without compiling")

    def run(args):
        import json
        from qpass.compiler import check_and_time, check_output_dir, compile
        from qpass.passmgr.instruments import check_dump_dir
        from qpass.passmgr.pipeline import parse_pipeline
        backend().resolve_target(args.target, args.mcpu, args.mattr, args.arch)     # bad targets fail before any work
        if args.pipeline:
            parse_pipeline(args.pipeline)
        if args.print_pipeline:
            return _print_pipeline(args, "compile")
        if not args.output:
            raise QpassError("-o OUTDIR is required: the directory to write the artifact into (or "
                             "--print-pipeline to print the passes without compiling)")
        check_output_dir(args.output, args.force)                  # before any work, as are the dump folder's
        if args.dump_ir:
            check_dump_dir(args.dump_ir)
        shapes = dict(parse_shape_arg(s) for s in args.input_shape or []) or None
        bits = int(args.bits) if args.bits.isdigit() else args.bits
        pipeline = args.pipeline
        if args.exact_range:
            pipeline = exact_range_pipeline(args, load_model(args.model, args.input_shape))
            if not args.calib:
                raise QpassError(f"{args.model} is a float model: --exact-range quantizes it, so give "
                                 "calibration data with --calib PATH (an .npz of input name -> samples, or a folder "
                                 "of .npy/.npz samples)")
        compiled = compile(args.model, args.target, args.calib, mcpu=args.mcpu, mattr=args.mattr, arch=args.arch,
                           bits=bits, method=args.method, budget=args.budget, pipeline=pipeline,
                           input_shapes=shapes, dump_ir=args.dump_ir, print_ir_after_all=args.print_ir_after_all,
                           quiet=args.quiet or args.json, evaluation=evaluation_source(args),
                           eval_limit=args.eval_limit)
        compiled.report["run"] = check_and_time(compiled, _first_sample(args.calib, compiled.graph))
        compiled.save(args.output, force=args.force)
        if args.json:
            print(json.dumps(compiled.report, indent=2, default=str))
        elif not args.quiet:
            from qpass.tools.report_html import format_compile_report
            print(format_compile_report(compiled.report))
            if "accuracy" in compiled.report:
                from qpass.quant.evaluation import format_accuracy
                print(format_accuracy(compiled.report["accuracy"]))
            print(f"wrote {args.output}/ (model.so, model.qir, meta.json, report.json, report.html)")
        return 0
    return run


def _print_pipeline(args, command_name: str) -> int:
    """--print-pipeline: the pipeline `command_name` would run on this model with these options."""
    from qpass.api import default_pipeline, model_kind
    graph = load_model(args.model, args.input_shape)
    kind = model_kind(graph)
    bits = int(args.bits) if args.bits.isdigit() else args.bits
    pipeline = (exact_range_pipeline(args, graph) or args.pipeline
                or default_pipeline(kind, bits, args.method, args.budget))
    if pipeline:
        print(pipeline)
    else:
        print("# no passes: the input is integer IR already", file=sys.stderr)
    if command_name == "compile":
        print("# then the backend legalizes the integer IR for the target (not part of --pipeline)", file=sys.stderr)
    if kind == "float" and not args.calib and not args.pipeline:
        print("# this float model needs --calib PATH to run it", file=sys.stderr)
    return 0


def _first_sample(calib: Optional[str], graph) -> Optional[dict]:
    """The first calibration sample, or a seeded random input when no data was given."""
    import numpy as np
    if calib:
        from qpass.quant.calibration import load_calibration
        return load_calibration(calib, graph)[0]
    rng = np.random.default_rng(0)
    return {v.name: rng.standard_normal(v.type.shape).astype(v.type.numpy_dtype) for v in graph.inputs}


@command("run", "run a compiled OUTDIR on inputs (host x86, aarch64 under qemu, or CUDA)")
def _run(parser):
    parser.add_argument("artifact", metavar="OUTDIR", help="a directory written by `qpass compile`")
    parser.add_argument("--input", "-i", action="append", default=[], metavar="NAME=FILE.npy",
                        help="an input array; repeat for each input (a single input may omit NAME=)")
    parser.add_argument("-o", "--output", metavar="OUT.npz", help="write the outputs here (default: print them)")

    def run(args):
        import numpy as np
        artifact = backend().load_artifact(args.artifact)
        inputs = {}
        for item in args.input:
            name, sep, path = item.partition("=")
            if not sep:
                if len(artifact.input_names) != 1:
                    raise QpassError(f"--input {item}: the model has inputs {', '.join(artifact.input_names)}; "
                                     "write NAME=FILE.npy")
                name, path = artifact.input_names[0], item
            try:
                inputs[name] = np.load(path)
            except (OSError, ValueError) as e:
                raise QpassError(f"--input {item}: cannot read {path} as a .npy array ({e})") from e
        if args.output:
            _check_writable_file(args.output)
        outputs = artifact.run(inputs)
        if args.output:
            import io
            from qpass.ir.serialize import atomic_write
            buffer = io.BytesIO()
            np.savez(buffer, **outputs)
            atomic_write(args.output, buffer.getvalue())
        else:
            for name, value in outputs.items():
                print(f"{name}: {value.dtype}{list(value.shape)}")
                print(np.array2string(value, threshold=64, precision=5))
        return 0
    return run


@command("targets", "list the known target triples and what each lowers to")
def _targets(parser):
    parser.add_argument("--json", action="store_true", help="print the table as JSON")

    def run(args):
        import json
        rows = backend().target_table()
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        width = max(len(r["target"]) for r in rows)
        print(f"{'target':<{width}}  {'activations':<11}  {'int8 kernel':<11}  runs here")
        for r in rows:
            print(f"{r['target']:<{width}}  {r['activations']:<11}  {r['micro_kernel'] or 'plain loops':<11}  "
                  f"{'yes' if r['runs_here'] else 'no'} ({r['how']})")
        return 0
    return run


def _check_writable_file(path: str) -> None:
    if Path(path).is_dir():
        raise QpassError(f"cannot write {path}: it is a directory; give a file name")
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise QpassError(f"cannot write {path}: the directory {parent} does not exist")
    import os
    if not os.access(parent, os.W_OK):
        raise QpassError(f"cannot write {path}: the directory {parent} is not writable")


def build_parser() -> argparse.ArgumentParser:
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(prog="qpass", description="quantize and compile neural networks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    runners = {}
    for name, (_, add, _) in COMMANDS.items():
        runners[name] = add(sub)
    parser.set_defaults(_runners=runners)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        for spec in args.load:
            load_plugin(spec)
        return args._runners[args.command](args) or 0
    except QpassError as e:
        if args.debug:
            raise
        print(f"qpass {args.command}: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 1) or 1
    except KeyboardInterrupt:
        print("qpass: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:
        if args.debug:
            raise
        print(f"qpass {args.command}: internal error: {type(e).__name__}: {e}\n"
              "This is a bug in qpass; run again with --debug for the traceback and report it.", file=sys.stderr)
        return 2
