"""Static int8 where the activations are tiny against the bias (issue 14: the random-init
MobileNetV2-style CNN, classifier inputs ~1e-6, bias 0.05): an int8 kernel stores the bias as
int32 codes of step ``input scale * weight scale``, and ORT's fused QGemm / QLinearConv
output was wrong (123% RMS) once those codes passed the int32 range. Calibration widens such
an input range so the codes fit; ranges of ordinary layers stay as observed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

import slimkit as sk
from slimkit.export import ort_session
from slimkit.techniques.quantization.calibrate import BIAS_CODE_LIMIT, fit_int32_biases


def _mlp(bias_scale: float) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    with torch.no_grad():
        model[0].bias.zero_()            # keeps the activations as tiny as the input
        model[2].bias.mul_(bias_scale)   # |bias| ~0.2 against inputs ~1e-6
    return model


def _bias_codes(model) -> float:
    """The largest |bias| / (input scale * weight scale) of the last layer."""
    layer = model[2]
    q = layer._modules.get("sk_input_quant")
    if q is None:
        q = model[0]._modules["sk_output_quant"]   # input shared with the producer's output
    sw = layer.parametrizations.weight.original.detach().abs().amax(1) / 127
    return float((layer.bias.detach().abs() / (q.qparams()[0] * sw)).max())


def test_tiny_activations_export_and_match_fp32(tmp_path):
    model = _mlp(1.0)
    g = torch.Generator().manual_seed(1)
    cal, x = torch.rand(64, 16, generator=g) * 1e-6, torch.rand(8, 16, generator=g) * 1e-6
    with torch.no_grad():
        ref = model(x).numpy()
    sk.quantize(model, sk.QuantizationConfig(), calibration=cal, progress=False)
    # Before the fix: 5.5e10 codes (25x the int32 range), and export refused the file
    # (ORT's output differed from the simulation by ~100% RMS).
    assert _bias_codes(model) <= BIAS_CODE_LIMIT * 1.001
    path = sk.export_onnx(model, tmp_path / "int8.onnx", example_inputs=x)
    sess = ort_session(path)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    rel = np.sqrt(np.mean((got - ref) ** 2)) / np.sqrt(np.mean(ref ** 2))
    assert rel < 0.01   # the output is the bias; the activations' share is ~1e-6 of it


def test_ordinary_ranges_are_left_as_observed():
    model = _mlp(1.0)
    cal = torch.rand(64, 16, generator=torch.Generator().manual_seed(1))
    sk.quantize(model, sk.QuantizationConfig(), calibration=cal, progress=False)
    with torch.no_grad():
        hi = float(model[0](cal).clamp(min=0).max())   # what the minmax observer saw
    q = model[2]._modules.get("sk_input_quant") or model[0]._modules["sk_output_quant"]
    assert float(q.hi) == np.float32(hi)
    assert _bias_codes(model) < 1e6   # far inside int32: nothing to widen
    assert fit_int32_biases(model) == []
