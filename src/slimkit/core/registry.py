"""The technique registry: name -> :class:`Technique`, open to third parties.

Techniques, built-in and contributed alike, are registered through the entry-point group
``slimkit.techniques``: the entry point names a :class:`Technique` instance (or a function
that registers one). slimkit's own techniques are entry points of the slimkit distribution,
so adding a technique never edits slimkit. :func:`register` registers an instance directly
(tests, notebooks); :func:`register_technique` is the older function form and builds a
:class:`FunctionTechnique`.

Example:
    >>> sk.register_technique("my-noise", MyNoiseConfig, prepare_my_noise, family="other")
    >>> [t.name for t in sk.techniques()]
    ['channel-pruning', 'magnitude-pruning', 'my-noise', ...]
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from importlib import metadata

import torch.nn as nn

from slimkit.core.config import Config
from slimkit.core.records import add_record
from slimkit.core.technique import FunctionTechnique, Layers, Technique

ENTRY_POINT_GROUP = "slimkit.techniques"

_TECHNIQUES: dict[str, Technique] = {}
_entry_points_loaded = False
_loading = False


def register(tech: Technique, *, replace: bool = False) -> Technique:
    """Register the technique object ``tech`` under ``tech.name``; returns it.

    Registering the same object (or one of the same class and config class) again is a
    no-op, so an entry point that is also imported directly does no harm.
    """
    if not isinstance(tech, Technique):
        raise TypeError(f"register takes a slimkit Technique instance, got {tech!r}")
    name = tech.name
    if not isinstance(name, str) or not name:
        raise ValueError(f"technique name must be a non-empty string, got {name!r}")
    cfg = tech.config_cls
    if not (isinstance(cfg, type) and issubclass(cfg, Config)):
        raise TypeError(f"config_cls must subclass slimkit.Config, got {cfg!r} (technique {name!r})")
    existing = _TECHNIQUES.get(name)
    if existing is not None and not replace and existing is not tech:
        if type(existing) is type(tech) and existing.config_cls is cfg:
            return existing
        raise ValueError(
            f"a technique named {name!r} is already registered by {existing.source}; "
            "pick another name or pass replace=True"
        )
    _TECHNIQUES[name] = tech
    return tech


def register_technique(
    name: str,
    config_cls: type[Config],
    prepare: Callable[[nn.Module, Config, Layers], None],
    *,
    select: Callable[..., Layers] | None = None,
    family: str = "other",
    description: str = "",
    source: str = "slimkit",
    pre_export: Callable | None = None,
    post_export: Callable | None = None,
    replace: bool = False,
    structural: bool = False,
    apply: Callable[..., nn.Module] | None = None,
    stage: str | None = None,
) -> Technique:
    """Register a technique made of functions (a thin shim over :func:`register`).

    ``prepare(model, config, layers)`` attaches it to the selected ``(module, tensor)`` pairs;
    ``select``, ``pre_export``, ``post_export`` and ``apply`` override the
    :class:`Technique` defaults of the same names.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"technique name must be a non-empty string, got {name!r}")
    if not (isinstance(config_cls, type) and issubclass(config_cls, Config)):
        raise TypeError(f"config_cls must subclass slimkit.Config, got {config_cls!r}")
    existing = _TECHNIQUES.get(name)
    if existing is not None and not replace and existing.config_cls is not config_cls:
        raise ValueError(
            f"a technique named {name!r} is already registered by {existing.source}; "
            "pick another name or pass replace=True"
        )
    tech = FunctionTechnique(name, config_cls, prepare, select=select, family=family,
                             description=description, source=source, pre_export=pre_export,
                             post_export=post_export, structural=structural, apply=apply,
                             stage=stage)
    return register(tech, replace=True)


def _load_entry_points() -> None:
    global _entry_points_loaded, _loading
    if _entry_points_loaded or _loading:
        return
    _loading = True
    try:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                obj = ep.load()
                if isinstance(obj, Technique):
                    if ep.dist is not None and ep.dist.name != "slimkit":
                        obj.source = ep.value
                    register(obj)
                elif callable(obj):
                    obj()
                else:
                    raise TypeError(f"expected a Technique or a function, got {type(obj).__name__}")
            except Exception as e:  # a broken plugin must not break slimkit
                warnings.warn(
                    f"slimkit: could not load technique entry point {ep.name!r} ({ep.value}): {e}",
                    stacklevel=2,
                )
        _entry_points_loaded = True
    finally:
        _loading = False


def reload_entry_points() -> None:
    """Scan the ``slimkit.techniques`` entry points again (after installing a plugin)."""
    global _entry_points_loaded
    metadata_cache = getattr(metadata, "_cache_clear", None)
    if callable(metadata_cache):  # pragma: no cover - not every Python has it
        metadata_cache()
    _entry_points_loaded = False
    _load_entry_points()


def techniques() -> list[Technique]:
    """Every registered technique, built-in and contributed, sorted by name."""
    _load_entry_points()
    return [_TECHNIQUES[k] for k in sorted(_TECHNIQUES)]


def get_technique(key: str | Config) -> Technique:
    """The technique registered under a name, or the one a config belongs to.

    A config resolves by its exact class first, then by the nearest base class in its
    method resolution order (a user subclass of ``QATConfig`` resolves to QAT, not to the
    post-training technique of ``QATConfig``'s own base).
    """
    _load_entry_points()
    if isinstance(key, str):
        if key in _TECHNIQUES:
            return _TECHNIQUES[key]
        raise ValueError(f"unknown technique {key!r}; registered: {', '.join(sorted(_TECHNIQUES))}")
    if not isinstance(key, Config):
        raise TypeError(f"expected a technique name or a slimkit Config, got {type(key).__name__}")
    by_class = {}
    for tech in _TECHNIQUES.values():
        by_class.setdefault(tech.config_cls, tech)
    for cls in type(key).__mro__:
        if cls in by_class:
            return by_class[cls]
    raise ValueError(
        f"no technique is registered for {type(key).__name__}; registered configs: "
        f"{', '.join(sorted(t.config_cls.__name__ for t in _TECHNIQUES.values()))}"
    )


def apply(model: nn.Module, config: Config, targets=None, ignore=None, *,
          example_inputs=None, calibration=None, **options) -> nn.Module:
    """Prepare ``model`` in place with the technique ``config`` belongs to; returns ``model``.

    The generic form of ``sk.prune`` / ``sk.cluster`` / ``sk.quantize``. The configuration and
    the exact layers are recorded on the model so ``sk.save`` / ``sk.load`` can replay them.
    ``example_inputs`` reach techniques that trace the model (channel pruning);
    ``calibration`` is handed to the technique's calibration after preparing.

    Example:
        >>> sk.apply(model, sk.MagnitudePruningConfig(0.5), ignore=["classifier"])
        >>> sk.Scheduler(model).step()
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    tech = get_technique(config)
    return tech.apply(model, config, targets=targets, ignore=ignore,
                      example_inputs=example_inputs, calibration=calibration, **options)


def prepare_layers(model: nn.Module, tech: Technique, config: Config, layers: Layers) -> nn.Module:
    """Run ``tech``'s ``prepare`` on explicit layers and record it (no selection, no data)."""
    tech.prepare(model, config, layers)
    add_record(model, tech.name, config, layers, structural=tech.structural)
    return model


def replay_record(model: nn.Module, record: dict) -> Technique:
    """Rebuild one saved record on a fresh model (used by ``sk.load`` and the packed format)."""
    tech = get_technique(record["technique"])
    config = Config.from_dict(record["config"])
    layers = [tuple(x) for x in record["layers"]]
    tech.replay(model, config, layers, record)
    recs = list(getattr(model, "_slimkit_records", []))
    recs.append({k: v for k, v in record.items()})
    object.__setattr__(model, "_slimkit_records", recs)
    return tech
