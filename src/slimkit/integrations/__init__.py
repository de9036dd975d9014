"""Where users train: their own loop, Lightning, the Hugging Face Trainer, torch.distributed.

``slimkit.integrations.stats`` and ``slimkit.integrations.distributed`` need only torch;
``slimkit.integrations.lightning`` and ``slimkit.integrations.hf`` import their framework,
so import them directly (``pip install 'slimkit[lightning]'`` / ``'slimkit[hf]'``).

Example:
    >>> from slimkit.integrations import training_stats, DistributedScheduler
    >>> from slimkit.integrations.lightning import SlimkitCallback
"""

from slimkit.integrations.distributed import (
    DistributedScheduler,
    broadcast_slimkit_state,
    slimkit_tensors,
    sync_forward_state,
    sync_observers,
    sync_slimkit_state,
    unsynced_tensors,
)
from slimkit.integrations.stats import training_stats

__all__ = [
    "DistributedScheduler",
    "broadcast_slimkit_state",
    "slimkit_tensors",
    "sync_forward_state",
    "sync_observers",
    "sync_slimkit_state",
    "training_stats",
    "unsynced_tensors",
]
