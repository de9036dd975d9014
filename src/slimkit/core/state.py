"""The state protocol: what a technique's state objects declare, so shared code stays generic.

Technique state lives in ``nn.Module`` objects of two kinds: weight parametrizations
(:class:`slimkit.core.parametrize.SlimParametrization`) and stateful modules the technique
attaches to the model (activation quantizers, observers). Both subclass :class:`SlimState`
and declare, instead of shared code knowing them:

- a ``step`` buffer, if the object follows the training schedule: :class:`slimkit.Scheduler`
  advances it and calls the class's :meth:`SlimState.on_step` once per group;
- :meth:`SlimState.stats` / :meth:`SlimState.layer_stats`: the training statistics the
  Lightning / Hugging Face callbacks log (``slimkit/<key>``);
- ``sync_rules`` / ``sync_valid`` / :meth:`SlimState.moves_in_forward`: how buffers that change
  inside the forward pass are reduced over the ranks of a ``torch.distributed`` job;
- :meth:`SlimState.original_unused`: a parametrization whose output ignores the weight under
  it (DDP must be told that parameter gets no gradient).

Example:
    >>> class Peak(SlimState, nn.Module):           # a running maximum seen in forward
    ...     sync_rules = {"peak": "max"}
    ...     def stats(self): return {"peak": Max(float(self.peak))}
    >>> [s.name for s in slim_states(model)]
    ['fc1._sk_peak']
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch.nn as nn
from torch.nn.utils import parametrize

SYNC_RULES = ("min", "max", "any")


@dataclass(frozen=True)
class Stat:
    """One training statistic, combined over state objects by its ``kind``.

    ``sum``: added; ``max`` / ``min``: the extreme; ``ratio``: numerators and denominators
    added separately, then divided (e.g. zeros over entries of all masks).
    """

    kind: str
    value: float
    denominator: float = 1.0

    def combine(self, other: Stat) -> Stat:
        if other.kind != self.kind:
            raise ValueError(f"cannot combine a {self.kind} statistic with a {other.kind} one")
        if self.kind == "sum":
            return Stat("sum", self.value + other.value)
        if self.kind == "max":
            return Stat("max", max(self.value, other.value))
        if self.kind == "min":
            return Stat("min", min(self.value, other.value))
        return Stat("ratio", self.value + other.value, self.denominator + other.denominator)

    def result(self) -> float:
        if self.kind == "ratio":
            return self.value / self.denominator if self.denominator else 0.0
        return float(self.value)


def Sum(value: float) -> Stat:  # noqa: N802 - reads as a constructor
    """A statistic added over state objects (e.g. a count)."""
    return Stat("sum", float(value))


def Max(value: float) -> Stat:  # noqa: N802
    """A statistic whose largest value over state objects is reported."""
    return Stat("max", float(value))


def Min(value: float) -> Stat:  # noqa: N802
    """A statistic whose smallest value over state objects is reported."""
    return Stat("min", float(value))


def Ratio(numerator: float, denominator: float) -> Stat:  # noqa: N802
    """A statistic reported as sum of numerators / sum of denominators."""
    return Stat("ratio", float(numerator), float(denominator))


class SlimState:
    """Mixin of every object holding technique state (use with ``nn.Module``).

    Class attributes:
        sync_rules: ``{buffer name: "min" | "max" | "any"}`` for buffers that change in the
            forward pass; :func:`slimkit.integrations.sync_forward_state` all-reduces them.
        sync_valid: the name of a bool buffer saying this rank's values are meaningful (a
            rank whose observer saw no data must not pull the minimum to its zeros), or None.
    """

    sync_rules: ClassVar[dict[str, str]] = {}
    sync_valid: ClassVar[str | None] = None

    def stats(self) -> dict[str, Stat]:
        """Statistics this object contributes to the model's totals (default: none)."""
        return {}

    def layer_stats(self) -> dict[str, float]:
        """Per-layer statistics; logged as ``slimkit/<key>/<site name>`` (default: none)."""
        return {}

    def moves_in_forward(self) -> bool:
        """True while a forward pass changes the ``sync_rules`` buffers (default: False)."""
        return False

    def original_unused(self) -> bool:
        """True when the parametrized output ignores the tensor under it (default: False)."""
        return False

    @classmethod
    def on_step(cls, model: nn.Module, sites: list) -> None:
        """Called by :class:`slimkit.Scheduler` after the ``step`` buffers advanced.

        ``sites`` lists the :class:`StateSite` of every object of this class and ``group``,
        so a group can be updated jointly (global pruning ranks all its masks at once).
        """


@dataclass(frozen=True)
class StateSite:
    """Where a state object sits: ``name`` is its state_dict prefix; ``module_name`` and
    ``tensor_name`` the parametrized weight (``tensor_name`` is None for a stateful module)."""

    name: str
    module_name: str
    tensor_name: str | None
    index: int
    state: SlimState

    @property
    def label(self) -> str:
        """The site as logged: ``layer.tensor`` for a weight, the module name otherwise."""
        if self.tensor_name is None:
            return self.name
        return f"{self.module_name}.{self.tensor_name}" if self.module_name else self.tensor_name

    def as_tuple(self) -> tuple:
        """``(module_name, tensor_name, index, state)``: what on_step hooks of earlier
        releases received; a site unpacks and indexes the same way."""
        return (self.module_name, self.tensor_name, self.index, self.state)

    def __iter__(self):
        return iter(self.as_tuple())

    def __getitem__(self, i):
        return self.as_tuple()[i]


def slim_states(model: nn.Module) -> Iterator[StateSite]:
    """Every state object of ``model``: parametrizations (once per tied site) and stateful
    modules, in module registration order (the same on every rank of one model)."""
    for mname, module in model.named_modules(remove_duplicate=False):
        if ".parametrizations." in f".{mname}.":
            continue
        if isinstance(module, SlimState) and not _is_parametrization_list_member(mname):
            yield StateSite(mname, mname.rsplit(".", 1)[0] if "." in mname else "", None, 0,
                            module)
        if parametrize.is_parametrized(module):
            for tname, plist in module.parametrizations.items():
                for i, p in enumerate(plist):
                    if isinstance(p, SlimState):
                        prefix = f"{mname}." if mname else ""
                        yield StateSite(f"{prefix}parametrizations.{tname}.{i}", mname, tname,
                                        i, p)


def unique_states(model: nn.Module) -> list[StateSite]:
    """:func:`slim_states` with each object once (a tied weight's parametrization is one)."""
    seen: set[int] = set()
    out = []
    for site in slim_states(model):
        if id(site.state) not in seen:
            seen.add(id(site.state))
            out.append(site)
    return out


def _is_parametrization_list_member(name: str) -> bool:
    return ".parametrizations." in f".{name}." or name.startswith("parametrizations.")
