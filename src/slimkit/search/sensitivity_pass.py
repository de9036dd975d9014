"""``sk.sensitivity``: what compressing one layer (or one block) at a time costs.

For every unit (layer or group) and every level of every technique, a copy of the model gets
only that unit compressed; the score is the drop of the user's metric (``eval_fn``, on the
torch model) or, with no ``eval_fn``, the cheap proxy: the relative output error
``|y - y_fp32|^2 / |y_fp32|^2`` on calibration data. Each row also carries the unit's
estimated stored size (zipped bytes) at that setting.

Example:
    >>> sens = sk.sensitivity(model, sk.QuantizationConfig(mode="weight_only"),
    ...                       calibration=x, groups="blocks")
    >>> print(sens.table()); sens.to_json("sens.json"); sens.plot("sens.png")
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from slimkit.core.config import Config
from slimkit.core.io import write_text
from slimkit.core.parametrize import get_module
from slimkit.search.measure import (
    as_batches,
    call_metric,
    output_error,
    reference_outputs,
    stored_bytes,
    torch_predict,
)
from slimkit.search.space import OFF, SearchError, SearchSpace, Setting, build, plan_stages

PROXIES = ("output_error",)


@dataclass
class SensitivityResult:
    """The sensitivity table: one row per (unit, setting).

    ``kind`` is ``"drop"`` (metric lost, from ``eval_fn``; higher is worse) or
    ``"output_error"`` (the proxy). ``rows``: dicts with ``unit``, ``setting`` (level index
    per technique, -1 = off), ``label``, ``score``, ``metric`` (with ``eval_fn``) and
    ``bytes`` (the unit's estimated stored size). ``baseline``: the fp32 metric (eval_fn)
    and each unit's fp32 bytes.
    """

    kind: str
    techniques: list[str]
    units: list[dict]
    rows: list[dict]
    baseline: dict = field(default_factory=dict)
    seconds: float = 0.0

    def score(self, unit: str, setting: Setting) -> float | None:
        """The score of ``unit`` at ``setting`` (None: the setting failed on that unit)."""
        return self._index()[(unit, tuple(setting))]["score"]

    def row(self, unit: str, setting: Setting) -> dict:
        return self._index()[(unit, tuple(setting))]

    def _index(self) -> dict:
        if getattr(self, "_cache", None) is None or len(self._cache) != len(self.rows):
            self._cache = {(r["unit"], tuple(r["setting"])): r for r in self.rows}
        return self._cache

    def labels(self) -> list[str]:
        seen = []
        for r in self.rows:
            if r["label"] not in seen:
                seen.append(r["label"])
        return seen

    # -- output ----------------------------------------------------------------------------
    def table(self) -> Table:
        """A rich table: a row per unit, a column per setting (score; the lower the safer)."""
        what = "metric drop" if self.kind == "drop" else "relative output error"
        t = Table(title=f"Sensitivity ({what}; one unit compressed at a time)")
        t.add_column("unit")
        t.add_column("weights", justify="right")
        labels = self.labels()
        for label in labels:
            t.add_column(label, justify="right")
        by = {(r["unit"], r["label"]): r for r in self.rows}
        for u in self.units:
            cells = []
            for label in labels:
                r = by.get((u["name"], label))
                cells.append("" if r is None else "failed" if r.get("failed")
                             else _fmt(r["score"], self.kind))
            t.add_row(u["name"], f"{u['weights']:,}", *cells)
        return t

    def __rich__(self) -> Table:
        return self.table()

    def to_dict(self) -> dict:
        return {"kind": self.kind, "techniques": self.techniques, "units": self.units,
                "rows": self.rows, "baseline": self.baseline, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict) -> SensitivityResult:
        return cls(d["kind"], list(d["techniques"]), list(d["units"]),
                   [dict(r, setting=list(r["setting"])) for r in d["rows"]],
                   dict(d.get("baseline", {})), float(d.get("seconds", 0.0)))

    def to_json(self, path: str | Path | None = None) -> str:
        """The table as JSON; with ``path``, also written there (atomically)."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            write_text(path, text)
        return text

    def plot(self, path: str | Path) -> Path:
        """A PNG: the score of every setting per unit (log scale for the proxy)."""
        from slimkit.search.plots import sensitivity_plot

        return sensitivity_plot(self, path)


def sensitivity(model: nn.Module, techniques: Config | Sequence[Config], levels: dict | None = None,
                *, eval_fn: Callable | None = None, metric: str | None = None,
                proxy: str = "output_error", calibration=None, groups=None, targets=None,
                ignore=None, combinations: bool = False, progress: bool = True,
                seed: int = 0) -> SensitivityResult:
    """Per-layer (or per-group) sensitivity of ``model`` to each level of ``techniques``.

    ``techniques``: a config or a list of configs of registered techniques that declare knobs
    (``Technique.knobs``); ``levels`` replaces a technique's declared levels:
    ``{"weight-clustering": {"clusters": [16, 8]}}``. ``eval_fn(predict)`` returns the metric
    (higher is better), measured on the torch model; without it the ``proxy`` is used, on
    ``calibration`` (a tensor or a list of batches, also used by techniques that calibrate).
    ``groups``: None (per layer), ``"blocks"`` (per repeated block) or
    ``{name: [patterns]}``. ``combinations=True`` also measures every combination of the
    techniques' levels on each unit (what :func:`slimkit.optimize` uses).

    Example:
        >>> sens = sk.sensitivity(model, [sk.ClusteringConfig(16)], calibration=x)
        >>> sens.score("fc1", (1,))    # fc1 at the second level (16 clusters)
    """
    if isinstance(techniques, Config):
        techniques = [techniques]
    space = SearchSpace.build(model, list(techniques), levels=levels, groups=groups,
                              targets=targets, ignore=ignore)
    return measure_sensitivity(model, space, eval_fn=eval_fn, metric=metric, proxy=proxy,
                               calibration=calibration, combinations=combinations,
                               progress=progress, seed=seed)


def measure_sensitivity(model: nn.Module, space: SearchSpace, *, eval_fn=None, metric=None,
                        proxy="output_error", calibration=None, combinations=False,
                        progress=True, seed=0, deadline: float | None = None,
                        on_row: Callable | None = None, done: list | None = None
                        ) -> SensitivityResult:
    """The work of :func:`sensitivity` on a built :class:`SearchSpace` (rows in ``done`` are
    kept, not measured again: a resumed search)."""
    if eval_fn is None and proxy not in PROXIES:
        raise SearchError(f"proxy must be one of {PROXIES} (or pass eval_fn), got {proxy!r}")
    batches = as_batches(calibration)
    if eval_fn is None and not batches:
        raise SearchError("the output-error proxy needs calibration= inputs (a tensor or a "
                          "list of batches); or pass eval_fn")
    start = time.perf_counter()
    kind = "drop" if eval_fn is not None else proxy
    baseline: dict = {"bytes": {u.name: _unit_bytes(model, u.layers) for u in space.units}}
    reference = None
    if eval_fn is not None:
        baseline["metric"] = call_metric(eval_fn, torch_predict(model), metric)
    else:
        reference = reference_outputs(model, batches)
    settings = _settings(space, combinations)
    rows = list(done or [])
    have = {(r["unit"], tuple(r["setting"])) for r in rows}
    todo = [(u, s) for u in space.units for s in settings if (u.name, s) not in have]
    off = tuple([OFF] * len(space.techniques))
    columns = [TextColumn("sensitivity"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.description}")]
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("", total=len(todo))
        for unit, setting in todo:
            if deadline is not None and time.perf_counter() > deadline:
                raise TimeoutError("sensitivity")
            bar.update(task, description=f"{unit.name}: {space.label(setting)}")
            plan = {u.name: off for u in space.units}
            plan[unit.name] = setting
            row = {"unit": unit.name, "setting": list(setting), "label": space.label(setting)}
            try:
                candidate = build(model, plan_stages(space, plan), calibration=calibration,
                                  seed=seed)
            except Exception as e:
                # a setting a technique refuses on this unit (too many clusters for a small
                # layer, ...): recorded, never chosen
                row.update(failed=f"{type(e).__name__}: {str(e)[:300]}", score=None, bytes=None)
                candidate = None
            if candidate is not None:
                row["bytes"] = _unit_bytes(candidate, unit.layers)
                if eval_fn is not None:
                    row["metric"] = call_metric(eval_fn, torch_predict(candidate), metric)
                    row["score"] = baseline["metric"] - row["metric"]
                else:
                    row["score"] = output_error(candidate, batches, reference)
            rows.append(row)
            if on_row is not None:
                on_row(row)
            bar.advance(task)
    order = {(u.name, s): i for i, (u, s) in enumerate((u, s) for u in space.units
                                                       for s in settings)}
    rows.sort(key=lambda r: order.get((r["unit"], tuple(r["setting"])), len(order)))
    units = [{"name": u.name, "layers": u.layers, "weights": u.weights} for u in space.units]
    return SensitivityResult(kind, [t.name for t in space.techniques], units, rows, baseline,
                             time.perf_counter() - start)


def _settings(space: SearchSpace, combinations: bool) -> list[Setting]:
    off = [OFF] * len(space.techniques)
    if combinations:
        return [s for s in space.settings() if any(i != OFF for i in s)]
    out = []
    for k, t in enumerate(space.techniques):
        for level in range(len(t.levels)):
            s = list(off)
            s[k] = level
            out.append(tuple(s))
    return out


def _unit_bytes(model: nn.Module, layers: list[str]) -> int:
    total = 0
    for name in layers:
        w = getattr(get_module(model, name), "weight", None)
        if w is not None and w.ndim >= 1:
            total += stored_bytes(w)
    return total


def _fmt(value: float, kind: str) -> str:
    if kind == "drop":
        return f"{value:+.4f}"
    return f"{value:.2e}"
