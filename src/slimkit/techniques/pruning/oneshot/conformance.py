"""The conformance entries of SparseGPT and Wanda.

Post-training (no fine-tune). The zoo's calibration sets are small (16-100 rows), so the
configs accept that few tokens; the digits CNN's Linear layers (fc1 holds 87% of its
weights) are what is pruned there: convolutions are left dense, with a warning. Factors are
what the technique claims, set below what it measures so that a regression, not noise,
fails them.
"""

from __future__ import annotations

from slimkit.testing.entry import ConformanceEntry


def _sparsegpt():
    from slimkit.techniques.pruning.oneshot.config import SparseGPTConfig

    return SparseGPTConfig(0.5, calibration_tokens=16)


def _wanda():
    from slimkit.techniques.pruning.oneshot.config import WandaConfig

    return WandaConfig(0.5, calibration_tokens=16)


def sparsegpt_entries() -> list:
    return [ConformanceEntry(
        "sparsegpt", config=_sparsegpt,
        invalid={"sparsity": 1.0, "pattern": "4:2", "damp": 0.0, "block": 0},
        needs_calibration=True, metric="zipped_bytes", factor=1.3,
        accuracy_budget=0.015, finetune_steps=0,
    )]


def wanda_entries() -> list:
    return [ConformanceEntry(
        "wanda", config=_wanda,
        invalid={"sparsity": -0.1, "pattern": "2:2", "calibration_tokens": 0},
        needs_calibration=True, metric="zipped_bytes", factor=1.3,
        accuracy_budget=0.015, finetune_steps=0,
    )]
