"""Helpers shared by the benchmark scripts (run as scripts: benchmarks/ is on sys.path).

Example:
    >>> from common import summary, write_results
    >>> write_results("benchmarks/results/x.json", {"summary": summary([0.97, 0.98])})
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from slimkit.core.io import atomic_path


def summary(values) -> dict:
    """Mean, min and max of a figure over seeds (BENCHMARKS.md reports mean [min-max])."""
    values = list(values)
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def write_results(path: str | Path, payload: dict) -> Path:
    """Write ``payload`` as indented JSON, creating the folder; atomic (no half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2))
    return path
