"""``sk.save`` / ``sk.load``: a prepared model's weights and configs in one safe file.

The file is a plain dict of tensors, strings and numbers, so it loads with
``torch.load(weights_only=True)``: no pickled code runs when a checkpoint is opened. Loading
replays the recorded techniques on a fresh model of the same architecture, then loads the
state_dict, so masks, centroids and step counts resume exactly.

Example:
    >>> sk.save(model, "prepared.pt")
    >>> model = sk.load("prepared.pt", model=DigitsCNN())
    >>> sk.Scheduler(model).step()               # continues the schedule
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from slimkit.core.io import atomic_path
from slimkit.core.records import records
from slimkit.core.registry import replay_record
from slimkit.core.selection import module_type

FORMAT = "slimkit.prepared"
FORMAT_VERSION = 1


def save(model: nn.Module, path: str | os.PathLike, *, extra: dict | None = None) -> None:
    """Write ``model``'s records and state_dict to ``path`` atomically.

    ``extra`` is any weights-only-safe data to keep beside them (epoch, optimizer state...).
    """
    from slimkit import __version__

    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "slimkit_version": __version__,
        "records": records(model),
        "state_dict": model.state_dict(),
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load(path: str | os.PathLike, model: nn.Module, *, strict: bool = True) -> nn.Module:
    """Replay the saved techniques on ``model`` (a fresh, unprepared instance) and load weights.

    Returns ``model``. The payload's ``extra`` dict is attached as ``model._slimkit_extra``.
    """
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not a slimkit checkpoint (written by sk.save)")
    if payload["format_version"] > FORMAT_VERSION:
        raise ValueError(
            f"{os.fspath(path)!r} has format version {payload['format_version']}, newer than "
            f"this slimkit reads ({FORMAT_VERSION}); upgrade slimkit"
        )
    if records(model):
        raise ValueError(
            "load needs a fresh model: this one already has techniques applied "
            f"({', '.join(r['technique'] for r in records(model))})"
        )
    for rec in payload["records"]:
        replay_record(model, rec)
    try:
        model.load_state_dict(payload["state_dict"], strict=strict)
    except RuntimeError as e:
        raise ValueError(
            f"the checkpoint {os.fspath(path)!r} does not fit {module_type(model).__name__}: {e}"
        ) from e
    object.__setattr__(model, "_slimkit_extra", payload.get("extra", {}))
    return model
