"""The collaborative pipeline on digits, shortened for CI, shared by the tests of this folder.

BENCHMARKS.md's recipe is 10 pruning epochs (cubic 0 -> 0.8 over the first 7), 5 clustering
epochs and 5 QAT epochs. Here: 3 pruning epochs (cubic 0 -> 0.8 over the first 2, masks
updated once per epoch), 2 epochs of sparsity-preserving clustering (16 clusters) and 2 QAT
epochs (activation observers frozen after the first), from the session's trained baseline.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
import torch

import slimkit as sk
from slimkit.examples import evaluate, steps_per_epoch, train


@dataclass
class Stages:
    baseline: torch.nn.Module
    pruned: torch.nn.Module          # after the pruning stage (masks still attached)
    clustered: torch.nn.Module       # pruned + sparsity-preserving clustering
    pcqat: torch.nn.Module           # pruned + clustered + QAT
    masks: dict = field(default_factory=dict)   # layer -> bool tensor, True where pruned
    baseline_accuracy: float = 0.0


def pruning_masks(model) -> dict:
    return {name: (getattr(model, name).parametrizations.weight[0].mask == 0).clone()
            for name in ("conv1", "conv2", "fc1", "fc2")}


@pytest.fixture(scope="session")
def stages(trained_digits, digits) -> Stages:
    torch.manual_seed(0)
    spe = steps_per_epoch(digits)
    pruned = copy.deepcopy(trained_digits)
    sk.prune(pruned, sk.MagnitudePruningConfig(
        sk.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=2 * spe, frequency=spe)))
    train(pruned, digits, epochs=3, lr=1e-4, seed=0, scheduler=sk.Scheduler(pruned))

    clustered = copy.deepcopy(pruned)
    sk.cluster(clustered, sk.ClusteringConfig(16, preserve_sparsity=True))
    train(clustered, digits, epochs=2, lr=1e-4, seed=0, scheduler=sk.Scheduler(clustered))

    pcqat = copy.deepcopy(clustered)
    sk.quantize(pcqat, sk.QATConfig(freeze_observers_step=spe), calibration=digits.calibration,
                progress=False)
    train(pcqat, digits, epochs=2, lr=1e-4, seed=0, scheduler=sk.Scheduler(pcqat))
    return Stages(trained_digits, pruned, clustered, pcqat, pruning_masks(pruned),
                  evaluate(trained_digits, digits.x_test, digits.y_test))


@pytest.fixture(scope="session")
def fp32_onnx(trained_digits, digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("fp32") / "fp32.onnx"
    return sk.export_onnx(trained_digits, path, example_inputs=digits.x_test[:8])


@pytest.fixture(scope="session")
def pcqat_onnx(stages, digits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pcqat")
    x = digits.x_test[:8]
    return (sk.export_onnx(stages.pcqat, folder / "pcqat.onnx", example_inputs=x),
            sk.export_onnx(stages.pcqat, folder / "pcqat-compact.onnx", example_inputs=x,
                           compact=True))
