"""The technique registry: name -> config class + handler, open to third parties.

A technique is a config dataclass plus a ``prepare(model, config, layers)`` handler. Built-in
techniques register themselves on import; other packages register theirs through the
entry-point group ``slimkit.techniques`` (the entry point names a :class:`Technique` or a
function that calls :func:`register_technique`), so adding one never edits slimkit.

Example:
    >>> sk.register_technique("my-noise", MyNoiseConfig, prepare_my_noise, family="other")
    >>> [t.name for t in sk.techniques()]
    ['magnitude-pruning', 'my-noise']
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

import torch.nn as nn

from slimkit.core.config import Config
from slimkit.core.records import add_record
from slimkit.core.selection import select_weights

ENTRY_POINT_GROUP = "slimkit.techniques"

Layers = list[tuple[str, str]]


@dataclass(frozen=True)
class Technique:
    """A registered technique.

    ``prepare(model, config, layers)`` attaches the technique to the selected
    ``(module_name, tensor_name)`` pairs; ``select(model, config, targets, ignore)`` overrides
    the default weight selection when the technique covers other layers.

    Export hooks (see :class:`slimkit.export.ExportContext`): ``pre_export(model, ctx)`` runs
    on the deep copy before it is stripped (e.g. to turn fake-quant into explicit Q/DQ ops);
    ``post_export(onnx_model, ctx)`` rewrites the exported ``onnx.ModelProto`` before it is
    validated and written (e.g. int8 or index+codebook initializers).

    ``structural``: the technique changes the architecture itself (e.g. channel pruning
    reshapes modules); its record survives ``sk.strip`` so a stripped model still saves and
    loads into a fresh instance of the original class.

    ``apply(model, config, targets=, ignore=, example_inputs=)``: for a technique that is
    not a per-weight preparation (channel pruning traces the model), what ``sk.apply`` calls
    instead of selecting layers and running ``prepare``; it records itself.
    """

    name: str
    config_cls: type[Config]
    prepare: Callable[[nn.Module, Config, Layers], None]
    select: Callable[..., Layers] | None = None
    family: str = "other"
    description: str = ""
    source: str = "slimkit"
    pre_export: Callable | None = None
    post_export: Callable | None = None
    structural: bool = False
    apply: Callable[..., nn.Module] | None = None

    def __repr__(self) -> str:
        return f"Technique({self.name!r}, config={self.config_cls.__name__}, family={self.family!r})"


_TECHNIQUES: dict[str, Technique] = {}
_entry_points_loaded = False


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
) -> Technique:
    """Register a technique under ``name`` (see the module docstring)."""
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
    tech = Technique(name, config_cls, prepare, select, family, description, source,
                     pre_export, post_export, structural, apply)
    _TECHNIQUES[name] = tech
    return tech


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if isinstance(obj, Technique):
                register_technique(
                    obj.name, obj.config_cls, obj.prepare, select=obj.select, family=obj.family,
                    description=obj.description, source=ep.value, pre_export=obj.pre_export,
                    post_export=obj.post_export, structural=obj.structural, apply=obj.apply,
                )
            elif callable(obj):
                obj()
            else:
                raise TypeError(f"expected a Technique or a function, got {type(obj).__name__}")
        except Exception as e:  # a broken plugin must not break slimkit
            warnings.warn(
                f"slimkit: could not load technique entry point {ep.name!r} ({ep.value}): {e}",
                stacklevel=2,
            )


def techniques() -> list[Technique]:
    """Every registered technique, built-in and contributed, sorted by name."""
    _load_entry_points()
    return [_TECHNIQUES[k] for k in sorted(_TECHNIQUES)]


def get_technique(key: str | Config) -> Technique:
    """The technique registered under a name, or the one whose config class ``key`` is."""
    _load_entry_points()
    if isinstance(key, str):
        if key in _TECHNIQUES:
            return _TECHNIQUES[key]
        raise ValueError(f"unknown technique {key!r}; registered: {', '.join(sorted(_TECHNIQUES))}")
    for tech in _TECHNIQUES.values():
        if type(key) is tech.config_cls:
            return tech
    for tech in _TECHNIQUES.values():
        if isinstance(key, tech.config_cls):
            return tech
    raise ValueError(
        f"no technique is registered for {type(key).__name__}; registered configs: "
        f"{', '.join(sorted(t.config_cls.__name__ for t in _TECHNIQUES.values()))}"
    )


def apply(model: nn.Module, config: Config, targets=None, ignore=None, *,
          example_inputs=None) -> nn.Module:
    """Prepare ``model`` in place with the technique ``config`` belongs to; returns ``model``.

    The generic form of ``sk.prune`` / ``sk.cluster`` / ``sk.quantize``. The configuration and
    the exact layers are recorded on the model so ``sk.save`` / ``sk.load`` can replay them.
    ``example_inputs`` reach techniques that trace the model (channel pruning).

    Example:
        >>> sk.apply(model, sk.MagnitudePruningConfig(0.5), ignore=["classifier"])
        >>> sk.Scheduler(model).step()
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    tech = get_technique(config)
    if tech.apply is not None:
        return tech.apply(model, config, targets=targets, ignore=ignore,
                          example_inputs=example_inputs)
    if tech.select is not None:
        layers = tech.select(model, config, targets, ignore)
    else:
        layers = select_weights(model, targets, ignore, technique=tech.name)
    return prepare_layers(model, tech, config, layers)


def prepare_layers(model: nn.Module, tech: Technique, config: Config, layers: Layers) -> nn.Module:
    """Run ``tech``'s handler on explicit layers and record it (used by apply and load)."""
    tech.prepare(model, config, layers)
    add_record(model, tech.name, config, layers, structural=tech.structural)
    return model
