"""Magnitude pruning with schedules: unstructured, block and N:M masks (``sk.prune``)."""

from slimkit.techniques.pruning.config import MagnitudePruningConfig
from slimkit.techniques.pruning.magnitude import prune
from slimkit.techniques.pruning.mask import PruningMask
from slimkit.techniques.pruning.nm import SparsityCheck, check_sparsity
from slimkit.techniques.pruning.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule

__all__ = [
    "ConstantSparsity",
    "MagnitudePruningConfig",
    "PolynomialDecay",
    "PruningMask",
    "PruningSchedule",
    "SparsityCheck",
    "check_sparsity",
    "prune",
]
