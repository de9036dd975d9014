"""training_stats: numbers read from masks, codebooks and observers."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import slimkit as sk
from slimkit.examples import DigitsCNN, set_seed
from slimkit.integrations import training_stats

from ..conftest import TiedLM


def test_unprepared_model_has_no_stats():
    assert training_stats(DigitsCNN()) == {}
    with pytest.raises(TypeError, match="training_stats needs an nn.Module, got dict"):
        training_stats({})


def test_pruning_sparsity_is_the_share_of_masked_entries():
    set_seed(0)
    model = DigitsCNN()
    sched = sk.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=4, frequency=1)
    sk.prune(model, sk.MagnitudePruningConfig(sched))
    scheduler = sk.Scheduler(model)
    assert training_stats(model)["slimkit/sparsity"] == 0.0
    for _ in range(4):
        scheduler.step()
    stats = training_stats(model, per_layer=True)
    masks = [model.get_submodule(m).parametrizations.weight[0].mask
             for m in ("conv1", "conv2", "fc1", "fc2")]
    expected = sum(int((m == 0).sum()) for m in masks) / sum(m.numel() for m in masks)
    assert stats["slimkit/sparsity"] == expected
    assert stats["slimkit/sparsity"] == pytest.approx(0.8, abs=1e-4)  # rounding per layer
    assert stats["slimkit/target_sparsity"] == pytest.approx(0.8, abs=1e-12)
    assert stats["slimkit/step"] == 4.0
    # conv1 has 288 weights: round(0.8 * 288) = 230 pruned.
    assert stats["slimkit/sparsity/conv1.weight"] == 230 / 288
    assert "slimkit/clusters" not in stats and "slimkit/observers" not in stats


def test_tied_weights_count_once():
    model = TiedLM()
    sk.prune(model, sk.MagnitudePruningConfig(0.5))
    stats = training_stats(model, per_layer=True)
    # embed/head share one 50x16 mask; body is 16x16: (400 + 128) / (800 + 256)
    assert stats["slimkit/sparsity"] == pytest.approx(528 / 1056, abs=1e-12)
    assert len([k for k in stats if k.startswith("slimkit/sparsity/")]) == 2


def test_clusters_count_the_values_in_use():
    set_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    sk.cluster(model, sk.ClusteringConfig(clusters=8))
    stats = training_stats(model, per_layer=True)
    for i in (0, 2):
        w = model[i].weight
        assert stats[f"slimkit/clusters/{i}.weight"] == float(w.unique().numel()) == 8.0
    assert stats["slimkit/clusters"] == 8.0 and stats["slimkit/clustered_tensors"] == 2.0

    set_seed(0)
    per_channel = nn.Sequential(nn.Linear(32, 6))
    sk.cluster(per_channel, sk.ClusteringConfig(clusters=4, per_channel=True))
    w = per_channel[0].weight
    most = max(int(row.unique().numel()) for row in w)
    assert training_stats(per_channel)["slimkit/clusters"] == float(most) == 4.0


def test_quantization_observers_calibrated_and_frozen():
    set_seed(0)
    model = DigitsCNN()
    sk.quantize(model, sk.QATConfig(freeze_observers_step=2))
    stats = training_stats(model)
    assert stats["slimkit/quantized_tensors"] == 4.0
    assert stats["slimkit/observers"] == 5.0  # conv1's input and the four outputs
    assert stats["slimkit/observers_calibrated"] == 0.0
    scheduler = sk.Scheduler(model)
    model.train()
    model(torch.rand(8, 1, 8, 8))
    scheduler.step()
    stats = training_stats(model, per_layer=True)
    assert stats["slimkit/observers_calibrated"] == 5.0
    assert stats["slimkit/observers_frozen"] == 0.0
    q = model.fc2.sk_output_quant
    assert stats["slimkit/range_hi/fc2.sk_output_quant"] == float(q.hi)
    scheduler.step()
    assert training_stats(model)["slimkit/observers_frozen"] == 5.0
