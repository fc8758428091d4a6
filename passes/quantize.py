"""quantize: write the fake-quant (quantize -> dequantize) form of a float graph from calibrated ranges."""

from fnmatch import fnmatch
from typing import Literal

from qpass import Pass, PassResult, option, register_pass
from qpass.errors import PassError
from qpass.ir.types import TensorType, is_float
from qpass.ir.opdef import Trait, has_trait
from qpass.quant import is_float_layer
from qpass.quant.params import activation_params, weight_params


def insert_fake_quant(graph, value, params, dtype):
    """quantize -> dequantize after `value`; every other reader of `value` reads the dequantized copy.

    A graph output keeps its name: the dequantized copy takes it, the float original becomes `.float`.
    """
    users = graph.users(value)
    anchor = users[0] if users else None
    name = value.name
    if graph.is_output(value):
        graph.rename(value, graph.fresh_name(name + ".float"))
    q = graph.add_op("quantize", [value], types=[TensorType(value.type.shape, dtype, params)],
                     names=[name + ".q"], before=anchor)
    dq = graph.add_op("dequantize", [q.output], names=[name if graph.is_output(value) else name + ".dq"],
                      before=anchor)
    graph.replace_all_uses(value, dq.output, exclude=q)
    return q, dq


# Ops that join their operands' values at one output scale: inputs of very different ranges lose the
# small ones. (Products such as mul and matmul scale instead, so any ranges combine well.)
_ONE_SCALE_JOINS = ("concat", "add")


@register_pass
class Quantize(Pass):
    """Insert fake-quant pairs on activations (from ctx.analyses.ranges, see range-analysis) and
    on the weights of conv2d/dense. Activations that a ReLU/Clip follows are quantized after it; a
    concat or add of inputs whose ranges differ more than max-range-ratio times stays float."""

    name = "quantize"
    weights: Literal["per-channel", "per-tensor", "per-group"] = option("per-channel", "weight granularity")
    group_size: int = option(32, "for weights=per-group: input channels per group")
    weight_bits: int = option(8, "weight bits (4 to 8)")
    exact_range: bool = option(
        False, "weights that would take 8 bits take 7 (within [-64, 63], stored as int8; keep-int8 layers too): "
               "AVX2's vpmaddubsw is exact on them at full rate (the avx2-u8s7 micro-kernel)")
    activations: Literal["asymmetric", "symmetric"] = option("asymmetric", "activation scheme")
    activation_dtype: Literal["i8", "u8"] = option("i8", "activation storage type")
    weight_clip: Literal["auto", "max", "mse"] = option(
        "auto", "weight range: max |w|, the least-squared-error bound, or auto (mse below 8 bits)")
    keep_float: list[str] = option([], "op name patterns (fnmatch) whose weights stay float")
    keep_int8: list[str] = option([], "op name patterns (fnmatch), or first / last (the first / last conv or "
                                      "dense in program order), whose weights stay 8-bit")
    max_range_ratio: float = option(
        64.0, "a concat or add whose inputs' calibrated max |value| differ more than this many times stays "
              "float (one 8-bit scale would flatten the small inputs to zero); 0 turns the check off")

    def run(self, graph, ctx):
        ranges = ctx.analyses.ranges
        if ranges is None:
            raise PassError("quantize needs activation ranges: run range-analysis before it in the pipeline")
        changed = False
        kept_int8 = self.int8_layers(graph)
        for op in graph.ops:
            if not is_float_layer(op) or any(fnmatch(op.name, p) for p in self.keep_float):
                continue
            weight = op.inputs[1]
            if not weight.is_constant or not is_float(weight.type.dtype):
                continue
            bits = 8 if op.name in kept_int8 else self.weight_bits
            if self.exact_range:
                bits = min(bits, 7)
            weight_dtype = "i4" if bits <= 4 else "i8"
            granularity = self.weights if (self.weights != "per-group" or op.kind == "dense") else "per-channel"
            clip = self.weight_clip if self.weight_clip != "auto" else ("mse" if bits < 8 else "max")
            params = weight_params(weight.data, weight_dtype, granularity,
                                   axis=1 if granularity == "per-group" else 0, group_size=self.group_size,
                                   bits=bits if bits not in (4, 8) else None, clip=clip)
            q = graph.add_op("quantize", [weight], types=[TensorType(weight.type.shape, weight_dtype, params)],
                             names=[weight.name + ".q"], before=op)
            dq = graph.add_op("dequantize", [q.output], names=[weight.name + ".dq"], before=op)
            graph.set_input(op, 1, dq.output)
            changed = True
        symmetric = self.activations == "symmetric"
        mixed = self.mixed_range_ops(graph, ranges)
        ctx.analyses.custom["quantize"] = {"float_ops": {op.name: why for op, why in mixed.items()}}
        floated = {v.name for op in mixed for v in op.outputs}
        activations = [v for v in graph.inputs] + [v for op in graph.ops for v in op.outputs]
        for value in activations:
            if not is_float(value.type.dtype) or value.name not in ranges or value.name in floated:
                continue
            producer = graph.producer(value)
            if producer is not None and producer.kind in ("quantize", "dequantize"):
                continue
            users = graph.users(value)
            # A float16 input reaches the f32 graph through a widening cast: quantize after it.
            if producer is None and users and all(user.kind == "cast" and is_float(user.outputs[0].type.dtype)
                                                  for user in users):
                continue
            if producer is not None and not has_trait(producer.kind, Trait.INTEGER_FORM) \
                    and not any(has_trait(user.kind, Trait.INTEGER_FORM) and user not in mixed for user in users):
                continue
            # An activation right after its producer is quantized after it, not before: it folds
            # into the producer's clamp.
            if producer is not None and has_trait(producer.kind, Trait.FUSES_ACTIVATION) and len(users) == 1 \
                    and has_trait(users[0].kind, Trait.ACTIVATION) and not graph.is_output(value):
                continue
            # Data movement reuses its operand's parameters, so the fake-quant pair around it
            # cancels after folding.
            params = None
            if producer is not None and has_trait(producer.kind, Trait.DATA_MOVEMENT):
                source = graph.producer(producer.inputs[0])
                if source is not None and source.kind == "dequantize":
                    params = source.inputs[0].type.quant
            params = params or activation_params(*ranges[value.name], self.activation_dtype, symmetric)
            insert_fake_quant(graph, value, params, self.activation_dtype)
            changed = True
        return PassResult(graph, changed)

    def mixed_range_ops(self, graph, ranges) -> dict:
        """The concats and adds whose inputs' ranges differ more than max-range-ratio times -> why they stay
        float, and the data movement after them (it would requantize the joined values to one scale again).

        Their inputs keep their own scales and are dequantized before them, so fold-fake-quant leaves
        them float (it lists them in ctx.analyses.float_ops; the reason is in custom["quantize"]).
        """
        mixed: dict = {}
        if self.max_range_ratio <= 0:
            return mixed
        floated: set[str] = set()
        for op in graph.ops:
            if op.kind in _ONE_SCALE_JOINS:
                sizes = {v.name: max(abs(ranges[v.name][0]), abs(ranges[v.name][1])) for v in op.inputs
                         if not v.is_constant and is_float(v.type.dtype) and v.name in ranges}
                sizes = {name: size for name, size in sizes.items() if size > 0}
                if len(sizes) >= 2:
                    largest, smallest = max(sizes, key=sizes.get), min(sizes, key=sizes.get)
                    ratio = sizes[largest] / sizes[smallest]
                    if ratio > self.max_range_ratio:
                        mixed[op] = (
                            f"{op.kind}: its inputs' calibrated ranges differ {ratio:.0f}x (%{largest} up to "
                            f"{sizes[largest]:.4g}, %{smallest} up to {sizes[smallest]:.4g}), more than "
                            f"max-range-ratio={self.max_range_ratio:g}; at one 8-bit scale the small inputs "
                            "would round to zero, so it stays float (quantize{max-range-ratio=0} quantizes it "
                            "anyway)")
                        floated.update(v.name for v in op.outputs)
            elif has_trait(op.kind, Trait.DATA_MOVEMENT) and op.inputs and op.inputs[0].name in floated:
                mixed[op] = f"{op.kind}: moves the values of a mixed-range {graph.producer(op.inputs[0]).kind}"
                floated.update(v.name for v in op.outputs)
        return mixed

    def int8_layers(self, graph) -> set[str]:
        """Names of the conv/dense ops that keep-int8 names (first / last, or by pattern)."""
        layers = [op.name for op in graph.ops if is_float_layer(op)]
        chosen = {name for name in layers if any(fnmatch(name, p) for p in self.keep_int8)}
        if layers and "first" in self.keep_int8:
            chosen.add(layers[0])
        if layers and "last" in self.keep_int8:
            chosen.add(layers[-1])
        return chosen
