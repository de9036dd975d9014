"""Quantization: static / dynamic / weight-only post-training quantization and QAT."""

from slimkit.techniques.quantization.activation import ActivationQuantizer, DynamicQuantizer
from slimkit.techniques.quantization.api import quantize
from slimkit.techniques.quantization.calibrate import calibrate
from slimkit.techniques.quantization.config import AdaRoundConfig, QATConfig, QuantizationConfig
from slimkit.techniques.quantization.fake_quant import WeightFakeQuant
from slimkit.techniques.quantization.lsq import LearnedActivationQuantizer, LearnedWeightFakeQuant

__all__ = [
    "ActivationQuantizer",
    "AdaRoundConfig",
    "DynamicQuantizer",
    "LearnedActivationQuantizer",
    "LearnedWeightFakeQuant",
    "QATConfig",
    "QuantizationConfig",
    "WeightFakeQuant",
    "calibrate",
    "quantize",
]
