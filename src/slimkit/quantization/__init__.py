"""Quantization: static / dynamic / weight-only post-training quantization and QAT."""

from slimkit.quantization.activation import ActivationQuantizer, DynamicQuantizer
from slimkit.quantization.api import quantize
from slimkit.quantization.calibrate import calibrate
from slimkit.quantization.config import QATConfig, QuantizationConfig
from slimkit.quantization.fake_quant import WeightFakeQuant

__all__ = [
    "ActivationQuantizer",
    "DynamicQuantizer",
    "QATConfig",
    "QuantizationConfig",
    "WeightFakeQuant",
    "calibrate",
    "quantize",
]
