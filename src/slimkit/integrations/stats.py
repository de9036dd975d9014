"""``training_stats``: what the slimkit techniques of a model look like right now, as numbers.

The Lightning and Hugging Face callbacks log this dict; call it yourself in your own loop.
Everything is read from the parametrizations' state (masks, centroids, labels, observer
buffers), never by running the model or evaluating a parametrized weight, so it is cheap
enough to log every few steps.

Keys (every value is a float; a family's keys appear only when the model uses it):

| key | meaning |
|---|---|
| ``slimkit/step`` | scheduler steps taken (the largest ``step`` buffer) |
| ``slimkit/sparsity`` | zeros in the pruning masks / entries under a mask, over all pruned tensors |
| ``slimkit/target_sparsity`` | what the pruning schedule asks for at this step (largest over groups) |
| ``slimkit/clusters`` | most distinct values in one codebook (one row with ``per_channel``) |
| ``slimkit/clustered_tensors`` | tensors snapped to centroids |
| ``slimkit/quantized_tensors`` | tensors with weight fake-quant |
| ``slimkit/observers`` | activation quantizers |
| ``slimkit/observers_calibrated`` | ... that have a range |
| ``slimkit/observers_frozen`` | ... whose range no longer moves (QAT ``freeze_observers_step``) |

With ``per_layer=True`` also ``slimkit/sparsity/<layer>.<tensor>``,
``slimkit/clusters/<layer>.<tensor>`` and ``slimkit/range_lo/<quantizer>``,
``slimkit/range_hi/<quantizer>``.

Example:
    >>> sk.prune(model, sk.MagnitudePruningConfig(sk.PolynomialDecay(0.0, 0.8, 0, 100)))
    >>> training_stats(model)["slimkit/sparsity"]
    0.0
"""

from __future__ import annotations

import torch
import torch.nn as nn

from slimkit.core.parametrize import slim_parametrizations

PREFIX = "slimkit/"


def _activation_quantizers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    # Imported here: slimkit.quantization pulls in torch.fx and the ONNX rewriting, which a
    # pruning-only user of the stats does not need.
    from slimkit.quantization.activation import ActivationQuantizer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, ActivationQuantizer)]


def _codebook_values(p) -> int:
    """Most distinct values any one codebook of a ``ClusterSnap`` actually uses."""
    c = p.centroids.detach()
    if p.config.preserve_sparsity:
        c = c.masked_fill(p.fixed, 0.0)
    if c.dim() == 1:
        used = c[p.labels.long().unique()]
        return int(used.unique().numel())
    rows = p.labels.reshape(c.shape[0], -1).long()
    return max(int(c[i][rows[i].unique()].unique().numel()) for i in range(c.shape[0]))


@torch.no_grad()
def training_stats(model: nn.Module, per_layer: bool = False) -> dict[str, float]:
    """Sparsity, clustering and quantization state of ``model`` (see the module docstring).

    ``model`` may be the prepared model itself or anything that contains it (a
    LightningModule, a DistributedDataParallel wrapper). Tied weights count once.

    Example:
        >>> stats = training_stats(model, per_layer=True)
        >>> stats["slimkit/sparsity"], stats["slimkit/sparsity/fc1.weight"]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"training_stats needs an nn.Module, got {type(model).__name__}")
    from slimkit.clustering.snap import ClusterSnap
    from slimkit.pruning.mask import PruningMask
    from slimkit.quantization.fake_quant import WeightFakeQuant

    stats: dict[str, float] = {}
    seen: set[int] = set()
    step, zeros, total, target = None, 0, 0, None
    clusters, clustered, quantized = None, 0, 0
    for mname, tname, _index, p in slim_parametrizations(model):
        if id(p) in seen:  # a tied weight is one tensor, however many modules use it
            continue
        seen.add(id(p))
        name = f"{mname}.{tname}" if mname else tname
        if hasattr(p, "step"):
            step = max(int(p.step), step or 0)
        if isinstance(p, PruningMask):
            z = int((p.mask == 0).sum())
            zeros, total = zeros + z, total + p.mask.numel()
            t = float(p.config.schedule.sparsity(int(p.step)))
            target = t if target is None else max(target, t)
            if per_layer:
                stats[f"{PREFIX}sparsity/{name}"] = z / max(p.mask.numel(), 1)
        elif isinstance(p, ClusterSnap):
            k = _codebook_values(p)
            clusters, clustered = max(k, clusters or 0), clustered + 1
            if per_layer:
                stats[f"{PREFIX}clusters/{name}"] = float(k)
        elif isinstance(p, WeightFakeQuant):
            quantized += 1
    if step is not None:
        stats[f"{PREFIX}step"] = float(step)
    if total:
        stats[f"{PREFIX}sparsity"] = zeros / total
        stats[f"{PREFIX}target_sparsity"] = float(target)
    if clustered:
        stats[f"{PREFIX}clusters"] = float(clusters)
        stats[f"{PREFIX}clustered_tensors"] = float(clustered)
    if quantized:
        stats[f"{PREFIX}quantized_tensors"] = float(quantized)
    quantizers = _activation_quantizers(model)
    if quantizers:
        stats[f"{PREFIX}observers"] = float(len(quantizers))
        stats[f"{PREFIX}observers_calibrated"] = float(sum(bool(q.calibrated) for _, q in quantizers))
        stats[f"{PREFIX}observers_frozen"] = float(sum(bool(q.frozen) for _, q in quantizers))
        if per_layer:
            for qname, q in quantizers:
                if bool(q.calibrated):
                    stats[f"{PREFIX}range_lo/{qname}"] = float(q.lo)
                    stats[f"{PREFIX}range_hi/{qname}"] = float(q.hi)
    return stats
