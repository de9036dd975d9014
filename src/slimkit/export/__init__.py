"""Export: strip parametrizations and write ONNX validated in ONNX Runtime."""

from slimkit.core.parametrize import strip, strip_innermost
from slimkit.export.onnx import ExportContext, ExportValidationError, export_onnx, ort_session
from slimkit.export.packed import PackedFormatError, export_packed, load_packed, read_packed

__all__ = ["ExportContext", "ExportValidationError", "PackedFormatError", "export_onnx",
           "export_packed", "load_packed", "ort_session", "read_packed", "strip",
           "strip_innermost"]
