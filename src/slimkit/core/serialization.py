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
import pickle
import zipfile
from pathlib import Path

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

    model, path = _in_order(model, path, "save")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "slimkit_version": __version__,
        "model_type": module_type(model).__name__,
        "records": records(model),
        "state_dict": model.state_dict(),
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load(path: str | os.PathLike, model: nn.Module, *, strict: bool = True) -> nn.Module:
    """Replay the saved techniques on ``model`` (a fresh, unprepared instance) and load weights.

    Returns ``model``. The payload's ``extra`` dict is attached as ``model._slimkit_extra``.
    ``sk.load(model, path)`` (the order of ``sk.save``) is accepted too.

    Raises:
        FileNotFoundError: there is no file at ``path``.
        ValueError: the file is not a readable slimkit checkpoint (truncated, random bytes, a
            whole-model pickle), is newer than this slimkit, or does not fit ``model``.
    """
    model, path = _in_order(model, path, "load")
    name = os.fspath(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"sk.load: no checkpoint at {name!r}")
    payload = _read(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{name!r} is not a slimkit checkpoint (written by sk.save)")
    if payload["format_version"] > FORMAT_VERSION:
        raise ValueError(
            f"{name!r} has format version {payload['format_version']}, newer than "
            f"this slimkit reads ({FORMAT_VERSION}); upgrade slimkit"
        )
    if records(model):
        raise ValueError(
            "load needs a fresh model: this one already has techniques applied "
            f"({', '.join(r['technique'] for r in records(model))})"
        )
    saved_type = payload.get("model_type")
    for rec in payload["records"]:
        try:
            replay_record(model, rec)
        except (AttributeError, KeyError, ValueError) as e:
            raise ValueError(
                f"the checkpoint {name!r} does not fit {module_type(model).__name__}: replaying "
                f"its {rec['technique']!r} record failed ({e}); pass a fresh instance of the "
                f"architecture that was saved"
                + (f" ({saved_type})" if saved_type else "")
            ) from e
    try:
        model.load_state_dict(payload["state_dict"], strict=strict)
    except RuntimeError as e:
        raise ValueError(
            f"the checkpoint {name!r} does not fit {module_type(model).__name__}"
            + (f" (it was saved from {saved_type})" if saved_type else "") + f": {e}"
        ) from e
    object.__setattr__(model, "_slimkit_extra", payload.get("extra", {}))
    return model


def _in_order(model, path, verb: str):
    """``(model, path)`` from arguments given in either order; a clear error for anything else."""
    if isinstance(path, nn.Module) and isinstance(model, (str, os.PathLike)):
        model, path = path, model
    if not isinstance(model, nn.Module):
        raise TypeError(f"sk.{verb}: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"sk.{verb}: path must be a str or os.PathLike, got {type(path).__name__}")
    return model, path


def _read(path):
    """``torch.load`` with weights only, its failures turned into one clear error."""
    name = os.fspath(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not zipfile.is_zipfile(path):   # torch.save writes a zip: these are random bytes
            raise ValueError(
                f"{name!r} is not a readable slimkit checkpoint (not written by sk.save)"
            ) from e
        # torch's own message advises weights_only=False, which would run the file's code;
        # a slimkit checkpoint never needs it.
        raise ValueError(
            f"{name!r} is not a slimkit checkpoint: it holds pickled Python objects (a whole "
            f"model saved with torch.save?), which sk.load does not unpickle. Write checkpoints "
            f"with sk.save(model, path)"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise ValueError(
            f"{name!r} is not a readable slimkit checkpoint (truncated or not written by "
            f"sk.save): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
