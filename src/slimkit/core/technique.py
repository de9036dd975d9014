"""``Technique``: everything slimkit knows about one technique, in one object.

Shared code (core, export, metrics, recipes, integrations, testing, the CLI) talks to a
technique only through these methods, never through its classes or its name. Every method
has a default, so a simple technique overrides ``prepare`` and little else.

Example:
    >>> class Noise(Technique):
    ...     name, config_cls, family, stage = "noise", NoiseConfig, "other", "noise"
    ...     def prepare(self, model, config, layers):
    ...         for sites in expand_tied(model, layers):
    ...             register_parametrization(model, sites, AddNoise(config.scale))
    >>> register(Noise())
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch.nn as nn

from slimkit.core.config import Config
from slimkit.core.records import add_record
from slimkit.core.selection import select_weights
from slimkit.core.stages import stage_order

if TYPE_CHECKING:  # pragma: no cover
    import onnx

Layers = list[tuple[str, str]]


class Technique:
    """A registered technique (subclass it; see the module docstring).

    Attributes:
        name: the registered name (records, recipes, ``slimkit techniques``).
        config_cls: its :class:`slimkit.Config` subclass; configs resolve to the technique by
            exact type first, then by the nearest base class.
        family: ``"pruning"``, ``"clustering"``, ``"quantization"`` or ``"other"``: the verb
            (``sk.prune``, ``sk.cluster``, ``sk.quantize``) that accepts its configs.
        description: one line for ``slimkit techniques``.
        stage: the stage its parametrizations use (:mod:`slimkit.core.stages`), which also
            orders its export hooks; None for a technique without one (structural ones run
            first).
        structural: it changes the architecture (shapes); its record survives ``sk.strip``.
        source: who registered it (the entry point, for contributed techniques).
    """

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[Config] | None] = None
    family: ClassVar[str] = "other"
    description: ClassVar[str] = ""
    stage: ClassVar[str | None] = None
    structural: ClassVar[bool] = False
    source: str = "slimkit"

    # -- preparing -------------------------------------------------------------------------
    def select(self, model: nn.Module, config: Config, targets, ignore) -> Layers:
        """The ``(module_name, tensor_name)`` pairs to prepare; default: every known weight."""
        return select_weights(model, targets, ignore, technique=self.name)

    def prepare(self, model: nn.Module, config: Config, layers: Layers) -> None:
        """Attach the technique to ``layers`` of ``model`` in place (no data needed)."""
        raise NotImplementedError(f"technique {self.name!r} does not implement prepare")

    def apply(self, model: nn.Module, config: Config, *, targets=None, ignore=None,
              example_inputs=None, calibration=None, **options) -> nn.Module:
        """What ``sk.apply`` runs: select, prepare, record, then calibrate if data is given.

        Override for a technique that is not a per-weight preparation (channel pruning traces
        the model with ``example_inputs``); it must record itself with ``add_record``.
        """
        # example_inputs are for techniques that trace the model; the others ignore them (a
        # recipe passes them to every stage).
        layers = self.select(model, config, targets, ignore)
        self.prepare(model, config, layers)
        add_record(model, self.name, config, layers, structural=self.structural)
        if calibration is not None:
            # options (batch_size, progress, ...) are the calibration's; without data there is
            # nothing for them to set.
            self.calibrate(model, config, calibration, **options)
        return model

    def replay(self, model: nn.Module, config: Config, layers: Layers, record: dict) -> None:
        """Rebuild the prepared state on a fresh model before ``sk.load`` fills its tensors.

        ``record`` is the saved record; ``record.get("stripped")`` says the model was saved
        after ``sk.strip`` (only what survives stripping is rebuilt). Default: ``prepare``.
        """
        self.prepare(model, config, layers)

    def uses_example_inputs(self, config: Config) -> bool:
        """True for techniques that trace the model and so need ``example_inputs``."""
        return False

    # -- calibration -----------------------------------------------------------------------
    def needs_calibration(self, config: Config) -> bool:
        """True when ``config`` needs calibration data before the model can be exported."""
        return False

    def missing_calibration(self, config: Config, verb: str) -> str:
        """The message when ``sk.<verb>`` gets no data for a config that needs it."""
        return (f"{self.name} with this {type(config).__name__} needs calibration data: "
                f"sk.{verb}(model, config, calibration=loader_or_tensor)")

    def calibrate(self, model: nn.Module, config: Config, data, **options) -> None:
        """Run the technique's calibration on ``data`` (after ``prepare``)."""
        raise ValueError(
            f"{self.name} takes no calibration data ({type(config).__name__}); drop calibration="
        )

    # -- strip, save, export ---------------------------------------------------------------
    def survives_strip(self, record: dict) -> bool:
        """True if the technique's state outlives ``sk.strip`` (its record is kept)."""
        return bool(self.structural or record.get("structural"))

    def pre_export(self, model: nn.Module, ctx) -> None:
        """Runs on the deep copy before it is stripped (e.g. turn fake-quant into Q/DQ)."""

    def post_export(self, proto: onnx.ModelProto, ctx) -> onnx.ModelProto | None:
        """Rewrites the exported proto in memory (e.g. int8 initializers); return it."""
        return proto

    def stored_weights(self, model: nn.Module) -> dict[str, Any]:
        """``{stripped weight name: storage codec}`` of the weights this technique stores in
        a form of its own (int codes + scales): the packed format keeps those codes."""
        return {}

    # -- training --------------------------------------------------------------------------
    def check_step(self, model: nn.Module, record: dict) -> str | None:
        """A warning when the model is stripped or exported before the technique's schedule
        reached its target (e.g. a scheduler that was never stepped), else None."""
        return None

    # -- search ----------------------------------------------------------------------------
    def knobs(self, config: Config) -> dict[str, list]:
        """The per-layer fields a search (``sk.sensitivity``, ``sk.optimize``) may set, with
        their candidate levels, for a model prepared from ``config``: ``{field: [levels]}``,
        most accurate level first (e.g. ``{"clusters": [32, 16, 8]}``). The search writes
        its choices as ``config.overrides = {layer: {field: level}}``
        (:mod:`slimkit.core.overrides`), so a technique that declares knobs has an
        ``overrides`` field. Default ``{}``: no declared knobs (the search refuses it).
        """
        return {}

    # -- tooling ---------------------------------------------------------------------------
    def cli_commands(self) -> list:
        """Extra ``slimkit`` sub-commands (``click.Command`` objects)."""
        return []

    def conformance_entries(self) -> list:
        """This technique's rows of the conformance kit (``ConformanceEntry`` objects)."""
        return []

    # -- helpers ---------------------------------------------------------------------------
    @property
    def order(self) -> float:
        """Where its export hooks run: its stage's order (structural techniques first)."""
        return stage_order(self.stage) if self.stage else float("-inf")

    def __repr__(self) -> str:
        cfg = self.config_cls.__name__ if self.config_cls else None
        return f"Technique({self.name!r}, config={cfg}, family={self.family!r})"


class FunctionTechnique(Technique):
    """A technique made of functions: what :func:`slimkit.register_technique` builds.

    Example:
        >>> FunctionTechnique("my-noise", MyConfig, prepare_fn, family="other")
    """

    def __init__(self, name: str, config_cls: type[Config], prepare, *, select=None,
                 family: str = "other", description: str = "", source: str = "slimkit",
                 pre_export=None, post_export=None, structural: bool = False, apply=None,
                 stage: str | None = None):
        # Instance attributes shadow the class-level declarations of Technique.
        self.name, self.config_cls, self.family = name, config_cls, family
        self.description, self.source, self.structural, self.stage = (
            description, source, structural, stage)
        self._prepare, self._select, self._apply = prepare, select, apply
        self._pre_export, self._post_export = pre_export, post_export

    def select(self, model, config, targets, ignore):
        if self._select is not None:
            return self._select(model, config, targets, ignore)
        return super().select(model, config, targets, ignore)

    def prepare(self, model, config, layers):
        self._prepare(model, config, layers)

    def apply(self, model, config, *, targets=None, ignore=None, example_inputs=None,
              calibration=None, **options):
        if self._apply is not None:
            return self._apply(model, config, targets=targets, ignore=ignore,
                               example_inputs=example_inputs)
        return super().apply(model, config, targets=targets, ignore=ignore,
                             calibration=calibration, **options)

    def pre_export(self, model, ctx):
        if self._pre_export is not None:
            self._pre_export(model, ctx)

    def post_export(self, proto, ctx):
        if self._post_export is not None:
            return self._post_export(proto, ctx)
        return proto
