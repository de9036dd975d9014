"""slimkit: make trained PyTorch models smaller and faster for deployment, and prove it.

Example:
    >>> import slimkit as sk
    >>> sk.prune(model, sk.MagnitudePruningConfig(sk.PolynomialDecay(0.0, 0.8, 0, 500)))
    >>> sk.export_onnx(model, "model.onnx", example_inputs=x); print(sk.report("model.onnx", x))
"""

__version__ = "0.1.0"

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
from slimkit.core.registry import register
from slimkit.core.verbs import calibrate, cluster, prune, quantize
from slimkit.distill import Distillation, DistillationConfig
from slimkit.export import ExportValidationError, export_onnx, export_packed, load_packed
from slimkit.metrics import DeploymentReport, report
from slimkit.search import OptimizeResult, SensitivityResult, optimize, sensitivity

# The configs and helpers of the built-in techniques, re-exported as the public API. The
# techniques themselves are registered through the slimkit.techniques entry points.
from slimkit.techniques.channel_pruning import (
    ChannelPruningConfig,
    prune_channels,
    prune_for_latency,
)
from slimkit.techniques.clustering import ClusteringConfig
from slimkit.techniques.pruning import (
    ConstantSparsity,
    MagnitudePruningConfig,
    PolynomialDecay,
    PruningSchedule,
    check_sparsity,
)
from slimkit.techniques.pruning.oneshot import SparseGPTConfig, WandaConfig
from slimkit.techniques.quantization import AdaRoundConfig, QATConfig, QuantizationConfig
from slimkit.techniques.quantization.smoothquant_config import SmoothQuantConfig
from slimkit.techniques.weight_only import WeightOnlyConfig

__all__ = [
    "AdaRoundConfig",
    "ChannelPruningConfig",
    "ClusteringConfig",
    "Config",
    "ConstantSparsity",
    "DeploymentReport",
    "Distillation",
    "DistillationConfig",
    "ExportValidationError",
    "MagnitudePruningConfig",
    "OptimizeResult",
    "PolynomialDecay",
    "PruningSchedule",
    "QATConfig",
    "QuantizationConfig",
    "Scheduler",
    "SensitivityResult",
    "SmoothQuantConfig",
    "SparseGPTConfig",
    "Technique",
    "WandaConfig",
    "WeightOnlyConfig",
    "apply",
    "calibrate",
    "check_sparsity",
    "cluster",
    "export_onnx",
    "export_packed",
    "get_technique",
    "load",
    "load_packed",
    "optimize",
    "prune",
    "prune_channels",
    "prune_for_latency",
    "quantize",
    "records",
    "register",
    "register_technique",
    "register_weights",
    "report",
    "save",
    "sensitivity",
    "strip",
    "techniques",
    "__version__",
]
