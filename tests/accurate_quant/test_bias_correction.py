"""Bias correction: the mean output error of the quantized model shrinks (empirical and BN)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import slimkit as sk
from slimkit.techniques.quantization.bias_correction import expected_relu, float_mode

from .conftest import TinyMobile, data_bn

X = torch.rand(128, 1, 8, 8, generator=torch.Generator().manual_seed(3))


def _mean_bias(model, cfg, x, ref) -> float:
    m = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.quantize(m, cfg, calibration=x, progress=False)
    with torch.no_grad():
        return float((m(x) - ref).mean(0).abs().mean())


@pytest.fixture
def spread_model():
    torch.manual_seed(0)
    return data_bn(TinyMobile(act=nn.ReLU), X, spread=2.0)


def test_empirical_bias_correction_halves_the_mean_output_error(spread_model):
    x = X
    with torch.no_grad():
        ref = spread_model(x)
    plain = _mean_bias(spread_model, sk.QuantizationConfig(per_channel=False), x, ref)
    empirical = _mean_bias(spread_model, sk.QuantizationConfig(
        per_channel=False, bias_correction="empirical"), x, ref)
    assert empirical < 0.5 * plain, (plain, empirical)


def _float_input(model, name) -> torch.Tensor:
    got = {}
    m = dict(model.named_modules())[name]
    h = m.register_forward_pre_hook(lambda mod, args: got.__setitem__("x", args[0]))
    with float_mode(model), torch.no_grad():
        model(X)
    h.remove()
    return got["x"]


def _layer_mean(model, name, x, quantized: bool) -> torch.Tensor:
    """Mean per output channel of layer ``name`` on ``x`` (quantized or float weight)."""
    m = dict(model.named_modules())[name]
    w = m.weight if quantized else m.parametrizations.weight.original
    with torch.no_grad():
        return F.conv2d(x, w, m.bias).mean((0, 2, 3))


def test_bn_bias_correction_cancels_each_layers_own_mean_error(spread_model):
    # Data-free: BN statistics predict each 1x1 layer's input mean, so the corrected bias
    # removes the mean error of its quantized weight (zero padding makes 3x3 layers
    # approximate, so the test looks at the 1x1 ones).
    plain, bn = copy.deepcopy(spread_model), copy.deepcopy(spread_model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.quantize(plain, sk.QuantizationConfig(per_channel=False), calibration=X,
                    progress=False)
        sk.quantize(bn, sk.QuantizationConfig(per_channel=False, bias_correction="bn"),
                    calibration=X, progress=False)
    for name in ("expand", "project"):
        x = _float_input(plain, name)  # the float model's input to the layer
        exact = _layer_mean(plain, name, x, quantized=False)
        before = (_layer_mean(plain, name, x, quantized=True) - exact).abs().mean()
        after = (_layer_mean(bn, name, x, quantized=True) - exact).abs().mean()
        assert after < 0.2 * before, (name, float(before), float(after))  # measured < 0.1x


def test_bn_correction_warns_about_layers_without_statistics(spread_model):
    with pytest.warns(UserWarning, match=r"bias_correction='bn' left .*stem"):
        sk.quantize(spread_model, sk.QuantizationConfig(bias_correction="bn"),
                    calibration=torch.rand(8, 1, 8, 8), progress=False)


def test_expected_relu_matches_sampling():
    gen = torch.Generator().manual_seed(0)
    mu, sigma = torch.tensor([-1.0, 0.0, 2.0]), torch.tensor([0.5, 1.0, 3.0])
    y = mu + sigma * torch.randn(200_000, 3, generator=gen)
    torch.testing.assert_close(expected_relu(mu, sigma, None), y.relu().mean(0), atol=0.02,
                               rtol=0.0)  # 200k samples: standard error < 0.01
    torch.testing.assert_close(expected_relu(mu, sigma, 6.0), y.clamp(0, 6).mean(0), atol=0.02,
                               rtol=0.0)


def test_bias_correction_needs_static_mode():
    with pytest.raises(ValueError, match="bias_correction"):
        sk.QuantizationConfig(mode="dynamic", bias_correction="bn")
    with pytest.raises(ValueError, match="bias_correction"):
        sk.QuantizationConfig(bias_correction="mean")
