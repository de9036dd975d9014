"""The conformance entries of post-training quantization and QAT.

The digits fine-tune of an entry is short (the kit's runtime in CI is the budget): 45 steps
are one epoch of the 1437 training images at batch 32. Factors are what the technique
claims, set below what it measures so that a regression, not noise, fails them.
"""

from __future__ import annotations

import slimkit as sk
from slimkit.testing.entry import ConformanceEntry

EPOCH = 45  # digits steps per epoch at batch 32

# One int8 output step: quantized arithmetic turns a last-bit float difference between
# eager and torch.export (a dynamic scale computed in another order) into a whole step.
_INT8_EXPORT_ATOL = 5e-3


ENTRIES = [
    ConformanceEntry(
        "quantization",
        config=lambda: sk.QuantizationConfig(),
        invalid={"mode": "float16", "weight_bits": 3, "percentile": 20.0},
        needs_calibration=True,
        metric="raw_bytes", factor=3.5,
        accuracy_budget=0.01,
        finetune_steps=0,
        export_atol=_INT8_EXPORT_ATOL,
    ),
    ConformanceEntry(
        "quantization",
        id="quantization-dynamic",
        config=lambda: sk.QuantizationConfig(mode="dynamic"),
        invalid={"mode": "float16", "weight_bits": 4},
        models=("cnn", "subclassed", "lstm", "transformer", "minilm"),
        # Dynamic mode quantizes the Linear layers (fc1 holds 90% of the CNN's weights).
        metric="raw_bytes", factor=2.5,
        accuracy_budget=0.01,
        finetune_steps=0,
        export_atol=_INT8_EXPORT_ATOL,
    ),
    ConformanceEntry(
        "qat",
        config=lambda: sk.QATConfig(freeze_observers_step=EPOCH // 2),
        invalid={"freeze_observers_step": -1, "activation_dtype": "int4"},
        needs_calibration=True,
        metric="raw_bytes", factor=3.5,
        accuracy_budget=0.01,
        finetune_steps=EPOCH,
        export_atol=_INT8_EXPORT_ATOL,
    ),
]
