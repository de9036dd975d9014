"""``sk.prune``: magnitude pruning of any ``nn.Module``'s weights, on a schedule.

Example:
    >>> cfg = sk.MagnitudePruningConfig(sk.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=500))
    >>> sk.prune(model, cfg, ignore=["classifier"])
    >>> scheduler = sk.Scheduler(model)            # scheduler.step() after optimizer.step()
"""

from __future__ import annotations

import torch
import torch.nn as nn

from slimkit.core.overrides import split_layers
from slimkit.core.parametrize import expand_tied, get_module, raw_tensor, register
from slimkit.core.records import group_id
from slimkit.core.stages import register_stage
from slimkit.core.technique import Technique
from slimkit.techniques.pruning.config import MagnitudePruningConfig
from slimkit.techniques.pruning.mask import PruningMask, update_masks
from slimkit.techniques.pruning.nm import nm_layers


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
    from slimkit.core.verbs import prune as family_prune

    return family_prune(model, config, targets, ignore)


def _prepare(model: nn.Module, config: MagnitudePruningConfig, layers) -> None:
    # Layers with a config of their own (overrides) form a group of their own: a group steps
    # on one schedule.
    base = group_id(model, "prune")
    for k, (cfg, members) in enumerate(split_layers(model, config, layers)):
        _prepare_group(model, cfg, members, base if k == 0 else f"{base}.{k}")


def _prepare_group(model: nn.Module, config: MagnitudePruningConfig, layers, group: str) -> None:
    if config.nm is not None:
        layers = nm_layers(model, layers, config.nm[1])
    for mname, tname in layers:
        t = raw_tensor(get_module(model, mname), tname)
        if not torch.is_floating_point(t):
            raise ValueError(
                f"{mname}.{tname} is {t.dtype}; magnitude pruning needs a floating-point weight"
            )
    created = []
    for sites in expand_tied(model, layers):
        mname, tname = sites[0]
        p = PruningMask(raw_tensor(get_module(model, mname), tname), config, group)
        register(model, sites, p)
        created.extend((m, t, 0, p) for m, t in sites)
    schedule = config.schedule
    if schedule.should_update(0):
        update_masks(model, created, schedule.sparsity(0))


class MagnitudePruning(Technique):
    """The ``magnitude-pruning`` technique: masks on a sparsity schedule (stage ``mask``)."""

    name = "magnitude-pruning"
    config_cls = MagnitudePruningConfig
    family = "pruning"
    stage = register_stage("mask", 100)
    description = "Zero the smallest weights (unstructured or blocks) on a sparsity schedule."

    def prepare(self, model, config, layers):
        _prepare(model, config, layers)

    def knobs(self, config):
        if config.scope != "layer" or config.pattern is not None:
            return {}
        return {"schedule": [0.5, 0.7, 0.8, 0.9, 0.95]}

    def check_step(self, model, record):
        from slimkit.techniques.pruning.mask import schedule_shortfall

        return schedule_shortfall(model, record)

    def cli_commands(self):
        from slimkit.techniques.pruning.command import check_sparsity_command

        return [check_sparsity_command]

    def conformance_entries(self):
        from slimkit.techniques.pruning.conformance import ENTRIES

        return ENTRIES


TECHNIQUE = MagnitudePruning()
