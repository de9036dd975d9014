"""Pruning: magnitude pruning with schedules (unstructured, block, N:M) and channel pruning."""

from slimkit.pruning.channels import (
    ChannelPruningConfig,
    PrunedArchitecture,
    count_macs,
    prune_channels,
)
from slimkit.pruning.config import MagnitudePruningConfig
from slimkit.pruning.latency import prune_for_latency
from slimkit.pruning.magnitude import prune
from slimkit.pruning.mask import PruningMask
from slimkit.pruning.nm import SparsityCheck, check_sparsity
from slimkit.pruning.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule

__all__ = [
    "ChannelPruningConfig",
    "ConstantSparsity",
    "MagnitudePruningConfig",
    "PolynomialDecay",
    "PrunedArchitecture",
    "PruningMask",
    "PruningSchedule",
    "SparsityCheck",
    "check_sparsity",
    "count_macs",
    "prune",
    "prune_channels",
    "prune_for_latency",
]
