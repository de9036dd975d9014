"""Per-layer overrides: one form for every technique's config.

A config with an ``overrides`` field takes ``{layer pattern: {field: value}}``: the layers a
pattern matches (type names, globs, ``re:`` regexes, as in ``targets``) get the config with
those fields replaced; when several patterns match a layer, they apply in order (the last
one wins). This is what a mixed-precision / mixed-sparsity search result is written in, so
``sk.apply``, recipes, ``sk.save`` / ``sk.load`` and export need nothing else.

Example:
    >>> cfg = sk.MagnitudePruningConfig(0.5, overrides={"fc1": {"schedule": 0.9}})
    >>> layer_config(cfg, "fc1", model.fc1).schedule
    ConstantSparsity(sparsity=0.9)
    >>> [(c.schedule.sparsity(0), names) for c, names in split_layers(model, cfg, layers)]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch.nn as nn

from slimkit.core.config import Config, ConfigError
from slimkit.core.parametrize import get_module

Layers = list[tuple[str, str]]


def check_overrides(config: Config, allowed: Iterable[str], *, legacy: str | None = None) -> None:
    """Validate ``config.overrides`` in ``__post_init__``: a dict ``{pattern: {field: value}}``
    whose fields are among ``allowed``; each per-layer config is built once, so a bad value
    fails now (naming the pattern), not when a model is prepared.

    ``legacy`` names the one field an older ``{pattern: value}`` form sets; such entries are
    rewritten to ``{pattern: {legacy: value}}`` (the old form keeps working).
    """
    allowed = tuple(allowed)
    name = type(config).__name__
    overrides = getattr(config, "overrides", None)
    if not isinstance(overrides, dict):
        raise ConfigError(
            f"overrides must be a dict {{layer pattern: {{field: value}}}}, got {overrides!r} "
            f"({name}.overrides)", config=name, field="overrides")
    normal = {}
    for pattern, changes in overrides.items():
        if legacy is not None and not isinstance(changes, dict):
            changes = {legacy: changes}
        if not isinstance(pattern, str) or not pattern or not isinstance(changes, dict):
            raise ConfigError(
                f"overrides must map a layer pattern (str) to {{field: value}}, got "
                f"{pattern!r}: {changes!r} ({name}.overrides)", config=name, field="overrides")
        unknown = sorted(set(changes) - set(allowed))
        if unknown:
            raise ConfigError(
                f"overrides[{pattern!r}] sets {unknown}; a per-layer override may set "
                f"{list(allowed)} ({name}.overrides)", config=name, field="overrides")
        try:
            dataclasses.replace(config, overrides={}, **changes)
        except ConfigError as e:
            raise ConfigError(f"overrides[{pattern!r}]: {e}", config=name,
                              field="overrides") from None
        normal[pattern] = dict(changes)
    config.overrides = normal


def layer_config(config: Config, name: str, module: nn.Module) -> Config:
    """The config of the layer called ``name``: every matching override applied in order
    (``config`` itself when none matches or the config has no ``overrides`` field)."""
    from slimkit.core.selection import matches

    overrides = getattr(config, "overrides", None) or {}
    changes: dict = {}
    for pattern, fields in overrides.items():
        if matches(name, module, pattern):
            changes.update(fields)
    return dataclasses.replace(config, overrides={}, **changes) if changes else config


def split_layers(model: nn.Module, config: Config, layers: Layers) -> list[tuple[Config, Layers]]:
    """``layers`` grouped by their per-layer config, in first-seen order:
    ``[(config_of_the_group, its layers), ...]``; one group when no override matches."""
    groups: list[tuple[Config, Layers]] = []
    for mname, tname in layers:
        cfg = layer_config(config, mname, get_module(model, mname))
        for existing, members in groups:
            if existing == cfg:
                members.append((mname, tname))
                break
        else:
            groups.append((cfg, [(mname, tname)]))
    return groups


def with_overrides(config: Config, overrides: dict) -> Config:
    """A copy of ``config`` whose overrides are ``overrides`` (validated by the config)."""
    if not any(f.name == "overrides" for f in dataclasses.fields(config)):
        raise ValueError(
            f"{type(config).__name__} has no overrides field: per-layer settings need one "
            "(see slimkit.core.overrides)")
    return dataclasses.replace(config, overrides=overrides)
