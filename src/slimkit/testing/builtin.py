"""The conformance entries of slimkit's built-in techniques.

The digits fine-tune of every entry is short (the kit's runtime in CI is the budget): 45
steps are one epoch of the 1437 training images at batch 32. Factors are what each
technique claims, set below what it measures so that a regression, not noise, fails them.

Example:
    >>> from slimkit.testing import run_conformance
    >>> run_conformance(BUILTIN_ENTRIES, checks=["config", "json"])
"""

from __future__ import annotations

import slimkit as sk
from slimkit.testing.entry import ConformanceEntry

EPOCH = 45  # digits steps per epoch at batch 32

# One int8 output step: quantized arithmetic turns a last-bit float difference between
# eager and torch.export (a dynamic scale computed in another order) into a whole step.
_INT8_EXPORT_ATOL = 5e-3


def _prune_channels(model, config, data):
    return sk.prune_channels(model, config, example_inputs=data.example)


BUILTIN_ENTRIES = [
    ConformanceEntry(
        "magnitude-pruning",
        config=lambda: sk.MagnitudePruningConfig(
            sk.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=EPOCH, frequency=15)),
        invalid={"scope": "diagonal", "block_reduce": "median", "block_size": (0, 4)},
        metric="zipped_bytes", factor=3.5,
        finetune_steps=2 * EPOCH,
    ),
    ConformanceEntry(
        "channel-pruning",
        config=lambda: sk.ChannelPruningConfig(0.5),
        invalid={"ratio": 1.0, "importance": "random", "rounds": 0},
        # Not claimed (measured): the zoo's two-layer LSTM (Torch-Pruning 1.6 prunes only
        # single-layer LSTMs and stops on a bare AssertionError) and the zoo transformer,
        # whose model width is its input width (prune_channels refuses it with a ValueError
        # naming the attention call). TransformerClassifier, with an embedding, is covered by
        # tests/pruning/test_channels.py.
        models=("cnn", "subclassed"),
        needs_example_inputs=True, prepare=_prune_channels,
        metric="latency", factor=1.5,
        finetune_steps=2 * EPOCH,
    ),
    ConformanceEntry(
        "weight-clustering",
        config=lambda: sk.ClusteringConfig(16),
        invalid={"clusters": 1, "init": "median", "refresh_every": -1},
        export_kwargs={"compact": True},
        metric="zipped_bytes", factor=5.0,
        finetune_steps=EPOCH,
    ),
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
"""One entry per built-in technique (quantization twice: static and dynamic mode)."""
