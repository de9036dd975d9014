"""The conformance entry of SmoothQuant W8A8.

Post-training. On the digits CNN only the Linear layers are W8A8 (fc1 holds 87% of the
weights; convolutions stay float, with a warning), and their inputs come from functional
ops (flatten, relu) with no module to absorb smoothing scales, so they quantize unsmoothed:
the entry checks the protocol (prepare, calibrate, strip, save / load, export to
MatMulInteger, validation against torch); the smoothing itself is tested on Llama models in
tests/smoothquant. The factor is what it claims, set below what it measures.
"""

from __future__ import annotations

from slimkit.testing.entry import ConformanceEntry

# One int8 output step: quantized arithmetic turns a last-bit float difference between
# eager and torch.export into a whole step.
_INT8_EXPORT_ATOL = 5e-3


def _config():
    from slimkit.techniques.quantization.smoothquant_config import SmoothQuantConfig

    return SmoothQuantConfig(alpha=0.5, calibration_tokens=16)


ENTRIES = [
    ConformanceEntry(
        "smoothquant", config=_config,
        invalid={"alpha": 1.5, "observer": "mse", "percentile": 20.0, "alpha_grid": ()},
        needs_calibration=True, metric="raw_bytes", factor=2.0,
        accuracy_budget=0.01, finetune_steps=0, export_atol=_INT8_EXPORT_ATOL,
    ),
]
