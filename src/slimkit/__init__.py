"""slimkit: make trained PyTorch models smaller and faster for deployment, and prove it.

Example:
    >>> import slimkit as sk
    >>> sk.prune(model, sk.MagnitudePruningConfig(sk.PolynomialDecay(0.0, 0.8, 0, 500)))
    >>> sk.export_onnx(model, "model.onnx", example_inputs=x); print(sk.report("model.onnx", x))
"""

__version__ = "0.1.0"

from slimkit.clustering import ClusteringConfig, cluster
from slimkit.core import (
    Config,
    Scheduler,
    Technique,
    apply,
    get_technique,
    load,
    records,
    register_technique,
    register_weights,
    save,
    strip,
    techniques,
)
from slimkit.export import ExportValidationError, export_onnx, export_packed, load_packed
from slimkit.metrics import DeploymentReport, report
from slimkit.pruning import (
    ChannelPruningConfig,
    ConstantSparsity,
    MagnitudePruningConfig,
    PolynomialDecay,
    PruningSchedule,
    check_sparsity,
    prune,
    prune_channels,
    prune_for_latency,
)
from slimkit.quantization import QATConfig, QuantizationConfig, calibrate, quantize

__all__ = [
    "ChannelPruningConfig",
    "ClusteringConfig",
    "Config",
    "ConstantSparsity",
    "DeploymentReport",
    "ExportValidationError",
    "MagnitudePruningConfig",
    "PolynomialDecay",
    "PruningSchedule",
    "QATConfig",
    "QuantizationConfig",
    "Scheduler",
    "Technique",
    "__version__",
    "apply",
    "calibrate",
    "check_sparsity",
    "cluster",
    "export_onnx",
    "export_packed",
    "get_technique",
    "load",
    "load_packed",
    "prune",
    "prune_channels",
    "prune_for_latency",
    "quantize",
    "records",
    "register_technique",
    "register_weights",
    "report",
    "save",
    "strip",
    "techniques",
]
