"""Convergence: the user story works end to end on real data, judged on the ORT artifact."""

import onnx
import pytest
from onnx import numpy_helper

import slimkit as sk
from slimkit.examples import accuracy_eval, steps_per_epoch, train


def test_digits_pruned_to_80_percent_keeps_accuracy_in_onnx_runtime(baseline, digits, tmp_path):
    x = digits.x_test[:64]
    eval_fn = accuracy_eval(digits)
    base_path = sk.export_onnx(baseline, tmp_path / "baseline.onnx", example_inputs=x)
    base = sk.report(base_path, x, eval_fn=eval_fn, latency_runs=0, memory=False)

    spe = steps_per_epoch(digits)
    sk.prune(baseline, sk.MagnitudePruningConfig(
        sk.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=7 * spe, frequency=spe)))
    train(baseline, digits, epochs=10, lr=1e-4, seed=0, scheduler=sk.Scheduler(baseline))
    pruned_path = sk.export_onnx(baseline, tmp_path / "pruned.onnx", example_inputs=x)
    pruned = sk.report(pruned_path, x, eval_fn=eval_fn, latency_runs=0, memory=False)

    acc_base, acc_pruned = base.metrics["accuracy"], pruned.metrics["accuracy"]
    assert acc_base >= 0.96  # the baseline itself trained properly
    assert acc_pruned >= acc_base - 0.015  # the acceptance bound: within 1.5 points
    assert base.compare(pruned)["zipped_bytes"] >= 3.5  # measured 3.95x (seed 0)

    kernels = [numpy_helper.to_array(t) for t in onnx.load(pruned_path).graph.initializer
               if len(t.dims) >= 2]
    assert len(kernels) == 4
    for w in kernels:  # read from the artifact: each kernel is 80% zeros
        assert (w == 0).mean() == pytest.approx(0.8, abs=1 / w.size + 1e-9)
