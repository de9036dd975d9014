"""The conformance entries of weight clustering.

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
        "weight-clustering",
        config=lambda: sk.ClusteringConfig(16),
        invalid={"clusters": 1, "init": "median", "refresh_every": -1},
        export_kwargs={"compact": True},
        metric="zipped_bytes", factor=5.0,
        finetune_steps=EPOCH,
    ),
]
