"""``sk.cluster``: weight clustering (weight sharing) of any ``nn.Module``'s weights.

Example:
    >>> sk.cluster(model, sk.ClusteringConfig(clusters=16))     # k-means per layer, in place
    >>> train(model, data, epochs=5, lr=1e-4)                    # fine-tunes the centroids
    >>> sk.export_onnx(model, "clustered.onnx", example_inputs=x, compact=True)
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from slimkit.core.overrides import split_layers
from slimkit.core.parametrize import (
    SlimParametrization,
    expand_tied,
    get_module,
    raw_tensor,
    register,
)
from slimkit.core.records import group_id
from slimkit.core.selection import module_type, select_weights
from slimkit.core.stages import register_stage, stage_order
from slimkit.core.technique import Technique
from slimkit.techniques.clustering.codebook import check_size, fit_codebook
from slimkit.techniques.clustering.config import ClusteringConfig
from slimkit.techniques.clustering.snap import ClusterSnap

CLUSTER_STAGE = register_stage("cluster", 200)


def cluster(model: nn.Module, config: ClusteringConfig, targets=None, ignore=None) -> nn.Module:
    """Snap the selected weights of ``model`` to shared centroids, in place; returns ``model``.

    Each selected weight gets ``config.clusters`` centroids from 1-D k-means (per output
    channel with ``per_channel``). Fine-tune afterwards with any optimizer over
    ``model.parameters()``: the centroids train; with ``refresh_every`` the weights under them
    keep training too and are re-assigned to their nearest centroid every that many steps of
    ``sk.Scheduler(model)`` (step it after the optimizer). ``targets`` /
    ``ignore`` select layers as in :func:`slimkit.prune`; depthwise convolutions are skipped
    unless ``include_depthwise=True``. ``sk.strip`` bakes the clustered values.
    """
    if not isinstance(config, ClusteringConfig):
        raise TypeError(
            f"sk.cluster takes a ClusteringConfig, got {type(config).__name__}; "
            "use sk.apply for other techniques"
        )
    from slimkit.core.verbs import cluster as family_cluster

    return family_cluster(model, config, targets, ignore)


def is_depthwise(module: nn.Module) -> bool:
    """A convolution with one group per input channel (groups == in_channels > 1)."""
    return (
        isinstance(module, nn.modules.conv._ConvNd)
        and module.groups > 1
        and module.groups == module.in_channels
    )


def _select(model: nn.Module, config: ClusteringConfig, targets, ignore):
    layers = select_weights(model, targets, ignore, technique="weight clustering")
    if config.include_depthwise:
        return layers
    kept, skipped = [], []
    for mname, tname in layers:
        module = get_module(model, mname)
        (skipped if is_depthwise(module) else kept).append((mname, tname))
    if skipped:
        names = ", ".join(f"{m} ({module_type(get_module(model, m)).__name__})"
                          for m, _ in skipped)
        warnings.warn(
            f"slimkit: weight clustering skipped {len(skipped)} depthwise convolution(s): "
            f"{names}. They have few weights per channel and lose accuracy that fine-tuning "
            "does not recover; pass ClusteringConfig(include_depthwise=True) to cluster them.",
            stacklevel=4,
        )
    if not kept:
        raise ValueError(
            "every selected layer is a depthwise convolution, which weight clustering skips; "
            "pass ClusteringConfig(include_depthwise=True) or select other layers"
        )
    return kept


def _input_below(module: nn.Module, tname: str) -> torch.Tensor:
    """What the cluster stage will receive: the raw weight through the stages before it."""
    w = raw_tensor(module, tname)
    if parametrize.is_parametrized(module, tname):
        for q in module.parametrizations[tname]:
            # Stages below this one (a pruning mask), and any parametrization that is not
            # slimkit's (it defines the model's weight), shape what the snap receives.
            if not isinstance(q, SlimParametrization) or (
                    stage_order(q.stage) < stage_order(CLUSTER_STAGE)):
                w = q(w)
    return w


def _prepare(model: nn.Module, config: ClusteringConfig, layers, fit=None) -> None:
    groups = split_layers(model, config, layers)
    # Every layer is checked before any is clustered: a bad layer leaves the model unchanged.
    for cfg, members in groups:
        _check_layers(model, cfg, members)
    group = group_id(model, "cluster")
    for k, (cfg, members) in enumerate(groups):
        _prepare_group(model, cfg, members, group if k == 0 else f"{group}.{k}",
                       fit or fit_codebook)


def _placeholder_codebook(w: torch.Tensor, config: ClusteringConfig, name: str):
    """Codebook, labels and fixed mask of the shapes :func:`fit_codebook` returns, all zero:
    what ``sk.load`` rebuilds before the checkpoint overwrites every one of them (running
    k-means there was thrown away: 84 s of a BERT-base k=256 load at load average 7)."""
    k = config.clusters
    shape = (w.shape[0], k) if config.per_channel else (k,)
    return (torch.zeros(shape), torch.zeros(w.shape, dtype=torch.long),
            torch.zeros(shape, dtype=torch.bool))


def _check_layers(model: nn.Module, config: ClusteringConfig, layers) -> None:
    for mname, tname in layers:
        module = get_module(model, mname)
        t = raw_tensor(module, tname)
        name = f"{mname}.{tname}" if mname else tname
        if not torch.is_floating_point(t):
            raise ValueError(f"{name} is {t.dtype}; weight clustering needs a floating-point weight")
        check_size(t, config, name)


def _prepare_group(model: nn.Module, config: ClusteringConfig, layers, group: str,
                   fit=fit_codebook) -> None:
    for sites in expand_tied(model, layers):
        mname, tname = sites[0]
        module = get_module(model, mname)
        with torch.no_grad():
            w = _input_below(module, tname)
        c, labels, fixed = fit(w, config, f"{mname}.{tname}")
        p = ClusterSnap(c.to(w.device), labels.to(w.device), fixed.to(w.device), config,
                        dtype=w.dtype, group=group)
        register(model, sites, p)


class WeightClustering(Technique):
    """The ``weight-clustering`` technique: k shared values per weight (stage ``cluster``).

    Its compact form (uint8 indices + a codebook) is not a hook of its own: ``compact=True``
    on export asks the storage layer to store every weight with few values that way.
    """

    name = "weight-clustering"
    config_cls = ClusteringConfig
    family = "clustering"
    stage = CLUSTER_STAGE
    description = ("Share k trained values per layer (k-means weight clustering); "
                   "compact export stores uint8 indices + a codebook.")

    def select(self, model, config, targets, ignore):
        return _select(model, config, targets, ignore)

    def prepare(self, model, config, layers):
        _prepare(model, config, layers)

    def replay(self, model, config, layers, record):
        # The checkpoint holds the centroids, labels and fixed mask of every layer: only their
        # shapes are needed here, not a k-means fit.
        if record.get("stripped"):
            return super().replay(model, config, layers, record)
        _prepare(model, config, layers, fit=_placeholder_codebook)

    def knobs(self, config):
        return {"clusters": [32, 16, 8, 4]}

    def conformance_entries(self):
        from slimkit.techniques.clustering.conformance import ENTRIES

        return ENTRIES


TECHNIQUE = WeightClustering()
