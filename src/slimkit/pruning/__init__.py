"""Pruning: magnitude pruning with schedules (unstructured and block)."""

from slimkit.pruning.config import MagnitudePruningConfig
from slimkit.pruning.magnitude import prune
from slimkit.pruning.mask import PruningMask
from slimkit.pruning.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule

__all__ = [
    "ConstantSparsity",
    "MagnitudePruningConfig",
    "PolynomialDecay",
    "PruningMask",
    "PruningSchedule",
    "prune",
]
