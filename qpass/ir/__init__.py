"""The qpass IR: typed SSA values, ops, graphs, their text form and verifier."""

from qpass.ir.graph import Graph, Op, Value
from qpass.ir.opdef import OPS, OpDef, Trait, define_op, has_trait, infer_types, op_def
from qpass.ir.text import parse_graph, print_graph
from qpass.ir.types import DTYPES, MissingData, QuantParams, TensorType, dtype_range, is_float, numpy_dtype
from qpass.ir.serialize import load, save

__all__ = ["Graph", "Op", "Value", "OPS", "OpDef", "Trait", "define_op", "has_trait", "infer_types", "op_def", "parse_graph",
           "print_graph", "DTYPES", "MissingData", "QuantParams", "TensorType", "dtype_range", "is_float",
           "numpy_dtype", "load", "save"]
