"""The conformance entries of magnitude pruning.

The digits fine-tune of an entry is short (the kit's runtime in CI is the budget): 45 steps
are one epoch of the 1437 training images at batch 32. Factors are what the technique
claims, set below what it measures so that a regression, not noise, fails them.
"""

from __future__ import annotations

import slimkit as sk
from slimkit.testing.entry import ConformanceEntry

EPOCH = 45  # digits steps per epoch at batch 32


ENTRIES = [
    ConformanceEntry(
        "magnitude-pruning",
        config=lambda: sk.MagnitudePruningConfig(
            sk.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=EPOCH, frequency=15)),
        invalid={"scope": "diagonal", "block_reduce": "median", "block_size": (0, 4)},
        metric="zipped_bytes", factor=3.5,
        finetune_steps=2 * EPOCH,
    ),
]
