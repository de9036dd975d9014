"""Channel pruning: removes channels over Torch-Pruning's dependency graph (``sk.prune_channels``),
and the latency-aware policy (``sk.prune_for_latency``)."""

from slimkit.techniques.channel_pruning.channels import (
    ChannelPruningConfig,
    PrunedArchitecture,
    count_macs,
    prune_channels,
)
from slimkit.techniques.channel_pruning.latency import prune_for_latency

__all__ = [
    "ChannelPruningConfig",
    "PrunedArchitecture",
    "count_macs",
    "prune_channels",
    "prune_for_latency",
]
