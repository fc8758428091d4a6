"""Model frontends: ONNX -> qpass IR."""

from qpass.frontend.onnx_import import import_onnx

__all__ = ["import_onnx"]
