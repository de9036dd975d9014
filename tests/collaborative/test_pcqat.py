"""PCQAT on digits (pruning -> sparsity-preserving clustering -> QAT), checked on the int8
ONNX artifact: sparsity, clusters per channel, accuracy, size, packed round trip."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import slimkit as sk
from slimkit.metrics.sizes import zipped_size

from .helpers import KERNELS, int8_weights, ort_accuracy, ort_logits, unique_per_channel


def test_pcqat_artifact_keeps_the_pruned_zeros_exactly(stages, pcqat_onnx):
    for path in pcqat_onnx:
        weights = int8_weights(path)
        for layer in KERNELS:
            pruned = stages.masks[layer].numpy()
            # Zeros exactly where the pruning stage put them: none lost, none added.
            assert np.array_equal(weights[layer] == 0, pruned), (path.name, layer)
        total = sum(w.size for w in weights.values())
        zeros = sum(int((w == 0).sum()) for w in weights.values())
        assert zeros / total == pytest.approx(0.8, abs=0.001)


def test_pcqat_artifact_has_at_most_16_int8_values_per_channel(pcqat_onnx):
    for path in pcqat_onnx:
        for layer, w in int8_weights(path).items():
            assert unique_per_channel(w) <= 16, (path.name, layer)


def test_pcqat_accuracy_and_zipped_size(stages, pcqat_onnx, fp32_onnx, digits):
    plain, compact = pcqat_onnx
    acc = ort_accuracy(plain, digits)
    # Within 1.5 points of the fp32 baseline (the recipe is shortened, see conftest.py).
    assert acc >= stages.baseline_accuracy - 0.015
    assert ort_accuracy(compact, digits) == acc
    base_zip = zipped_size(fp32_onnx)
    # Measured 14.1x (plain int8) and 16.0x (4-bit indices) on the full recipe.
    assert base_zip / zipped_size(plain) >= 12.0
    assert base_zip / zipped_size(compact) >= 12.0
    assert zipped_size(compact) < zipped_size(plain)


def test_compact_int8_runs_the_same_int8_weights(pcqat_onnx, digits):
    plain, compact = pcqat_onnx
    a, b = int8_weights(plain), int8_weights(compact)
    for layer in KERNELS:
        assert np.array_equal(a[layer], b[layer]), layer
    assert np.array_equal(ort_logits(plain, digits.x_test), ort_logits(compact, digits.x_test))
    assert compact.stat().st_size < 0.65 * plain.stat().st_size  # 4-bit indices


def test_packed_round_trip_is_bit_exact(stages, pcqat_onnx, digits, tmp_path):
    from slimkit.examples import DigitsCNN

    path = sk.export_packed(stages.pcqat, tmp_path / "pcqat.skpack")
    loaded = sk.load_packed(path, model=DigitsCNN())
    want = sk.strip(copy.deepcopy(stages.pcqat)).state_dict()
    got = sk.strip(copy.deepcopy(loaded)).state_dict()
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    # From the loaded model to ONNX: the same int8 artifact, the same outputs.
    again = sk.export_onnx(loaded, tmp_path / "again.onnx", example_inputs=digits.x_test[:8])
    plain = pcqat_onnx[0]
    assert np.array_equal(ort_logits(again, digits.x_test), ort_logits(plain, digits.x_test))
    for layer, w in int8_weights(again).items():
        assert np.array_equal(w, int8_weights(plain)[layer]), layer


def test_packed_size_is_within_1_1x_of_the_entropy_bound(stages, pcqat_onnx, tmp_path):
    path = sk.export_packed(stages.pcqat, tmp_path / "pcqat.skpack")
    size = path.stat().st_size  # no zip
    # The bound of the int8 artifact: per kernel, n * H(int8 values) / 8. It is the smaller
    # (stricter) one: the torch model's per-channel floats q * scale have more distinct values.
    bound = sk.report(pcqat_onnx[0], latency_runs=0, memory=False).entropy_bound_bytes
    torch_bound = sk.report(stages.pcqat).entropy_bound_bytes
    assert bound <= torch_bound
    assert size / bound <= 1.1
    # The packed file also beats the zipped int8 artifact by a wide margin.
    assert size < 0.85 * zipped_size(pcqat_onnx[0])
