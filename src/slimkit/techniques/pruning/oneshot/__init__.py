"""One-shot pruning from calibration data: SparseGPT and Wanda (unstructured and N:M).

Configs of the pruning family: ``sk.prune(model, SparseGPTConfig(0.5), calibration=batches)``.
Both calibrate one repeated block at a time (memory: the model plus one block's
activations) and leave the pruning folder's :class:`PruningMask` on every pruned layer.

Example:
    >>> sk.prune(model, SparseGPTConfig(pattern="2:4"), calibration=batches)
    >>> sk.check_sparsity(sk.strip(model), "2:4").ok
    True
"""

from slimkit.techniques.pruning.oneshot.config import (
    OneShotPruningConfig,
    OneShotSparsity,
    SparseGPTConfig,
    WandaConfig,
)
from slimkit.techniques.pruning.oneshot.solver import (
    layer_error,
    magnitude_keep,
    sparsegpt_prune,
    wanda_keep,
)
from slimkit.techniques.pruning.oneshot.technique import OneShotPruning, SparseGPT, Wanda

__all__ = [
    "OneShotPruning",
    "OneShotPruningConfig",
    "OneShotSparsity",
    "SparseGPT",
    "SparseGPTConfig",
    "Wanda",
    "WandaConfig",
    "layer_error",
    "magnitude_keep",
    "sparsegpt_prune",
    "wanda_keep",
]
