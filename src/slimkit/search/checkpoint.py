"""The search checkpoint: a JSON file rewritten (atomically) after every measurement, so a
killed search resumes where it stopped and ends at the same result.

Example:
    >>> ck = Checkpoint.open("search.json", fingerprint)   # empty, or what was measured
    >>> ck.candidates.get(key); ck.put_candidate(key, row)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn as nn

from slimkit.core.io import write_text
from slimkit.search.space import SearchError

FORMAT = 1


def model_digest(model: nn.Module) -> str:
    """A digest of the model's state (names, shapes and values)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        if torch.is_floating_point(t) or t.dtype in (torch.int64, torch.int32, torch.uint8):
            h.update(t.detach().cpu().contiguous().view(-1).to(torch.float64).numpy().tobytes())
    return h.hexdigest()


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


class Checkpoint:
    """What a search measured so far; ``path=None`` keeps it in memory only."""

    def __init__(self, path: str | Path | None, print_: str):
        self.path = Path(path) if path is not None else None
        self.fingerprint = print_
        self.baseline: dict | None = None
        self.sensitivity: list[dict] = []
        self.candidates: dict[str, dict] = {}
        self.resumed = False

    @classmethod
    def open(cls, path, print_: str) -> Checkpoint:
        ck = cls(path, print_)
        if ck.path is None or not ck.path.exists():
            return ck
        try:
            data = json.loads(ck.path.read_text())
        except (OSError, ValueError) as e:
            raise SearchError(f"checkpoint {str(ck.path)!r} is not a search checkpoint ({e}); "
                              "delete it or pass another checkpoint path") from None
        if data.get("format") != FORMAT or data.get("fingerprint") != print_:
            raise SearchError(
                f"checkpoint {str(ck.path)!r} was written by a different search (another "
                "model, techniques, levels, budget, objective or seed); delete it or pass "
                "another checkpoint path")
        ck.baseline = data.get("baseline")
        ck.sensitivity = list(data.get("sensitivity", []))
        ck.candidates = dict(data.get("candidates", {}))
        ck.resumed = bool(ck.baseline or ck.sensitivity or ck.candidates)
        return ck

    def save(self) -> None:
        if self.path is None:
            return
        data = {"format": FORMAT, "fingerprint": self.fingerprint, "baseline": self.baseline,
                "sensitivity": self.sensitivity, "candidates": self.candidates}
        write_text(self.path, json.dumps(data))

    def put_baseline(self, row: dict) -> None:
        self.baseline = row
        self.save()

    def put_sensitivity(self, row: dict) -> None:
        self.sensitivity.append(row)
        self.save()

    def put_candidate(self, key: str, row: dict) -> None:
        self.candidates[key] = row
        self.save()
