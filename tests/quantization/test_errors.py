"""Bad input gets an error that names the problem and what would be accepted."""

import pytest
import torch
import torch.nn as nn

from slimkit.examples import DigitsCNN
from slimkit.techniques.quantization import QuantizationConfig, quantize


def test_calibration_with_the_wrong_shape_names_the_shape():
    with pytest.raises(ValueError, match=r"calibration batch 0 \(shape \(4, 3\)\) does not fit "
                                         r"DigitsCNN"):
        quantize(DigitsCNN(), QuantizationConfig(), calibration=torch.randn(4, 3), progress=False)


def test_empty_calibration_loader_is_refused():
    empty = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.empty(0, 1, 8, 8)))
    with pytest.raises(ValueError, match="calibration is empty: pass at least one batch"):
        quantize(DigitsCNN(), QuantizationConfig(), calibration=empty, progress=False)


def test_calibration_of_a_wrong_type_is_refused():
    with pytest.raises(TypeError, match="calibration must be a tensor of inputs or an iterable"):
        quantize(DigitsCNN(), QuantizationConfig(), calibration=3.0, progress=False)


def test_static_without_calibration_and_calibration_without_static():
    with pytest.raises(ValueError, match="static quantization needs calibration data"):
        quantize(DigitsCNN(), QuantizationConfig())
    with pytest.raises(ValueError, match=r"calibration is only used with mode='static', got "
                                         r"mode='dynamic' \(QuantizationConfig.mode\)"):
        quantize(DigitsCNN(), QuantizationConfig(mode="dynamic"), calibration=torch.randn(2, 1, 8, 8))


def test_group_size_that_does_not_divide_names_the_layer():
    model = nn.Sequential(nn.Linear(48, 4))
    with pytest.raises(ValueError, match=r"0.weight has 48 inputs, not a multiple of group_size=32"):
        quantize(model, QuantizationConfig(mode="weight_only", weight_bits=4, group_size=32))


def test_not_a_quantization_config():
    import slimkit as sk

    with pytest.raises(TypeError, match="sk.quantize takes a QuantizationConfig or QATConfig"):
        quantize(DigitsCNN(), sk.MagnitudePruningConfig(0.5))


def test_targets_that_select_no_quantizable_layer():
    with pytest.raises(ValueError, match="found no quantizable layer"):
        quantize(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)),
                 QuantizationConfig(mode="dynamic"), targets=["LayerNorm"])
