"""``ConformanceEntry``: one row of the conformance matrix, what a technique claims.

A technique joins the kit with one entry: its registered name, a config factory and the
properties it promises (which zoo models it handles, its accuracy budget on digits, the
deployment metric it improves and by how much, how exact ``sk.strip`` is, what data it needs,
where its docs live). Every check reads only this entry.

Example:
    >>> ConformanceEntry(
    ...     "magnitude-pruning",
    ...     config=lambda: sk.MagnitudePruningConfig(0.5),
    ...     invalid={"scope": "diagonal"},
    ...     metric="zipped_bytes", factor=1.5,
    ... )
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRICS = ("zipped_bytes", "raw_bytes", "latency")
"""Deployment metrics an entry may claim, read from :func:`slimkit.report` of the artifact."""


@dataclass(frozen=True)
class SampleData:
    """What the kit hands to ``ConformanceEntry.prepare``.

    ``example``: a tuple of input tensors (a few rows), given only when the entry declares
    ``needs_example_inputs``; ``calibration``: data in the form :func:`slimkit.calibrate`
    accepts, given only when it declares ``needs_calibration``. Otherwise they are None, so a
    technique that silently needs data it did not declare fails the kit.
    """

    example: tuple | None = None
    calibration: Any = None


@dataclass(frozen=True)
class ConformanceEntry:
    """A technique's row in the conformance matrix.

    Fields:
        technique: the registered name (``sk.techniques()``).
        config: a zero-argument factory returning the config the checks use. Schedules
            should fit the digits fine-tune of ``finetune_steps`` steps.
        invalid: ``{field: bad value}``; each must make the config raise a ``ValueError``
            (or ``TypeError``) that names the field. At least one is required.
        models: the zoo models the technique applies to (see :data:`slimkit.testing.ZOO`).
        accuracy_budget: the most the digits test accuracy of the ONNX Runtime artifact may
            drop below the fp32 artifact's, in absolute terms (0.015 = 1.5 points).
        metric: the deployment metric the technique improves: ``"zipped_bytes"``,
            ``"raw_bytes"`` or ``"latency"`` (ORT p50, batch 64), or None for a technique that
            claims none (then ``factor`` must be 1.0).
        factor: the artifact's metric must be at least this many times better than the fp32
            artifact's (fp32 / technique >= factor).
        strip_exact: ``sk.strip`` must leave outputs bit-identical; with False they must
            agree within ``strip_atol``.
        strip_atol: the tolerance when ``strip_exact`` is False.
        needs_calibration / needs_example_inputs: what data ``prepare`` receives.
        prepare: ``prepare(model, config, data: SampleData) -> model``; default
            ``sk.apply(model, config)``, then ``sk.calibrate`` when ``needs_calibration``.
        export_kwargs: extra keyword arguments of ``sk.export_onnx`` (e.g. ``compact=True``).
        finetune_steps: Adam (lr 1e-4, batch 32) steps of digits fine-tuning from the trained
            baseline before the artifact is measured; 0 for post-training techniques.
        lr: the fine-tuning learning rate.
        docs: the technique's docs folder; ``{technique}`` is replaced by the name. Relative
            paths are resolved against the working directory (for slimkit's own techniques,
            against its source checkout when the working directory lacks them).
        docs_pages: the files that folder must hold.
        export_atol: how far the ``torch.export`` program may be from the eager deployable
            model (plus 1e-4 relative). Quantized arithmetic turns a last-bit float
            difference into a whole quantization step, so int8 techniques declare about one
            output step here.
        known_failures: ``{"check" or "check-model": reason}``: checks known to fail, each
            with the reason (an issue link). pytest runs them as strict xfails, so a fix
            shows up as an unexpected pass; the pass table shows "xfail".
        id: the name of this row in test ids and tables (default: ``technique``); give two
            rows of one technique (e.g. two modes) different ids.
    """

    technique: str
    config: Callable[[], Any]
    invalid: dict = field(default_factory=dict)
    models: tuple = ("cnn", "subclassed", "lstm", "transformer")
    accuracy_budget: float = 0.015
    metric: str | None = "zipped_bytes"
    factor: float = 1.0
    strip_exact: bool = True
    strip_atol: float = 0.0
    needs_calibration: bool = False
    needs_example_inputs: bool = False
    prepare: Callable | None = None
    export_kwargs: dict = field(default_factory=dict)
    finetune_steps: int = 90
    lr: float = 1e-4
    docs: str | os.PathLike = "docs/techniques/{technique}"
    docs_pages: tuple = ("overview.md", "guide.md", "notebook.ipynb")
    export_atol: float = 1e-5
    known_failures: dict = field(default_factory=dict)
    id: str | None = None

    def __post_init__(self):
        from slimkit.testing.zoo import ZOO

        def bad(field_name: str, accepted: str):
            value = getattr(self, field_name)
            raise ValueError(
                f"{field_name} must be {accepted}, got {value!r} (ConformanceEntry.{field_name})"
            )

        if not isinstance(self.technique, str) or not self.technique:
            bad("technique", "a registered technique name")
        if not callable(self.config):
            bad("config", "a zero-argument function returning the config")
        if not isinstance(self.invalid, dict):
            bad("invalid", "a dict {config field: a value the config must refuse}")
        models = (self.models,) if isinstance(self.models, str) else tuple(self.models)
        object.__setattr__(self, "models", models)
        unknown = [m for m in models if m not in ZOO]
        if unknown or not models:
            bad("models", f"a non-empty tuple of zoo names among {sorted(ZOO)}")
        if "cnn" not in models:
            # The digits checks (resume, convergence, metric) run on the CNN.
            bad("models", "a tuple that includes 'cnn' (the digits checks run on it)")
        if not (isinstance(self.accuracy_budget, (int, float)) and 0 <= self.accuracy_budget < 1):
            bad("accuracy_budget", "a number in [0, 1) (absolute accuracy points)")
        if self.metric is not None and self.metric not in METRICS:
            bad("metric", f"None or one of {METRICS}")
        if not (isinstance(self.factor, (int, float)) and self.factor >= 1.0):
            bad("factor", "a number >= 1 (fp32 metric / technique metric)")
        if self.metric is None and self.factor != 1.0:
            bad("factor", "1.0 when metric is None")
        if not (isinstance(self.strip_atol, (int, float)) and self.strip_atol >= 0):
            bad("strip_atol", "a number >= 0")
        if self.prepare is not None and not callable(self.prepare):
            bad("prepare", "None or prepare(model, config, data) -> model")
        if not (isinstance(self.finetune_steps, int) and self.finetune_steps >= 0):
            bad("finetune_steps", "an integer >= 0")
        if not (isinstance(self.export_atol, (int, float)) and self.export_atol >= 0):
            bad("export_atol", "a number >= 0")
        if not isinstance(self.known_failures, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in self.known_failures.items()
        ):
            bad("known_failures", "a dict {'check' or 'check-model': reason}")

    def known_failure(self, check: str, model: str | None = None) -> str | None:
        """The declared reason why ``check`` (on ``model``) fails, or None."""
        if model is not None and f"{check}-{model}" in self.known_failures:
            return self.known_failures[f"{check}-{model}"]
        return self.known_failures.get(check)

    @property
    def name(self) -> str:
        """The row's id: ``id`` if given, else the technique name."""
        return self.id or self.technique

    @property
    def docs_dir(self) -> Path:
        """The docs folder: a relative ``docs`` against the working directory, or, for a
        built-in technique, against slimkit's source checkout (so ``slimkit conformance``
        works from any directory)."""
        path = Path(str(self.docs).replace("{technique}", self.technique))
        if path.is_absolute() or path.exists() or not self.builtin:
            return path
        checkout = source_checkout()
        return checkout / path if checkout is not None else path

    @property
    def builtin(self) -> bool:
        """The technique is one of slimkit's own (its docs live in slimkit's repository)."""
        from slimkit.core.registry import get_technique

        try:
            return get_technique(self.technique).source == "slimkit"
        except (KeyError, ValueError):
            return False


def source_checkout() -> Path | None:
    """The repository slimkit runs from (an editable install), or None for an installed wheel."""
    import slimkit

    root = Path(slimkit.__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "docs").is_dir() else None
