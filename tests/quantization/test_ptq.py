"""Post-training quantization of the digits CNN, judged on the ONNX Runtime artifact."""

import copy
import os
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

import slimkit as sk
from slimkit.examples import evaluate
from slimkit.techniques.quantization import QuantizationConfig, calibrate, quantize
from slimkit.techniques.quantization.graph import fold_batchnorm
from tests.quantization.conftest import optimized_ops, ort_accuracy, ort_logits


@pytest.fixture(scope="module")
def ptq(trained_digits, digits, tmp_path_factory):
    model = copy.deepcopy(trained_digits)
    quantize(model, QuantizationConfig(), calibration=digits.calibration, progress=False)
    path = tmp_path_factory.mktemp("ptq") / "int8.onnx"
    sk.export_onnx(model, path, example_inputs=digits.x_test[:8])
    return model, path


def test_static_int8_keeps_accuracy_on_the_ort_artifact(ptq, digits, fp32_artifact):
    _, path = ptq
    fp32_acc = fp32_artifact[1]
    assert fp32_acc > 0.95
    # Goal: within 0.5 points of the fp32 artifact.
    assert ort_accuracy(path, digits) >= fp32_acc - 0.005


def test_int8_file_is_at_least_3_5x_smaller(ptq, fp32_artifact):
    ratio = os.path.getsize(fp32_artifact[0]) / os.path.getsize(ptq[1])
    assert ratio >= 3.5  # int8 weights are 4x smaller; scales, biases and graph cost the rest


def test_weights_are_int8_initializers(ptq):
    inits = {i.name: i for i in onnx.load(str(ptq[1])).graph.initializer}
    for name in ["conv1", "conv2", "fc1", "fc2"]:
        q = inits[f"{name}.weight_quantized"]
        assert q.data_type == onnx.TensorProto.INT8
        assert np.abs(numpy_helper.to_array(q)).max() <= 127  # narrow range
        assert f"{name}.weight" not in inits  # no float copy left behind


def test_ort_runs_int8_kernels(ptq, tmp_path):
    ops = optimized_ops(ptq[1], tmp_path)
    assert {"QLinearConv", "QGemm"} <= ops, ops
    assert not {"Conv", "Gemm", "FusedConv", "FusedGemm"} & ops  # nothing left in float


def test_torch_fake_quant_and_ort_agree(ptq, digits):
    model, path = ptq
    got = ort_logits(path, digits.x_test)
    with torch.no_grad():
        ref = model.eval()(digits.x_test).numpy()
    step = model.fc2.sk_output_quant.qparams()[0]
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.99  # top-1 agreement
    assert np.abs(got - ref).max() <= 2 * step + 1e-6  # within 2 output quantization steps


@pytest.mark.parametrize("observer", ["minmax", "moving_average", "percentile", "mse"])
def test_every_observer_calibrates_a_working_model(baseline, digits, observer):
    fp32 = evaluate(baseline, digits.x_test, digits.y_test)
    quantize(baseline, QuantizationConfig(observer=observer), calibration=digits.calibration,
             progress=False)
    q = baseline.conv2.sk_output_quant
    assert bool(q.calibrated) and float(q.hi) > 0 and float(q.lo) == 0.0  # ReLU'd output
    # Torch simulation within 1 point of fp32 for every observer on 100 calibration images.
    assert evaluate(baseline, digits.x_test, digits.y_test) >= fp32 - 0.01


def test_relu_is_fused_and_inputs_share_the_producers_grid(baseline, digits):
    quantize(baseline, QuantizationConfig(), calibration=digits.calibration, progress=False)
    assert baseline.conv1.sk_output_quant.relu_first and baseline.fc1.sk_output_quant.relu_first
    assert not baseline.fc2.sk_output_quant.relu_first  # logits: no ReLU after fc2
    # conv2 and fc1 read a quantized output (through ReLU / MaxPool / flatten): no 2nd rounding
    assert "sk_input_quant" not in baseline.conv2._modules and baseline.conv2._sk_input_from == "conv1"
    assert baseline.fc1._sk_input_from == "conv2"


def test_weight_only_int4_within_2_points_and_8x_smaller_weights(baseline, digits, fp32_artifact,
                                                                    tmp_path):
    quantize(baseline, QuantizationConfig(mode="weight_only", weight_bits=4, group_size=32))
    path = sk.export_onnx(baseline, tmp_path / "w4.onnx", example_inputs=digits.x_test[:8])
    assert ort_accuracy(path, digits) >= fp32_artifact[1] - 0.02
    proto = onnx.load(str(path))
    fc1 = next(i for i in proto.graph.initializer if i.name == "fc1.weight_quantized")
    assert fc1.data_type == onnx.TensorProto.INT4 and len(fc1.raw_data) == 128 * 1024 // 2
    # Measured 6.1x; scales per 32 weights and the int4 convs' per-channel scales cost the rest.
    assert os.path.getsize(fp32_artifact[0]) / os.path.getsize(path) >= 5.0


def test_per_layer_override_and_ignore(baseline, digits, tmp_path):
    cfg = QuantizationConfig(mode="weight_only", weight_bits=4, group_size=32,
                             overrides={"conv*": {"weight_bits": 8}})
    quantize(baseline, cfg, ignore=["fc2"])
    assert not hasattr(baseline.fc2, "parametrizations")
    assert baseline.conv1.parametrizations.weight[0].bits == 8
    assert baseline.fc1.parametrizations.weight[0].bits == 4
    path = sk.export_onnx(baseline, tmp_path / "mixed.onnx", example_inputs=digits.x_test[:8])
    types = {i.name: i.data_type for i in onnx.load(str(path)).graph.initializer}
    assert types["conv1.weight_quantized"] == onnx.TensorProto.INT8
    assert types["fc1.weight_quantized"] == onnx.TensorProto.INT4
    assert types["fc2.weight"] == onnx.TensorProto.FLOAT


def test_dynamic_int8_warns_once_about_convs_and_runs_matmulinteger(baseline, digits, tmp_path,
                                                                     fp32_artifact):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantize(baseline, QuantizationConfig(mode="dynamic"))
    msgs = [str(w.message) for w in caught if "slimkit" in str(w.message)]
    assert len(msgs) == 1 and "conv1 (Conv2d" in msgs[0] and "conv2 (Conv2d" in msgs[0]
    path = sk.export_onnx(baseline, tmp_path / "dyn.onnx", example_inputs=digits.x_test[:8])
    ops = optimized_ops(path, tmp_path)
    assert ops & {"DynamicQuantizeMatMul", "MatMulInteger", "MatMulIntegerToFloat"}, ops
    assert ort_accuracy(path, digits) >= fp32_artifact[1] - 0.005


def test_apply_then_calibrate_and_uncalibrated_export_is_refused(baseline, digits, tmp_path):
    sk.apply(baseline, QuantizationConfig())
    with pytest.raises(ValueError, match="never calibrated: run sk.quantize"):
        sk.export_onnx(baseline, tmp_path / "m.onnx", example_inputs=digits.x_test[:8])
    quantize(baseline, QuantizationConfig(), calibration=digits.calibration, progress=False)
    assert len(sk.records(baseline)) == 1  # calibrated, not prepared twice
    sk.export_onnx(baseline, tmp_path / "m.onnx", example_inputs=digits.x_test[:8])


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8 * 6 * 6, 4)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


def test_batchnorm_folds_exactly_and_quantized_convbn_exports_int8(seeded, tmp_path):
    model = ConvBN()
    with torch.no_grad():  # non-trivial statistics
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
        model.bn.weight.uniform_(0.5, 1.5)
    model.eval()
    x = torch.randn(16, 3, 6, 6)
    ref = model(x)
    folded = copy.deepcopy(model)
    fold_batchnorm(folded, "conv", "bn")
    assert isinstance(folded.bn, nn.Identity)
    torch.testing.assert_close(folded(x), ref, atol=1e-5, rtol=1e-5)
    quantize(model, QuantizationConfig(), calibration=x, progress=False)
    assert isinstance(model.bn, nn.Identity) and model.conv.sk_output_quant.relu_first
    path = sk.export_onnx(model, tmp_path / "convbn.onnx", example_inputs=x)
    assert "QLinearConv" in optimized_ops(path, tmp_path)


def test_unsupported_layers_stay_fp32_with_one_warning(seeded):
    from tests.conftest import LSTMNet

    model = LSTMNet()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantize(model, QuantizationConfig(), calibration=torch.randn(8, 5, 8), progress=False)
    msgs = [str(w.message) for w in caught if "slimkit" in str(w.message)]
    assert len(msgs) == 1 and "lstm (LSTM: recurrent weights" in msgs[0]
    assert hasattr(model.head, "parametrizations") and not hasattr(model.lstm, "parametrizations")
    assert model(torch.randn(2, 5, 8)).shape == (2, 4)


def test_subclassed_conv1d_model_exports_and_agrees(seeded, tmp_path):
    from tests.conftest import SubclassedNet

    model = SubclassedNet().eval()
    x = torch.randn(64, 4, 16)
    quantize(model, QuantizationConfig(), calibration=x, progress=False)
    path = sk.export_onnx(model, tmp_path / "sub.onnx", example_inputs=x[:8])
    got = ort_logits(path, x)
    with torch.no_grad():
        ref = model(x).numpy()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95  # random init: close logits
    assert "QLinearConv" in optimized_ops(path, tmp_path)


def test_calibrate_alone_and_idle_layers_warn(seeded):
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.a(x)  # b never runs

    model = Branchy()
    sk.apply(model, QuantizationConfig())
    with pytest.warns(UserWarning, match="never ran during calibration and keep float"):
        calibrate(model, torch.randn(10, 4), progress=False)


def test_resnet_residual_sums_run_as_qlinearadd(tmp_path):
    from slimkit.examples.resnet import BottleneckResNet, randomize_batchnorm

    torch.manual_seed(0)
    model = randomize_batchnorm(BottleneckResNet(blocks=(1, 1, 1))).eval()
    gen = torch.Generator().manual_seed(1)
    calib, x = torch.randn(16, 3, 64, 64, generator=gen), torch.randn(8, 3, 64, 64, generator=gen)
    quantize(model, QuantizationConfig(), calibration=calib, progress=False)
    assert "sk_output_quant" in model.layers[0]._modules  # the block's residual sum
    assert model.layers[1].conv1._sk_input_from == "layers.0"
    path = sk.export_onnx(model, tmp_path / "resnet.onnx", example_inputs=x)  # validated: 2 steps
    ops = optimized_ops(path, tmp_path)
    assert {"QLinearConv", "QLinearAdd", "QGemm"} <= ops, ops
    assert not {"Conv", "FusedConv", "Add"} & ops, ops  # no float conv or residual left
