"""legalize-activations: give 8-bit activations the signedness a target's dot products want.

x86's vpmaddubsw / vpdpbusd multiply *unsigned* by signed bytes, ARM sdot and CUDA dp4a signed
by signed. An i8 tensor with zero point z and the u8 tensor with zero point z + 128 stand for the
same reals, and q_u8 = q_i8 + 128 exactly, so retyping a whole group of connected values (and
shifting the integer attributes that name output values: clamps and lookup tables) changes no
real value and no integer result beyond the shift.
"""

from __future__ import annotations

import dataclasses

import networkx as nx
import numpy as np

from qpass import Pass, PassResult, option, register_pass
from qpass.errors import PassError
from qpass.ir.opdef import Trait, has_trait


def _follows(op) -> bool:
    """The op's result type follows its operands': operand and result change together."""
    return has_trait(op.kind, Trait.FOLLOWS_OPERAND)


def _flippable(dtype: str, quant) -> bool:
    return dtype in ("i8", "u8") and quant is not None and quant.bits in (None, 8)


@register_pass
class LegalizeActivations(Pass):
    """Retype 8-bit activations to the target's signedness (u8 for x86, i8 for ARM/CUDA): zero points,
    clamps and lookup tables shift by 128, real values and integer results are unchanged."""

    name = "legalize-activations"
    dtype: str = option("u8", doc="the activation dtype to legalize to: u8 or i8")

    def run(self, graph, ctx):
        if self.dtype not in ("u8", "i8"):
            raise PassError(f"legalize-activations: dtype must be u8 or i8, got {self.dtype!r}")
        other = "i8" if self.dtype == "u8" else "u8"
        delta = 128 if self.dtype == "u8" else -128
        start = graph.revision
        for group in self._groups(graph, other):
            self._shift(graph, group, delta)
        return PassResult(graph, graph.revision != start)

    def _groups(self, graph, dtype):
        """Sets of activation values of `dtype` that must change together, and safely can."""
        links = nx.Graph()
        for value in graph.values():
            if not value.is_constant and value.type.dtype == dtype and _flippable(dtype, value.type.quant):
                links.add_node(value)
        for op in graph.ops:
            if _follows(op):
                for a in op.inputs:
                    if a in links and op.output in links:
                        links.add_edge(a, op.output)
        for group in nx.connected_components(links):
            if all(self._safe(graph, v, group) for v in group):
                yield sorted(group, key=lambda v: v.name)

    @staticmethod
    def _safe(graph, value, group) -> bool:
        if graph.is_output(value):
            return False                                  # the caller sees this dtype: keep it
        producer = graph.producer(value)
        if producer is None or not (_follows(producer) or has_trait(producer.kind, Trait.RETYPABLE_RESULT)):
            return False
        if _follows(producer) and not all(v in group for v in producer.inputs):
            return False
        for user in graph.users(value):
            if _follows(user):
                if user.output not in group:
                    return False
            elif not has_trait(user.kind, Trait.READS_QUANTIZATION):
                return False
        return True

    @staticmethod
    def _shift(graph, group, delta):
        new_dtype = "u8" if delta > 0 else "i8"
        for value in group:
            quant = value.type.quant
            shifted = dataclasses.replace(quant, zero_point=quant.zero_point.astype(np.int64) + delta)
            graph.retype(value, dataclasses.replace(value.type, dtype=new_dtype, quant=shifted))
            op = graph.producer(value)
            if _follows(op) or op.kind == "quantize":      # their result type is all there is to change
                continue
            graph.set_attr(op, "out_dtype", new_dtype)
            if "clamp" in op.attrs:
                graph.set_attr(op, "clamp", [int(op.attrs["clamp"][0]) + delta, int(op.attrs["clamp"][1]) + delta])
            if op.kind == "lut":
                graph.set_attr(op, "table", [int(t) + delta for t in op.attrs["table"]])
