"""Quantization: static / dynamic / weight-only post-training quantization and QAT."""

from slimkit.techniques.quantization.activation import ActivationQuantizer, DynamicQuantizer
from slimkit.techniques.quantization.api import quantize
from slimkit.techniques.quantization.calibrate import calibrate
from slimkit.techniques.quantization.config import QATConfig, QuantizationConfig
from slimkit.techniques.quantization.fake_quant import WeightFakeQuant

__all__ = [
    "ActivationQuantizer",
    "DynamicQuantizer",
    "QATConfig",
    "QuantizationConfig",
    "WeightFakeQuant",
    "calibrate",
    "quantize",
]
