"""The search space: techniques with declared knobs, the units they act on, and plans.

A *unit* is a layer (its module name) or a group of layers searched together (a transformer
block). A *setting* of a unit is one level per technique, or "off" (the technique leaves the
unit alone). A *plan* is a setting for every unit; :func:`plan_stages` writes it as ordinary
configs (per-layer ``overrides``, ``targets`` = the layers that are on), applied in the order
the techniques were given, so a search result is what ``sk.apply``, recipes, ``sk.save`` /
``sk.load`` and export already understand.

Example:
    >>> space = SearchSpace.build(model, [sk.MagnitudePruningConfig(0.5), sk.QuantizationConfig()])
    >>> [u.name for u in space.units]
    ['conv1', 'conv2', 'fc1', 'fc2']
    >>> plan_stages(space, {"fc1": (3, 0)})     # fc1: 80% sparse (4th level) and int8
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from slimkit.core.config import Config
from slimkit.core.registry import apply, get_technique
from slimkit.core.selection import matches
from slimkit.core.technique import Technique

OFF = -1

Setting = tuple[int, ...]   # one level index per technique, OFF = not applied


class SearchError(ValueError):
    """A search that cannot run as asked; the message says what to change."""


@dataclass
class SpaceTechnique:
    """One technique of the search: its registered object, the base config, its levels."""

    tech: Technique
    config: Config
    levels: list[dict]          # each a {field: value} override

    @property
    def name(self) -> str:
        return self.tech.name

    def label(self, index: int) -> str:
        if index == OFF:
            return "off"
        return ",".join(f"{k}={_short(v)}" for k, v in self.levels[index].items())


@dataclass
class Unit:
    """A layer or a group of layers that get one setting together."""

    name: str
    layers: list[str]          # module names
    weights: int               # number of weight values of its layers


@dataclass
class SearchSpace:
    techniques: list[SpaceTechnique]
    units: list[Unit]
    # which module names each technique selects (a unit's layer a technique does not cover is
    # left out of that technique's stage)
    covered: list[set[str]]

    @classmethod
    def build(cls, model: nn.Module, techniques: Sequence[Config], *, levels: dict | None = None,
              groups=None, targets=None, ignore=None) -> SearchSpace:
        """Resolve ``techniques`` (configs) through the registry and find the units.

        ``levels``: ``{technique name: [ {field: value}, ... ] or {field: [values]}}`` replaces
        a technique's declared knobs. ``groups``: None (every layer is a unit), ``"blocks"``
        (the model's repeated blocks, e.g. transformer layers; other layers stay units of
        their own) or ``{unit name: [layer patterns]}``.
        """
        if not techniques:
            raise SearchError("techniques is empty: pass the configs to search over, e.g. "
                              "techniques=[sk.MagnitudePruningConfig(0.5), sk.QuantizationConfig()]")
        levels = dict(levels or {})
        resolved, names = [], []
        for cfg in techniques:
            if not isinstance(cfg, Config):
                raise SearchError(f"techniques takes slimkit configs, got {type(cfg).__name__} "
                                  f"({cfg!r})")
            tech = get_technique(cfg)
            if tech.name in names:
                raise SearchError(f"technique {tech.name!r} is listed twice in techniques; "
                                  "list each once (its levels are searched per layer)")
            names.append(tech.name)
            lv = _levels(tech, cfg, levels.pop(tech.name, None))
            resolved.append(SpaceTechnique(tech, cfg, lv))
        if levels:
            raise SearchError(f"levels names {sorted(levels)}, which is not among the searched "
                              f"techniques {names}")
        covered = []
        for st in resolved:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                layers = st.tech.select(model, st.config, targets, ignore)
            covered.append({m for m, _ in layers})
        order = [name for name, _ in model.named_modules()]
        all_layers = [n for n in order if any(n in c for c in covered)]
        if not all_layers:
            raise SearchError("the techniques select no layer of the model "
                              f"(targets={targets!r}, ignore={ignore!r})")
        units = _units(model, all_layers, groups)
        return cls(resolved, units, covered)

    # -- settings --------------------------------------------------------------------------
    def settings(self) -> list[Setting]:
        """Every setting of a unit: the product of (off + levels) over the techniques."""
        ranges = [[OFF, *range(len(t.levels))] for t in self.techniques]
        return list(itertools.product(*ranges))

    def label(self, setting: Setting) -> str:
        parts = [f"{t.name}:{t.label(i)}" for t, i in zip(self.techniques, setting) if i != OFF]
        return " + ".join(parts) if parts else "fp32"

    def uniform(self, technique: int, level: int) -> dict[str, Setting]:
        """The plan giving every unit ``level`` of one technique (others off)."""
        s = [OFF] * len(self.techniques)
        s[technique] = level
        return {u.name: tuple(s) for u in self.units}

    def describe(self) -> dict:
        return {
            "techniques": [{"technique": t.name, "config": t.config.to_dict(),
                            "levels": [_jsonable(lv) for lv in t.levels]}
                           for t in self.techniques],
            "units": [{"name": u.name, "layers": u.layers, "weights": u.weights}
                      for u in self.units],
        }


def _levels(tech: Technique, cfg: Config, given) -> list[dict]:
    knobs = given if given is not None else tech.knobs(cfg)
    if isinstance(knobs, dict):
        if not knobs:
            raise SearchError(
                f"technique {tech.name!r} declares no knobs (Technique.knobs returns {{}}), so "
                "there is nothing to search per layer; pass levels={"
                f"{tech.name!r}: {{field: [values]}}}} or leave it out of techniques")
        fields = list(knobs)
        for f in fields:
            if not isinstance(knobs[f], (list, tuple)) or not knobs[f]:
                raise SearchError(f"the levels of {tech.name}.{f} must be a non-empty list, got "
                                  f"{knobs[f]!r}")
        out = [dict(zip(fields, combo)) for combo in itertools.product(*(knobs[f] for f in fields))]
    elif isinstance(knobs, (list, tuple)) and knobs and all(isinstance(k, dict) for k in knobs):
        out = [dict(k) for k in knobs]
    else:
        raise SearchError(f"levels for {tech.name!r} must be {{field: [values]}} or a list of "
                          f"{{field: value}} dicts, got {knobs!r}")
    if not any(f.name == "overrides" for f in dataclasses.fields(cfg)):
        raise SearchError(f"{type(cfg).__name__} ({tech.name}) has no overrides field, so a "
                          "per-layer setting cannot be written in it")
    for lv in out:
        try:
            dataclasses.replace(cfg, overrides={"*": lv})
        except (ValueError, TypeError) as e:
            raise SearchError(f"level {lv} of {tech.name} is not a valid setting: {e}") from None
    return out


def _units(model: nn.Module, layers: list[str], groups) -> list[Unit]:
    modules = dict(model.named_modules())

    def weights(names):
        total = 0
        for n in names:
            w = getattr(modules[n], "weight", None)
            if isinstance(w, torch.Tensor):
                total += w.numel()
        return total

    if groups is None:
        return [Unit(n, [n], weights([n])) for n in layers]
    if groups == "blocks":
        from slimkit.core.sequential import find_blocks

        spec = {name: [name] for name, _ in find_blocks(model)}
    elif isinstance(groups, dict) and all(isinstance(k, str) for k in groups):
        spec = {k: [v] if isinstance(v, str) else list(v) for k, v in groups.items()}
    else:
        raise SearchError(f"groups must be None, 'blocks' or {{unit name: [layer patterns]}}, "
                          f"got {groups!r}")
    assigned: dict[str, str] = {}
    for unit, patterns in spec.items():
        for n in layers:
            if n not in assigned and any(matches(n, modules[n], p) for p in patterns):
                assigned[n] = unit
    units, seen = [], {}
    for n in layers:
        key = assigned.get(n, n)
        if key not in seen:
            seen[key] = Unit(key, [], 0)
            units.append(seen[key])
        seen[key].layers.append(n)
    for u in units:
        u.weights = weights(u.layers)
    empty = sorted(set(spec) - set(seen))
    if empty:
        raise SearchError(f"groups {empty} match no layer the techniques select")
    return units


# -- plans -----------------------------------------------------------------------------------


def plan_stages(space: SearchSpace, plan: dict[str, Setting]) -> list[tuple[Config, list[str]]]:
    """The plan as ``[(config with per-layer overrides, targets), ...]`` in technique order;
    a technique no unit uses is left out."""
    stages = []
    for k, st in enumerate(space.techniques):
        overrides, targets = {}, []
        for unit in space.units:
            level = plan[unit.name][k]
            if level == OFF:
                continue
            for layer in unit.layers:
                if layer in space.covered[k]:
                    targets.append(layer)
                    overrides[layer] = dict(st.levels[level])
        if targets:
            stages.append((dataclasses.replace(st.config, overrides=overrides), targets))
    return stages


def apply_stages(model: nn.Module, stages, *, calibration=None,
                 train_fn: Callable[[nn.Module], object] | None = None) -> nn.Module:
    """Apply ``stages`` (from :func:`plan_stages`) to ``model`` in place, calibrating the
    techniques that need data and calling ``train_fn(model)`` after each stage."""
    for cfg, targets in stages:
        tech = get_technique(cfg)
        data = calibration if tech.needs_calibration(cfg) else None
        if tech.needs_calibration(cfg) and calibration is None:
            raise SearchError(f"{tech.name} with {type(cfg).__name__} needs calibration data: "
                              "pass calibration= to the search")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if data is not None:
                apply(model, cfg, targets=targets, calibration=data, progress=False)
            else:
                apply(model, cfg, targets=targets)
        if train_fn is not None:
            train_fn(model)
    return model


def build(model: nn.Module, stages, *, calibration=None, train_fn=None, seed: int = 0):
    """A deep copy of ``model`` with ``stages`` applied (seeded, so it repeats exactly)."""
    torch.manual_seed(seed)
    out = copy.deepcopy(model)
    return apply_stages(out, stages, calibration=calibration, train_fn=train_fn)


def stages_to_dicts(stages) -> list[dict]:
    """JSON form of stages: ``[{"technique", "config", "targets"}]``."""
    return [{"technique": get_technique(cfg).name, "config": cfg.to_dict(),
             "targets": list(targets)} for cfg, targets in stages]


def stages_from_dicts(items) -> list[tuple[Config, list[str]]]:
    return [(Config.from_dict(d["config"]), list(d["targets"])) for d in items]


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _jsonable(level: dict) -> dict:
    from slimkit.core.config import _encode

    return {k: _encode(v) for k, v in level.items()}
