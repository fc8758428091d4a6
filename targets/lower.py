"""Lower a qpass graph to a TVM Relax IRModule: integer ops become qpass kernels (targets.kernels),
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
from qpass.ir.types import dtype_range
from qpass.targets.kernels import TVM_DTYPES, ConvPlan, Epilogue, conv_compute, conv_plan, per_tensor_zero_point

NHWC, NATIVE = "NHWC", "NATIVE"
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
    module: object                   # tvm.IRModule
    kernels: list[Kernel]
    notes: list[str]                 # what the report should say (fallbacks, float ops)


def _nhwc_shape(shape):
    return (shape[0], shape[2], shape[3], shape[1])


class Lowering:
    """Walks the graph once, emitting Relax bindings through a BlockBuilder."""

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
        return self.env[id(value)][1] if id(value) in self.env else NATIVE

    def set(self, value, expr, layout=NATIVE):
        self.env[id(value)] = (expr, layout)

    def const(self, array, dtype):
        return self.relax.const(np.ascontiguousarray(array).astype(dtype))

    def emit_kernel(self, fn: Callable, args, name: str, kind: str, plan=None, op=""):
        """Build the PrimFunc of `fn` over int32-indexed placeholders and call it from Relax.

        int32 indices (Relax would give int64) keep loop variables the same type as GPU thread
        indices. The BlockBuilder shares one PrimFunc among structurally equal kernels (conv kernels
        record their micro-kernel choice in the compute's attrs, so sharing never mixes schedules).
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

    # -- driver ------------------------------------------------------------------------------------
    def run(self) -> Lowered:
        relax, graph = self.relax, self.graph
        params = []
        for value in graph.inputs:
            var = relax.Var(value.name, relax.TensorType(value.type.shape, TVM_DTYPES[value.type.dtype]))
            params.append(var)
            self.set(value, var)
        with self.bb.function("main", params):
            with self.bb.dataflow():
                for op in graph.ops:
                    lower = getattr(self, "op_" + op.kind, None)
                    if lower is None:
                        lower = FLOAT_OPS.get(op.kind)
                        if lower is None:
                            raise QpassError(
                                f"%{op.name}: op {op.kind!r} has no lowering to TVM yet; the integer ops, quantize/"
                                f"dequantize and these float ops compile: {', '.join(sorted(FLOAT_OPS))}. Leave "
                                "the op out of the model or implement its lowering in targets/lower.py")
                        result = lower(self, op)
                        self.set(op.output, self.bb.emit(result))
                    else:
                        lower(op)
                outputs = [self.get(v) for v in graph.outputs]
                result = self.bb.emit_output(self.relax.Tuple(outputs))
            self.bb.emit_func_output(result)
        return Lowered(self.bb.get(), self.kernels, self.notes)

    # -- integer ops -------------------------------------------------------------------------------
    def op_quantize(self, op):
        x, out = op.inputs[0], op.output
        quant = out.type.quant
        lo, hi = dtype_range(out.type.dtype, quant.bits)
        to_nhwc = out.type.rank == 4 and quant.axis is None and self._wants_nhwc(out)
        scale = self.const(np.asarray(quant.scale, np.float32).reshape(-1), "float32")
        zp = self.const(np.asarray(quant.zero_point, np.float32).reshape(-1), "float32")
        dtype, axis, rank = TVM_DTYPES[out.type.dtype], quant.axis, out.type.rank

        def fn(xt, st, zt):
            from tvm import te, tirx

            def q(*idx):
                src = (idx[0], idx[3], idx[1], idx[2]) if to_nhwc else idx
                k = 0 if axis is None else idx[axis % rank]
                v = tirx.nearbyint(xt[src] / st[k]) + zt[k]
                return tirx.max(tirx.min(v, tirx.const(hi, "float32")), tirx.const(lo, "float32")).astype(dtype)
            shape = _nhwc_shape(out.type.shape) if to_nhwc else out.type.shape
            return te.compute(shape, q, name="quantize")
        self.set(out, self.emit_kernel(fn, [self.get(x), scale, zp], op.name, "elementwise", op="quantize"),
                 NHWC if to_nhwc else NATIVE)

    def _wants_nhwc(self, value) -> bool:
        return any(u.kind in ("qconv2d",) for u in self.graph.users(value))

    def op_dequantize(self, op):
        q, out = op.inputs[0], op.output
        quant = q.type.quant
        from_nhwc = self.layout(q) == NHWC and quant.axis is None
        scale = self.const(np.asarray(quant.scale, np.float32).reshape(-1), "float32")
        zp = self.const(np.asarray(quant.zero_point, np.int32).reshape(-1), "int32")
        axis, rank, dtype = quant.axis, q.type.rank, TVM_DTYPES[out.type.dtype]

        def fn(qt, st, zt):
            from tvm import te

            def d(*idx):
                src = (idx[0], idx[2], idx[3], idx[1]) if from_nhwc else idx
                k = 0 if axis is None else idx[axis % rank]
                return ((qt[src].astype("int32") - zt[k]).astype("float32") * st[k]).astype(dtype)
            return te.compute(out.type.shape, d, name="dequantize")
        self.set(out, self.emit_kernel(fn, [self.get(q, NHWC if from_nhwc else NATIVE), scale, zp], op.name,
                                       "elementwise", op="dequantize"))

    def _conv_args(self, plan: ConvPlan, x_expr):
        ep = plan.epilogue
        m = self.const(ep.multiplier if ep else np.zeros(1), "int32")
        s = self.const(ep.shift_argument() if ep else np.zeros(1), "int32")
        return [x_expr, self.const(plan.weight, str(plan.weight.dtype)), self.const(plan.bias, "int32"), m, s]

    def op_qconv2d(self, op):
        plan = conv_plan(op, self.spec)
        self._note_plan(op, plan)
        expr = self.emit_kernel(conv_compute(plan), self._conv_args(plan, self.get(op.inputs[0], NHWC)), op.name,
                                "conv", plan, op="qconv2d")
        self.set(op.output, expr, NHWC)

    def op_qdense(self, op):
        plan = conv_plan(op, self.spec, dense=True)
        self._note_plan(op, plan)
        x = self.bb.emit(self.relax.op.reshape(self.get(op.inputs[0]), plan.in_shape))
        y = self.emit_kernel(conv_compute(plan), self._conv_args(plan, x), op.name, "conv", plan, op="qdense")
        self.set(op.output, self.bb.emit(self.relax.op.reshape(y, op.output.type.shape)))

    def _note_plan(self, op, plan: ConvPlan):
        wanted = self.spec.micro_kernel
        if plan.kind == "gemm" and plan.micro_kernel != wanted:
            self.notes.append(f"%{op.name}: {plan.micro_kernel} instead of {wanted} (operands or shape do not suit "
                              f"{wanted})")
        elif plan.kind == "grouped":
            self.notes.append(f"%{op.name}: plain loops, no {wanted} (groups={op.attrs.get('groups', 1)}, "
                              f"{plan.x_dtype} activations, or weights outside what {wanted} computes exactly)")

    def _shared_layout(self, op) -> str:
        """NHWC when every operand is NHWC already and no broadcasting is involved."""
        operands = [v for v in op.inputs if not v.is_constant]
        if (op.output.type.rank == 4 and operands and all(self.layout(v) == NHWC for v in operands)
                and all(v.type.shape == op.output.type.shape for v in op.inputs)):
            return NHWC
        return NATIVE

    def _elementwise(self, op, body, extra=()):
        """Emit an elementwise integer op; `body(idx, loads)` builds the int64 pre-clamp value."""
        layout = self._shared_layout(op)
        out = op.output.type
        shape = _nhwc_shape(out.shape) if layout == NHWC else out.shape
        in_shapes = [(_nhwc_shape(v.type.shape) if layout == NHWC else v.type.shape) for v in op.inputs]
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

    def _clamped(self, op, value):
        from tvm import tirx
        out = op.output.type
        lo, hi = dtype_range(out.dtype, out.quant.bits)
        if "clamp" in op.attrs:
            lo, hi = max(lo, op.attrs["clamp"][0]), min(hi, op.attrs["clamp"][1])
        zp = per_tensor_zero_point(op.output, "a result")
        return tirx.max(tirx.min(value + tirx.const(zp, "int64"), tirx.const(hi, "int64")), tirx.const(lo, "int64"))

    def _zp(self, value):
        from tvm import tirx
        return tirx.const(per_tensor_zero_point(value, "an operand") if value.type.quant is not None else 0, "int64")

    def op_requantize(self, op):
        x = op.inputs[0]
        channels_axis = op.attrs.get("axis", 1 if x.type.rank > 1 else 0) % x.type.rank
        channels = x.type.shape[channels_axis]
        ep = Epilogue.of(op, channels)
        zx = self._zp(x)
        axis = {0: 0, 1: 3, 2: 1, 3: 2}[channels_axis] if self._shared_layout(op) == NHWC else channels_axis

        def body(idx, load, tensors):
            c = idx[axis] if len(op.attrs["multiplier"]) > 1 else 0
            return ep.apply(load(0).astype("int64") - zx, c, tensors[1], tensors[2]).astype("int64")
        self._elementwise(op, body, [self.const(ep.multiplier, "int32"), self.const(ep.shift, "int32")])

    def op_qadd(self, op):
        a, b = op.inputs
        ma, mb = (int(v) for v in op.attrs["multiplier"])
        s = int(op.attrs["shift"][0])
        za, zb = self._zp(a), self._zp(b)

        def body(idx, load, tensors):
            from tvm import tirx
            total = ((load(0).astype("int64") - za) * tirx.const(ma, "int64")
                     + (load(1).astype("int64") - zb) * tirx.const(mb, "int64"))
            return self._clamped(op, (total + tirx.const(1 << (s - 1), "int64")) >> tirx.const(s, "int64"))
        self._elementwise(op, body)

    def op_qmul(self, op):
        a, b = op.inputs
        m, s = int(op.attrs["multiplier"][0]), int(op.attrs["shift"][0])
        za, zb = self._zp(a), self._zp(b)

        def body(idx, load, tensors):
            from tvm import tirx
            product = (load(0).astype("int64") - za) * (load(1).astype("int64") - zb)
            return self._clamped(op, (product * tirx.const(m, "int64") + tirx.const(1 << (s - 1), "int64"))
                                 >> tirx.const(s, "int64"))
        self._elementwise(op, body)

    def op_lut(self, op):
        x = op.inputs[0]
        qmin = dtype_range(x.type.dtype, x.type.quant.bits if x.type.quant else None)[0]
        table = self.const(np.asarray(op.attrs["table"], np.int64), "int32")

        def body(idx, load, tensors):
            return tensors[1][load(0).astype("int32") - qmin].astype("int64")
        self._elementwise(op, body, [table])

    def op_qreduce_mean(self, op):
        x, out = op.inputs[0], op.output
        axes = sorted(a % x.type.rank for a in op.attrs["axes"])
        keep = op.attrs.get("keepdims", True)
        nhwc = self.layout(x) == NHWC and axes == [2, 3] and keep
        m, s = int(op.attrs["multiplier"][0]), int(op.attrs["shift"][0])
        zx = self._zp(x)
        in_shape = _nhwc_shape(x.type.shape) if nhwc else x.type.shape
        red_axes = [1, 2] if nhwc else axes
        out_shape = _nhwc_shape(out.type.shape) if nhwc else out.type.shape
        dtype = TVM_DTYPES[out.type.dtype]

        def fn(xt):
            from tvm import te, tirx
            raxes = [te.reduce_axis((0, in_shape[a]), f"r{a}") for a in red_axes]

            def source(idx):
                full, it, k = [], iter(raxes), 0
                for a in range(len(in_shape)):
                    if a in red_axes:
                        full.append(next(it))
                        if keep:
                            k += 1
                    else:
                        full.append(idx[k])
                        k += 1
                return tuple(full)
            total = te.compute(out_shape, lambda *idx: te.sum(xt[source(idx)].astype("int64") - zx, axis=raxes),
                               name="sum")
            return te.compute(out_shape, lambda *idx: self._clamped(
                op, (total[idx] * tirx.const(m, "int64") + tirx.const(1 << (s - 1), "int64"))
                >> tirx.const(s, "int64")).astype(dtype), name="qreduce_mean")
        expr = self.emit_kernel(fn, [self.get(x, NHWC if nhwc else NATIVE)], op.name, "reduce", op="qreduce_mean")
        self.set(out, expr, NHWC if nhwc else NATIVE)

    def op_max_pool2d(self, op):
        x = op.inputs[0]
        nhwc = self.layout(x) == NHWC
        a = op.attrs
        pads = list(a["pads"])
        expr = self.relax.op.nn.max_pool2d(self.get(x, NHWC if nhwc else NATIVE), a["kernel"], a["strides"], pads,
                                           a.get("dilations", [1, 1]), ceil_mode=bool(a.get("ceil_mode", False)),
                                           layout="NHWC" if nhwc else "NCHW")
        self.set(op.output, self.bb.emit(expr), NHWC if nhwc else NATIVE)


def lower(graph, spec) -> Lowered:
    """Graph -> Relax IRModule (unscheduled kernels; see targets.build for the schedules)."""
    return Lowering(graph, spec).run()


# --- float and data-movement ops through Relax ----------------------------------------------------------

def _unary(name):
    def lower(low, op):
        return getattr(low.relax.op, name)(low.get(op.inputs[0]))
    return lower


def _binary(name):
    def lower(low, op):
        return getattr(low.relax.op, name)(low.get(op.inputs[0]), low.get(op.inputs[1]))
    return lower


def _clip(low, op):
    lo, hi = op.attrs.get("min"), op.attrs.get("max")
    return low.relax.op.clip(low.get(op.inputs[0]), -3.4e38 if lo is None else lo, 3.4e38 if hi is None else hi)


def _conv2d(low, op):
    r = low.relax.op
    a = op.attrs
    y = r.nn.conv2d(low.get(op.inputs[0]), low.get(op.inputs[1]), a["strides"], a["pads"], a["dilations"],
                    a["groups"])
    if len(op.inputs) > 2:
        y = r.add(y, r.reshape(low.get(op.inputs[2]), (1, -1, 1, 1)))
    return y


def _dense(low, op):
    r = low.relax.op
    y = r.matmul(low.get(op.inputs[0]), r.permute_dims(low.get(op.inputs[1])))
    return r.add(y, low.get(op.inputs[2])) if len(op.inputs) > 2 else y


def _pool(kind):
    def lower(low, op):
        a = op.attrs
        fn = getattr(low.relax.op.nn, kind)
        extra = {"count_include_pad": bool(a.get("count_include_pad", False))} if kind == "avg_pool2d" else {}
        return fn(low.get(op.inputs[0]), a["kernel"], a["strides"], list(a["pads"]), a.get("dilations", [1, 1]),
                  ceil_mode=bool(a.get("ceil_mode", False)), **extra)
    return lower


def _slice(low, op):
    a = op.attrs
    return low.relax.op.strided_slice(low.get(op.inputs[0]), a["axes"], a["starts"], a["ends"], a["steps"])


FLOAT_OPS: dict[str, Callable] = {
    **{k: _unary(k) for k in ("sigmoid", "tanh", "exp", "sqrt", "erf")},
    "relu": lambda low, op: low.relax.op.nn.relu(low.get(op.inputs[0])),
    "clip": _clip,
    **{k: _binary(k) for k in ("add", "subtract", "multiply", "divide")},
    "sub": _binary("subtract"), "mul": _binary("multiply"), "div": _binary("divide"),
    "identity": lambda low, op: low.get(op.inputs[0]),
    "reshape": lambda low, op: low.relax.op.reshape(low.get(op.inputs[0]), op.attrs["shape"]),
    "transpose": lambda low, op: low.relax.op.permute_dims(low.get(op.inputs[0]), op.attrs["perm"]),
    "concat": lambda low, op: low.relax.op.concat([low.get(v) for v in op.inputs], op.attrs["axis"]),
    "slice": _slice,
    "softmax": lambda low, op: low.relax.op.nn.softmax(low.get(op.inputs[0]), op.attrs["axis"]),
    "reduce_mean": lambda low, op: low.relax.op.mean(low.get(op.inputs[0]), op.attrs["axes"],
                                                     bool(op.attrs.get("keepdims", True))),
    "conv2d": _conv2d,
    "dense": _dense,
    "matmul": _binary("matmul"),
    "max_pool2d": _pool("max_pool2d"),
    "avg_pool2d": _pool("avg_pool2d"),
    "cast": lambda low, op: low.relax.op.astype(low.get(op.inputs[0]), TVM_DTYPES[op.attrs["to"]]),
}
