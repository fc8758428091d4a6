"""qpass: a compiler-style quantization pipeline for neural networks, on Apache TVM.

    import qpass
    g = qpass.import_onnx("model.onnx")
    y = qpass.interpret(g, {"input": x})
    g = qpass.run_passes(g, "fold-constants,fold-batchnorm")
"""

from qpass.errors import (FrontendError, InterpreterError, IRError, ParseError, PassError,  # noqa: F401
                          QpassError)
from qpass.ir import Graph, Op, QuantParams, TensorType, Value, load, parse_graph, print_graph, save  # noqa: F401
from qpass.passmgr.passes import Pass, PassResult, option, register_pass, REGISTRY  # noqa: F401
from qpass.passmgr.manager import PassContext, run_passes  # noqa: F401
from qpass.passmgr.pipeline import format_pipeline, parse_pipeline  # noqa: F401
from qpass.interpreter import interpret  # noqa: F401
from qpass.api import quantization_pipeline, quantize  # noqa: F401
from qpass.compiler import compile  # noqa: F401,A001

__version__ = "0.1.0"


def import_onnx(model, input_shapes=None, name=None, constants=None) -> Graph:
    """Import an ONNX model (path or ModelProto) into the qpass IR; see qpass.frontend."""
    from qpass.frontend import import_onnx as _import
    return _import(model, input_shapes=input_shapes, name=name, constants=constants)
