"""Learned step sizes (LSQ): trainable scales, LSQ gradients, export with the learned scales."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import slimkit as sk
from slimkit.examples import train
from slimkit.techniques.quantization.lsq import (
    LearnedActivationQuantizer,
    LearnedWeightFakeQuant,
    lsq_fake_quant,
)


def test_lsq_gradient_of_the_step_size():
    # d(q*s)/ds = round(v) - v inside the grid, the bound outside (v = x / s), times g.
    x = torch.tensor([0.26, -0.74, 5.0, -5.0])
    s = torch.tensor(0.5, requires_grad=True)
    y = lsq_fake_quant(x, s.expand_as(x), -4, 3, 1.0)
    y.sum().backward()
    v = x / 0.5
    expected = (v.round() - v)[:2].sum() + 3 + (-4)
    assert float(s.grad) == pytest.approx(float(expected), abs=1e-6)
    torch.testing.assert_close(y, torch.tensor([0.5, -0.5, 1.5, -2.0]))


def test_learned_ranges_with_a_frozen_quantizer_is_refused():
    with pytest.raises(ValueError, match=r"learn_ranges.*frozen quantizer"):
        sk.QATConfig(learn_ranges=True, freeze_observers_step=10)


def test_learned_scales_train_and_export_exactly(cnn, digits, tmp_path):
    sk.quantize(cnn, sk.QATConfig(weight_bits=4, learn_ranges=True),
                calibration=digits.calibration, progress=False)
    wq = [m for m in cnn.modules() if isinstance(m, LearnedWeightFakeQuant)]
    aq = [m for m in cnn.modules() if isinstance(m, LearnedActivationQuantizer)]
    assert len(wq) == 4 and len(aq) >= 5
    start = [p.step_size.detach().clone() for p in wq]
    names = {n for n, _ in cnn.named_parameters()}
    assert any(n.endswith("step_size") for n in names)  # the user's optimizer sees them
    train(cnn, digits, epochs=1, lr=1e-3, seed=0, scheduler=sk.Scheduler(cnn))
    assert all(not torch.equal(a, p.step_size.detach()) for a, p in zip(start, wq))

    path = sk.export_onnx(cnn, tmp_path / "lsq.onnx", example_inputs=digits.x_test[:8])
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}
    w1 = inits["conv1.weight_quantized"]
    assert w1.dtype == np.int8 and np.abs(w1).max() <= 7  # 4-bit values in an int8 container
    np.testing.assert_array_equal(inits["conv1.weight_scale"],
                                  wq[0].step_size.detach().abs().numpy())
    # The learned activation scales are the exported ones.
    scales = {float(v) for k, v in inits.items() if v.size == 1 and v.dtype == np.float32}
    assert any(abs(s - aq[0].qparams()[0]) < 1e-9 for s in scales)


def test_four_bit_learned_ranges_converge_in_onnx_runtime(cnn, digits, tmp_path):
    from tests.quantization.conftest import ort_accuracy

    fp32 = sk.export_onnx(copy.deepcopy(cnn), tmp_path / "fp32.onnx",
                          example_inputs=digits.x_test[:8])
    sk.quantize(cnn, sk.QATConfig(weight_bits=4, learn_ranges=True),
                calibration=digits.calibration, progress=False)
    train(cnn, digits, epochs=2, lr=1e-4, seed=0, scheduler=sk.Scheduler(cnn))
    path = sk.export_onnx(cnn, tmp_path / "w4a8.onnx", example_inputs=digits.x_test[:8])
    acc, base = ort_accuracy(path, digits), ort_accuracy(fp32, digits)
    assert base >= 0.96
    assert acc >= base - 0.01, (base, acc)  # 2 epochs of W4A8 LSQ QAT: within 1 point
