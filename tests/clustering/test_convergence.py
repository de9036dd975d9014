"""Convergence: the digits CNN clustered to 16 values per layer, judged on the ORT artifact."""

import onnx
import pytest
from onnx import numpy_helper

import slimkit as sk
from slimkit.examples import accuracy_eval, train
from slimkit.metrics import zipped_size
from slimkit.techniques.clustering import ClusteringConfig, cluster


def test_digits_clustered_to_16_values_keeps_accuracy_in_onnx_runtime(baseline, digits, tmp_path):
    x = digits.x_test[:64]
    eval_fn = accuracy_eval(digits)
    base_path = sk.export_onnx(baseline, tmp_path / "baseline.onnx", example_inputs=x)
    base = sk.report(base_path, x, eval_fn=eval_fn, latency_runs=0, memory=False)

    cluster(baseline, ClusteringConfig(16, init="kmeans++"))
    train(baseline, digits, epochs=5, lr=1e-4, seed=0)  # BENCHMARKS.md: Adam 1e-4, 5 epochs
    path = sk.export_onnx(baseline, tmp_path / "clustered.onnx", example_inputs=x)
    clustered = sk.report(path, x, eval_fn=eval_fn, latency_runs=0, memory=False)
    compact = sk.export_onnx(baseline, tmp_path / "compact.onnx", example_inputs=x, compact=True)
    small = sk.report(compact, x, eval_fn=eval_fn, latency_runs=0, memory=False)

    acc_base, acc = base.metrics["accuracy"], clustered.metrics["accuracy"]
    assert acc_base >= 0.96  # the baseline itself trained properly
    assert acc >= acc_base - 0.015  # the acceptance bound: within 1.5 points
    assert small.metrics["accuracy"] == acc  # the compact file computes the same
    assert base.compare(clustered)["zipped_bytes"] >= 4.0  # measured 4.9x (seed 0)
    assert zipped_size(base_path) / zipped_size(compact) >= 5.3  # measured 6.1x
    # Both files without the exporter's node debug metadata (dropped by default): 3.87x.
    assert base.raw_bytes / small.raw_bytes == pytest.approx(3.87, abs=0.05)

    kernels = [numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer
               if len(t.dims) >= 2]
    assert len(kernels) == 4
    assert all(len(set(w.ravel().tolist())) <= 16 for w in kernels)  # read from the artifact
