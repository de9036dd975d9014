"""Weight-only LLM quantization: block-wise int2/3/4/8 codes with RTN, HQQ, GPTQ or AWQ.

``sk.quantize(model, WeightOnlyConfig(...), calibration=batches)`` puts a
:class:`WeightOnlyQuant` parametrization (stage "quant") on every selected ``nn.Linear``
(optionally the embedding and LM head): uint8 codes, float scales and zero points per group of
input columns, the layout of ONNX Runtime's ``MatMulNBits``. RTN and HQQ need no data; GPTQ
and AWQ calibrate one decoder block at a time (:mod:`slimkit.core.sequential`).
:func:`weight_only_layers` is what exporters read.

Example:
    >>> cfg = WeightOnlyConfig(bits=4, group_size=64, symmetric=True, algorithm="gptq")
    >>> sk.quantize(model, cfg, calibration=batches)
    >>> len(weight_only_layers(model))            # one row per quantized weight
"""

from slimkit.authoring import register
from slimkit.techniques.weight_only.awq import awq_clip, awq_search
from slimkit.techniques.weight_only.config import WeightOnlyConfig
from slimkit.techniques.weight_only.gptq import gptq_quantize, layer_error
from slimkit.techniques.weight_only.grid import dequantize, minmax_params, quantize_codes
from slimkit.techniques.weight_only.hqq import hqq_optimize
from slimkit.techniques.weight_only.parametrization import WeightOnlyQuant
from slimkit.techniques.weight_only.rtn import rtn
from slimkit.techniques.weight_only.technique import (
    WeightOnlyTechnique,
    count_tokens,
    weight_only_layers,
)

TECHNIQUE = register(WeightOnlyTechnique())

__all__ = [
    "TECHNIQUE",
    "WeightOnlyConfig",
    "WeightOnlyQuant",
    "WeightOnlyTechnique",
    "awq_clip",
    "awq_search",
    "count_tokens",
    "dequantize",
    "gptq_quantize",
    "hqq_optimize",
    "layer_error",
    "minmax_params",
    "quantize_codes",
    "rtn",
    "weight_only_layers",
]
