"""Quantization-aware training: accuracy on the artifact, freezing, checkpoints, stacking."""

import copy

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

import slimkit as sk
from slimkit.examples import DigitsCNN, steps_per_epoch, train, train_with
from slimkit.techniques.quantization import QATConfig, quantize
from tests.quantization.conftest import optimized_ops, ort_accuracy


def test_qat_int8_within_0_3_points_of_fp32_on_the_artifact(baseline, digits, fp32_artifact,
                                                             tmp_path):
    steps = steps_per_epoch(digits)
    quantize(baseline, QATConfig(freeze_observers_step=3 * steps), calibration=digits.calibration,
             progress=False)
    scheduler = sk.Scheduler(baseline)
    train(baseline, digits, epochs=5, lr=1e-4, seed=0, scheduler=scheduler)
    assert scheduler.step_count == 5 * steps
    assert all(bool(q.frozen) for q in baseline.fc1.modules() if hasattr(q, "frozen"))
    path = sk.export_onnx(baseline, tmp_path / "qat.onnx", example_inputs=digits.x_test[:8])
    assert ort_accuracy(path, digits) >= fp32_artifact[1] - 0.003  # goal: within 0.3 points
    assert {"QLinearConv", "QGemm"} <= optimized_ops(path, tmp_path)


def test_observers_move_until_the_freeze_step_then_stop(baseline, digits):
    quantize(baseline, QATConfig(freeze_observers_step=10))
    scheduler = sk.Scheduler(baseline)
    opt = torch.optim.SGD(baseline.parameters(), lr=0.0)  # weights fixed: only ranges move
    q = baseline.conv2.sk_output_quant
    baseline.train()
    his = []
    for i in range(14):
        baseline(digits.x_train[i * 32:(i + 1) * 32]).sum().backward()
        opt.step()
        scheduler.step()
        his.append(float(q.hi))
    assert bool(q.frozen) and scheduler.step_count == 14
    assert len(set(his[:10])) > 1  # moving while observing (different batches)
    assert his[10:] == [his[9]] * 4  # frozen after step 10: exactly constant


def test_straight_through_gradient_reaches_the_float_weights(seeded):
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    quantize(model, QATConfig())
    model(torch.randn(4, 8)).sum().backward()
    g = model[0].parametrizations.weight.original.grad
    assert g is not None and float(g.abs().sum()) > 0


def test_state_dict_round_trip_and_exact_resume_mid_qat(trained_digits, digits, tmp_path):
    cfg = QATConfig(freeze_observers_step=2 * steps_per_epoch(digits))

    def fresh():
        m = copy.deepcopy(trained_digits)
        quantize(m, cfg, calibration=digits.calibration, progress=False)
        return m

    # Uninterrupted: 3 epochs.
    full = fresh()
    opt = torch.optim.Adam(full.parameters(), lr=1e-4)
    train_with(full, digits, opt, epochs=3, scheduler=sk.Scheduler(full))

    # Interrupted after 1 epoch, saved, loaded into a fresh DigitsCNN, resumed.
    part = fresh()
    opt = torch.optim.Adam(part.parameters(), lr=1e-4)
    train_with(part, digits, opt, epochs=1, scheduler=sk.Scheduler(part))
    sk.save(part, tmp_path / "qat.pt", extra={"opt": opt.state_dict()})
    resumed = sk.load(tmp_path / "qat.pt", model=DigitsCNN())
    for k, v in part.state_dict().items():  # the round trip is exact, buffers included
        assert torch.equal(v, resumed.state_dict()[k]), k
    opt = torch.optim.Adam(resumed.parameters(), lr=1e-4)
    opt.load_state_dict(resumed._slimkit_extra["opt"])
    train_with(resumed, digits, opt, epochs=3, start_epoch=1, scheduler=sk.Scheduler(resumed))

    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k  # bit-exact resume
    x = digits.x_test[:64]
    assert torch.equal(full.eval()(x), resumed.eval()(x))


def test_prune_then_qat_keeps_zeros_exactly_zero_in_int8(baseline, digits, tmp_path):
    sk.prune(baseline, sk.MagnitudePruningConfig(0.8))
    quantize(baseline, QATConfig(), calibration=digits.calibration, progress=False)
    stages = [type(p).__name__ for p in baseline.fc1.parametrizations.weight]
    assert stages == ["PruningMask", "WeightFakeQuant"]  # mask first, then fake-quant
    train(baseline, digits, epochs=1, lr=1e-4, seed=0, scheduler=sk.Scheduler(baseline))
    masks = {n: getattr(baseline, n).parametrizations.weight[0].mask.numpy()
             for n in ["conv1", "conv2", "fc1", "fc2"]}
    path = sk.export_onnx(baseline, tmp_path / "pqat.onnx", example_inputs=digits.x_test[:8])
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    for name, mask in masks.items():
        q = inits[f"{name}.weight_quantized"]
        assert q.dtype == np.int8
        assert np.all(q[mask == 0] == 0)  # every pruned weight is integer 0
        assert (q == 0).mean() >= (mask == 0).mean()  # the sparsity survives (round(0.8 * n))


def test_qat_config_on_a_model_without_quantizable_layers_is_refused():
    model = nn.Sequential(nn.LayerNorm(8), nn.ReLU())
    with pytest.raises(ValueError, match=r"QATConfig\(mode='static'\) found no quantizable layer "
                                         r"in Sequential: it quantizes Linear, Conv1d, Conv2d"):
        quantize(model, QATConfig())


def test_cluster_stage_then_quant_maps_each_shared_value_to_one_integer(seeded, tmp_path):
    from slimkit.core.parametrize import SlimParametrization, register

    class Snap(SlimParametrization):  # a stand-in cluster stage: 8 shared values per tensor
        stage = "cluster"

        def __init__(self, w):
            super().__init__()
            self.register_buffer("centroids", torch.linspace(float(w.detach().min()), float(w.detach().max()), 8))

        def forward(self, w):
            idx = (w.unsqueeze(-1) - self.centroids).abs().argmin(-1)
            return self.centroids[idx]

    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    quantize(model, QATConfig(), calibration=torch.randn(64, 16), progress=False)
    for i in (0, 2):  # registered after quantization: still placed before the quant stage
        register(model, [(str(i), "weight")], Snap(model[i].weight))
        assert [type(p).__name__ for p in model[i].parametrizations.weight] == [
            "Snap", "WeightFakeQuant"]
    path = sk.export_onnx(model, tmp_path / "cq.onnx", example_inputs=torch.randn(4, 16))
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    for i in (0, 2):
        q = inits[f"{i}.weight_quantized"]
        snapped = model[i].parametrizations.weight[0](model[i].parametrizations.weight.original)
        for row_q, row_w in zip(q, snapped.detach().numpy()):
            # each shared value of a channel maps to exactly one integer
            pairs = set(zip(row_w.tolist(), row_q.tolist()))
            assert len(pairs) == len(set(row_w.tolist())) <= 8
