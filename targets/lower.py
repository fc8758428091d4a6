"""Lower a qpass graph to a TVM Relax IRModule: each op's definition (qpass.ops, `OpDef.lower`)
emits it through the services of `Lowering`; integer ops become qpass kernels (targets.kernels),
scheduled per target; float ops at the edges and data movement become Relax ops.

Layout: 4-D activations between integer convolutions live in NHWC (the kernels' layout). The
lowering tracks each value's layout and transposes only where an op needs the other one:
quantize writes NHWC directly, dequantize reads it, elementwise integer ops and spatial means
work in whichever layout their operands share, and graph outputs come back in the IR's NCHW.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np

from qpass.errors import QpassError
from qpass.ir.opdef import OPS, op_def
from qpass.ops.common import NATIVE, NHWC, nhwc_shape
from qpass.targets.kernels import TVM_DTYPES, ConvPlan, conv_compute, conv_plan, per_tensor_zero_point

TO_NHWC, TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)


@dataclasses.dataclass
class Kernel:
    """One PrimFunc the lowering made, with what its schedule needs to know."""

    name: str
    kind: str                        # "conv", "elementwise", "reduce", "plain"
    plan: Optional[ConvPlan] = None
    op: str = ""


@dataclasses.dataclass
class Lowered:
    """The lowering's result: the Relax module and what the schedules and the report need."""

    module: object                   # tvm.IRModule
    kernels: list[Kernel]
    notes: list[str]                 # what the report should say (fallbacks, float ops)


class Lowering:
    """Walks the graph once, emitting Relax bindings through a BlockBuilder.

    An op's `lower(lowering, op)` (qpass.ops) uses these services: `relax` (the tvm.relax
    module), `get`/`set`/`layout` for values, `emit`, `emit_kernel`, `const`, `dtype`,
    `elementwise`, `shared_layout`, `zero_point`, `wants_nhwc` and `conv`. Layouts are the
    strings NHWC and NATIVE of qpass.ops.common: NATIVE is the IR's own (NCHW for 4-D values),
    NHWC the integer kernels' layout.
    """

    def __init__(self, graph, spec):
        from tvm import relax
        self.relax = relax
        self.graph, self.spec = graph, spec
        self.bb = relax.BlockBuilder()
        self.env: dict[int, tuple[object, str]] = {}
        self.kernels: list[Kernel] = []
        self.notes: list[str] = []

    # -- values ------------------------------------------------------------------------------------
    def get(self, value, layout: str = NATIVE):
        """The Relax expression of `value` in `layout`; a transpose, when needed, is emitted once
        and shared by later readers. Constants become Relax constants on first use."""
        if value.is_constant and id(value) not in self.env:
            data = np.asarray(value.data)
            self.env[id(value)] = (self.relax.const(data.astype(TVM_DTYPES.get(value.type.dtype, data.dtype))),
                                   NATIVE)
        expr, have = self.env[id(value)]
        if have == layout:
            return expr
        perm = TO_NHWC if layout == NHWC else TO_NCHW
        converted = self.bb.emit(self.relax.op.permute_dims(expr, list(perm)))
        self.env[id(value)] = (converted, layout)        # later users share the transpose
        return converted

    def layout(self, value) -> str:
        """The layout `value` was bound in (NATIVE for a value not lowered yet)."""
        return self.env[id(value)][1] if id(value) in self.env else NATIVE

    def set(self, value, expr, layout: str = NATIVE) -> None:
        """Bind `value` to the Relax expression `expr`, which holds it in `layout`."""
        self.env[id(value)] = (expr, layout)

    def emit(self, expr):
        """Bind `expr` in the dataflow block; returns the Relax variable."""
        return self.bb.emit(expr)

    def const(self, array, dtype: str):
        """A Relax constant of `array` converted to the TVM dtype `dtype`."""
        return self.relax.const(np.array(array, order="C").astype(dtype))   # rank 0 stays rank 0

    @staticmethod
    def dtype(ir_dtype: str) -> str:
        """The TVM dtype that holds IR dtype `ir_dtype` (i4/u4 live unpacked in int8/uint8)."""
        return TVM_DTYPES[ir_dtype]

    def zero_point(self, value) -> int:
        """The per-tensor zero point of `value` (0 when it has no quantization annotation); the
        compiled kernels refuse a per-channel one."""
        if value.type.quant is None:
            return 0
        return per_tensor_zero_point(value, "an activation")

    def wants_nhwc(self, value) -> bool:
        """Whether a reader of `value` computes in NHWC (a qconv2d), so its producer should write NHWC."""
        return any(u.kind in ("qconv2d",) for u in self.graph.users(value))

    # -- kernels -----------------------------------------------------------------------------------
    def emit_kernel(self, fn: Callable, args, name: str, kind: str, plan=None, op=""):
        """Build the PrimFunc of `fn` over int32-indexed placeholders and call it from Relax.

        `kind` ("conv", "elementwise", "reduce", "plain") picks the schedule; `op` names the op
        kind in the report. int32 indices (Relax would give int64) keep loop variables the same
        type as GPU thread indices. The BlockBuilder shares one PrimFunc among structurally equal
        kernels (conv kernels record their micro-kernel choice in the compute's attrs, so sharing
        never mixes schedules).
        """
        from tvm import te
        placeholders = [te.placeholder([int(d) for d in a.ty.shape], a.ty.dtype, name=f"arg{i}")
                        for i, a in enumerate(args)]
        out = fn(*placeholders)
        func = te.create_prim_func(placeholders + [out]).without_attr("global_symbol")
        gv = self.bb.add_func(func, f"{kind}_{name}".replace(".", "_"))
        if all(k.name != gv.name_hint for k in self.kernels):
            self.kernels.append(Kernel(gv.name_hint, kind, plan, op))
        sinfo = self.relax.TensorType([int(d) for d in out.shape], out.dtype)
        return self.bb.emit(self.relax.call_tir(gv, list(args), sinfo))

    def shared_layout(self, op) -> str:
        """NHWC when every operand is NHWC already and no broadcasting is involved, else NATIVE."""
        operands = [v for v in op.inputs if not v.is_constant]
        if (op.output.type.rank == 4 and operands and all(self.layout(v) == NHWC for v in operands)
                and all(v.type.shape == op.output.type.shape for v in op.inputs)):
            return NHWC
        return NATIVE

    def elementwise(self, op, body, extra=()) -> str:
        """Emit and bind an elementwise integer op in its operands' shared layout; returns the layout.

        `body(idx, load, tensors)` builds the int64 result at index `idx`: `load(i)` reads operand
        i there (broadcasting), `tensors` are the kernel's arguments (the operands, then the
        constants `extra`). The value is cast to the result's dtype.
        """
        layout = self.shared_layout(op)
        out = op.output.type
        shape = nhwc_shape(out.shape) if layout == NHWC else out.shape
        in_shapes = [(nhwc_shape(v.type.shape) if layout == NHWC else v.type.shape) for v in op.inputs]
        dtype = TVM_DTYPES[out.dtype]

        def fn(*tensors):
            from tvm import te

            def at(i, idx):
                src = [0 if d == 1 and shape[len(shape) - len(in_shapes[i]) + k] != 1 else idx[len(shape) -
                       len(in_shapes[i]) + k] for k, d in enumerate(in_shapes[i])]
                return tensors[i][tuple(src)]
            return te.compute(shape, lambda *idx: body(idx, lambda i: at(i, idx), tensors).astype(dtype),
                              name=op.kind)
        args = [self.get(v, layout) for v in op.inputs] + list(extra)
        self.set(op.output, self.emit_kernel(fn, args, op.name, "elementwise", op=op.kind), layout)
        return layout

    def conv(self, op) -> None:
        """Emit and bind a qconv2d (NHWC in and out) or qdense with the target's conv kernel."""
        dense = op.kind == "qdense"
        plan = conv_plan(op, self.spec, dense=dense)
        self._note_plan(op, plan)
        if dense:
            x = self.bb.emit(self.relax.op.reshape(self.get(op.inputs[0]), plan.in_shape))
            y = self.emit_kernel(conv_compute(plan), self._conv_args(plan, x), op.name, "conv", plan, op=op.kind)
            self.set(op.output, self.bb.emit(self.relax.op.reshape(y, op.output.type.shape)))
        else:
            y = self.emit_kernel(conv_compute(plan), self._conv_args(plan, self.get(op.inputs[0], NHWC)), op.name,
                                 "conv", plan, op=op.kind)
            self.set(op.output, y, NHWC)

    def _conv_args(self, plan: ConvPlan, x_expr):
        ep = plan.epilogue
        m = self.const(ep.multiplier if ep else np.zeros(1), "int32")
        s = self.const(ep.shift_argument() if ep else np.zeros(1), "int32")
        return [x_expr, self.const(plan.weight, str(plan.weight.dtype)), self.const(plan.bias, "int32"), m, s]

    def _note_plan(self, op, plan: ConvPlan):
        wanted = self.spec.micro_kernel or "a dot-product micro-kernel (the target has none)"
        if plan.kind == "gemm" and plan.micro_kernel != wanted:
            self.notes.append(f"%{op.name}: {plan.micro_kernel} instead of {wanted} (operands or shape do not suit "
                              f"{wanted})")
        elif plan.kind == "grouped":
            self.notes.append(f"%{op.name}: plain loops, no {wanted} (groups={op.attrs.get('groups', 1)}, "
                              f"{plan.x_dtype} activations, or weights outside what {wanted} computes exactly)")

    # -- driver ------------------------------------------------------------------------------------
    def run(self) -> Lowered:
        """Lower every op through its definition's `lower`, in program order, into `main`."""
        relax, graph = self.relax, self.graph
        params = []
        for value in graph.inputs:
            var = relax.Var(value.name, relax.TensorType(value.type.shape, TVM_DTYPES[value.type.dtype]))
            params.append(var)
            self.set(value, var)
        with self.bb.function("main", params):
            with self.bb.dataflow():
                for op in graph.ops:
                    lower_op = op_def(op.kind).lower
                    if lower_op is None:
                        compiled = ", ".join(d.name for d in OPS.definitions() if d.lower is not None)
                        raise QpassError(
                            f"%{op.name}: op {op.kind!r} has no lowering to TVM yet; these ops compile: {compiled}. "
                            "Leave the op out of the model or give its definition (qpass/ops) a lower function")
                    result = lower_op(self, op)
                    if result is not None:
                        self.set(op.output, self.emit(result))
                outputs = [self.get(v) for v in graph.outputs]
                result = self.bb.emit_output(self.relax.Tuple(outputs))
            self.bb.emit_func_output(result)
        return Lowered(self.bb.get(), self.kernels, self.notes)


def lower(graph, spec) -> Lowered:
    """Graph -> Relax IRModule (unscheduled kernels; see targets.build for the schedules)."""
    return Lowering(graph, spec).run()
