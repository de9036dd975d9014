"""Export: strip parametrizations and write ONNX validated in ONNX Runtime."""

from slimkit.core.parametrize import strip, strip_innermost
from slimkit.export.onnx import ExportContext, ExportValidationError, export_onnx, ort_session

__all__ = ["ExportContext", "ExportValidationError", "export_onnx", "ort_session", "strip", "strip_innermost"]
