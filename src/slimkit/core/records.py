"""What was applied to a model: technique, config and exact layers, kept on the model.

The records are plain data on the root module (``model._slimkit_records``), so they follow
``copy.deepcopy`` and are written by ``sk.save`` beside the weights; ``sk.load`` replays them
onto a fresh model before loading the state_dict.

Example:
    >>> sk.prune(model, sk.MagnitudePruningConfig(0.5))
    >>> records(model)[0]["technique"]
    'magnitude-pruning'
"""

from __future__ import annotations

import torch.nn as nn

from slimkit.core.config import Config


def records(model: nn.Module) -> list[dict]:
    """The techniques applied to ``model``, oldest first (a copy)."""
    return [dict(r) for r in getattr(model, "_slimkit_records", [])]


def add_record(model: nn.Module, technique: str, config: Config, layers, *,
               structural: bool = False) -> None:
    """Append a record; called once per technique application.

    ``structural`` marks a technique that changed the architecture: its record is kept by
    ``sk.strip`` (the stripped model still has the changed shapes).
    """
    recs = list(getattr(model, "_slimkit_records", []))
    rec = {
        "technique": technique,
        "config": config.to_dict(),
        "layers": [[m, t] for m, t in layers],
    }
    if structural:
        rec["structural"] = True
    recs.append(rec)
    # object.__setattr__ keeps nn.Module from treating the list as anything special.
    object.__setattr__(model, "_slimkit_records", recs)


def group_id(model: nn.Module, prefix: str) -> str:
    """A name for the parametrizations one application creates, stable across save/load."""
    return f"{prefix}-{len(getattr(model, '_slimkit_records', []))}"
