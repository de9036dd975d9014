"""PQAT (pruned -> QAT) and CQAT (clustered -> QAT), each checked on its int8 artifact."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import slimkit as sk
from slimkit.examples import steps_per_epoch, train

from .conftest import pruning_masks
from .helpers import KERNELS, int8_weights, ort_accuracy, unique_per_channel


def test_pqat_keeps_the_pruning_mask_exactly(stages, digits, tmp_path):
    model = copy.deepcopy(stages.pruned)
    sk.quantize(model, sk.QATConfig(), calibration=digits.calibration, progress=False)
    train(model, digits, epochs=1, lr=1e-4, seed=1, scheduler=sk.Scheduler(model))
    path = sk.export_onnx(model, tmp_path / "pqat.onnx", example_inputs=digits.x_test[:8])
    for layer, w in int8_weights(path).items():
        assert np.array_equal(w == 0, stages.masks[layer].numpy()), layer
    assert ort_accuracy(path, digits) >= stages.baseline_accuracy - 0.015


def test_pqat_with_a_schedule_that_keeps_updating(trained_digits, digits, tmp_path):
    # ConstantSparsity never ends: masks are recomputed during QAT too. Zeros must match the
    # final masks (whatever they are), and QAT must not turn a pruned weight non-zero.
    spe = steps_per_epoch(digits)
    model = copy.deepcopy(trained_digits)
    sk.prune(model, sk.MagnitudePruningConfig(sk.ConstantSparsity(0.7, frequency=spe // 2)))
    sk.quantize(model, sk.QATConfig(), calibration=digits.calibration, progress=False)
    train(model, digits, epochs=1, lr=1e-4, seed=2, scheduler=sk.Scheduler(model))
    masks = pruning_masks(model)
    path = sk.export_onnx(model, tmp_path / "pqat-live.onnx", example_inputs=digits.x_test[:8])
    for layer, w in int8_weights(path).items():
        assert np.array_equal(w == 0, masks[layer].numpy()), layer
        assert (w == 0).mean() == pytest.approx(0.7, abs=0.002), layer


@pytest.mark.parametrize("per_channel", [True, False])
def test_cqat_keeps_at_most_k_values(trained_digits, digits, tmp_path, per_channel):
    model = copy.deepcopy(trained_digits)
    sk.cluster(model, sk.ClusteringConfig(8))
    sk.quantize(model, sk.QATConfig(per_channel=per_channel), calibration=digits.calibration,
                progress=False)
    train(model, digits, epochs=1, lr=1e-4, seed=3, scheduler=sk.Scheduler(model))
    path = sk.export_onnx(model, tmp_path / "cqat.onnx", example_inputs=digits.x_test[:8],
                          compact=True)
    weights = int8_weights(path)
    assert set(weights) == set(KERNELS)
    for layer, w in weights.items():
        assert unique_per_channel(w) <= 8, layer
        if not per_channel:  # one scale per tensor: the 8 clusters are 8 int8 values per layer
            assert len(np.unique(w)) <= 8, layer
    # Clustering and int8 together cost little on digits (baseline 0.978).
    assert ort_accuracy(path, digits) >= 0.95


def test_clustering_before_pruning_ends_warns(trained_digits, digits):
    # The schedule still raises sparsity while clustering trains: weights pruned later would
    # keep their centroid in the weight the layer uses, so the first scheduler step says so.
    import warnings

    spe = steps_per_epoch(digits)
    model = copy.deepcopy(trained_digits)
    sk.prune(model, sk.MagnitudePruningConfig(
        sk.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=4 * spe, frequency=spe)))
    early = copy.deepcopy(model)
    sk.cluster(early, sk.ClusteringConfig(16, preserve_sparsity=True))
    with pytest.warns(UserWarning, match=r"conv1\.weight \(step 1, sparsity rises until step"):
        sk.Scheduler(early).step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refreshes move newly pruned weights to zero: no warning
        sk.cluster(model, sk.ClusteringConfig(16, preserve_sparsity=True, refresh_every=10))
        sk.Scheduler(model).step()
