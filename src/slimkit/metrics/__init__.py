"""Deployment metrics: size, zipped size, entropy bound, latency, memory and accuracy.

Example:
    >>> from slimkit.metrics import report
    >>> print(report("model.onnx", example_inputs=x, eval_fn=accuracy))  # doctest: +SKIP
"""

from slimkit.metrics.entropy import entropy_bound_bytes
from slimkit.metrics.latency import measure_latency
from slimkit.metrics.memory import peak_inference_memory
from slimkit.metrics.report import DeploymentReport, report
from slimkit.metrics.sizes import zipped_size

__all__ = [
    "DeploymentReport",
    "entropy_bound_bytes",
    "measure_latency",
    "peak_inference_memory",
    "report",
    "zipped_size",
]
