"""AdaRound: learned rounding on calibration data, baked so the ORT artifact holds it."""

from __future__ import annotations

import copy
import time

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import slimkit as sk
from slimkit.techniques.quantization import AdaRoundConfig
from slimkit.techniques.quantization.fake_quant import quantized_weights
from tests.quantization.conftest import ort_accuracy


def test_adaround_without_calibration_data_is_a_clear_error(cnn, digits, tmp_path):
    with pytest.raises(ValueError, match="adaround.*needs calibration data"):
        sk.quantize(cnn, AdaRoundConfig(weight_bits=4))
    sk.apply(cnn, AdaRoundConfig(mode="weight_only", weight_bits=4))
    with pytest.raises(ValueError, match="AdaRound never ran on conv1"):
        sk.export_onnx(cnn, tmp_path / "x.onnx", example_inputs=digits.x_test[:8])


@pytest.mark.parametrize("changes, field", [({"group_size": 32}, "group_size"),
                                             ({"mode": "dynamic"}, "mode"),
                                             ({"weight_bits": 2}, "weight_bits"),
                                             ({"rounding": "stochastic"}, "rounding")])
def test_invalid_adaround_configs_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        AdaRoundConfig(**changes)


def test_w4a8_adaround_beats_nearest_and_the_artifact_holds_its_integers(cnn, digits,
                                                                          tmp_path):
    calib = digits.x_train[:128]
    nearest = copy.deepcopy(cnn)
    sk.quantize(nearest, AdaRoundConfig(weight_bits=4, rounding="nearest"), calibration=calib,
                progress=False)
    t0 = time.perf_counter()
    sk.quantize(cnn, AdaRoundConfig(weight_bits=4, iterations=150), calibration=calib,
                progress=False)
    assert time.perf_counter() - t0 < 60  # the bound for the whole digits CNN

    learned = {k: q for k, _m, _p, q, _s, _b in quantized_weights(cnn)}
    rtn = {k: q for k, _m, _p, q, _s, _b in quantized_weights(nearest)}
    assert set(learned) == {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"}
    assert any(not torch.equal(learned[k], rtn[k]) for k in learned)

    path = sk.export_onnx(cnn, tmp_path / "w4a8.onnx", example_inputs=digits.x_test[:8])
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}
    for key, q in learned.items():
        stored = inits[f"{key}_quantized"]
        assert stored.dtype == np.int8 and np.abs(stored).max() <= 7
        expected = q.numpy().astype(np.int8)
        if stored.shape != expected.shape:  # a Linear's MatMul stores [in, out]
            expected = expected.T
        np.testing.assert_array_equal(stored, expected)

    rtn_path = sk.export_onnx(nearest, tmp_path / "rtn.onnx", example_inputs=digits.x_test[:8])
    acc, acc_rtn = ort_accuracy(path, digits), ort_accuracy(rtn_path, digits)
    assert acc >= acc_rtn - 0.003, (acc_rtn, acc)  # never worse than RTN by more than 1 image


def test_w3a8_adaround_converges_in_onnx_runtime(cnn, digits, tmp_path):
    fp32 = sk.export_onnx(copy.deepcopy(cnn), tmp_path / "fp32.onnx",
                          example_inputs=digits.x_test[:8])
    sk.quantize(cnn, AdaRoundConfig(weight_bits=3, iterations=150),
                calibration=digits.x_train[:128], progress=False)
    path = sk.export_onnx(cnn, tmp_path / "w3a8.onnx", example_inputs=digits.x_test[:8])
    base, acc = ort_accuracy(fp32, digits), ort_accuracy(path, digits)
    assert base >= 0.96
    assert acc >= base - 0.02, (base, acc)  # 3-bit weights, 150 steps per layer
