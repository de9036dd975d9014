"""The conformance entries of channel pruning.

The digits fine-tune of an entry is short (the kit's runtime in CI is the budget): 45 steps
are one epoch of the 1437 training images at batch 32. Factors are what the technique
claims, set below what it measures so that a regression, not noise, fails them.
"""

from __future__ import annotations

import slimkit as sk
from slimkit.testing.entry import ConformanceEntry

EPOCH = 45  # digits steps per epoch at batch 32


def _prune_channels(model, config, data):
    return sk.prune_channels(model, config, example_inputs=data.example)


ENTRIES = [
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
]
