"""``training_stats``: what the slimkit techniques of a model look like right now, as numbers.

The Lightning and Hugging Face callbacks log this dict; call it yourself in your own loop.
Every statistic is declared by a technique's state objects
(:meth:`slimkit.core.state.SlimState.stats`, read from masks, centroids, labels, observer
buffers), never by running the model or evaluating a parametrized weight, so it is cheap
enough to log every few steps; a contributed technique's statistics appear beside these.

Keys of the built-in techniques (every value is a float; a technique's keys appear only when
the model uses it):

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

from slimkit.core.state import unique_states

PREFIX = "slimkit/"


@torch.no_grad()
def training_stats(model: nn.Module, per_layer: bool = False) -> dict[str, float]:
    """Training statistics of ``model``'s techniques (see the module docstring).

    ``model`` may be the prepared model itself or anything that contains it (a
    LightningModule, a DistributedDataParallel wrapper). Tied weights count once. Every
    statistic is declared by a state object (:meth:`slimkit.core.state.SlimState.stats`), so a
    contributed technique's statistics appear here without any change to this function.

    Example:
        >>> stats = training_stats(model, per_layer=True)
        >>> stats["slimkit/sparsity"], stats["slimkit/sparsity/fc1.weight"]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"training_stats needs an nn.Module, got {type(model).__name__}")
    totals: dict = {}
    layers: dict[str, float] = {}
    step = None
    for site in unique_states(model):
        state = site.state
        if hasattr(state, "step") and isinstance(state.step, torch.Tensor):
            step = max(int(state.step), step if step is not None else 0)
        for key, stat in state.stats().items():
            totals[key] = stat if key not in totals else totals[key].combine(stat)
        if per_layer:
            for key, value in state.layer_stats().items():
                layers[f"{PREFIX}{key}/{site.label}"] = float(value)
    stats: dict[str, float] = {}
    if step is not None:
        stats[f"{PREFIX}step"] = float(step)
    for key, stat in totals.items():
        stats[f"{PREFIX}{key}"] = stat.result()
    stats.update(layers)
    return stats
