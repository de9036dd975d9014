"""``sk.prune``: magnitude pruning of any ``nn.Module``'s weights, on a schedule.

Example:
    >>> cfg = sk.MagnitudePruningConfig(sk.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=500))
    >>> sk.prune(model, cfg, ignore=["classifier"])
    >>> scheduler = sk.Scheduler(model)            # scheduler.step() after optimizer.step()
"""

from __future__ import annotations

import torch
import torch.nn as nn

from slimkit.core.parametrize import expand_tied, get_module, raw_tensor, register
from slimkit.core.records import group_id
from slimkit.core.registry import apply, register_technique
from slimkit.pruning.config import MagnitudePruningConfig
from slimkit.pruning.mask import PruningMask, update_masks
from slimkit.pruning.nm import nm_layers


def prune(model: nn.Module, config: MagnitudePruningConfig, targets=None, ignore=None) -> nn.Module:
    """Attach pruning masks to the selected weights of ``model`` in place; returns ``model``.

    ``targets`` / ``ignore`` select layers by type name, glob or ``re:`` regex (see
    :func:`slimkit.core.selection.select_weights`); by default every Linear, Conv, ConvTranspose,
    Embedding, MultiheadAttention projection and RNN/LSTM/GRU weight is pruned. Masks follow
    ``config.schedule`` as :class:`slimkit.Scheduler` steps; ``sk.strip`` bakes them.
    """
    if not isinstance(config, MagnitudePruningConfig):
        raise TypeError(
            f"sk.prune takes a MagnitudePruningConfig, got {type(config).__name__}; "
            "use sk.apply for other techniques"
        )
    return apply(model, config, targets, ignore)


def _prepare(model: nn.Module, config: MagnitudePruningConfig, layers) -> None:
    if config.nm is not None:
        layers = nm_layers(model, layers, config.nm[1])
    for mname, tname in layers:
        t = raw_tensor(get_module(model, mname), tname)
        if not torch.is_floating_point(t):
            raise ValueError(
                f"{mname}.{tname} is {t.dtype}; magnitude pruning needs a floating-point weight"
            )
    group = group_id(model, "prune")
    created = []
    for sites in expand_tied(model, layers):
        mname, tname = sites[0]
        p = PruningMask(raw_tensor(get_module(model, mname), tname), config, group)
        register(model, sites, p)
        created.extend((m, t, 0, p) for m, t in sites)
    schedule = config.schedule
    if schedule.should_update(0):
        update_masks(model, created, schedule.sparsity(0))


register_technique(
    "magnitude-pruning",
    MagnitudePruningConfig,
    _prepare,
    family="pruning",
    description="Zero the smallest weights (unstructured or blocks) on a sparsity schedule.",
)
