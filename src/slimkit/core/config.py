"""Config base: validated dataclasses that round-trip to plain dicts with type and version.

Every technique's config (and every schedule) subclasses :class:`Config`. Subclasses are
registered by class name when they are defined, so ``Config.from_dict`` can rebuild any of
them, including user subclasses, as long as the defining module has been imported.

Example:
    >>> cfg = MagnitudePruningConfig(schedule=ConstantSparsity(0.5))
    >>> d = cfg.to_dict()          # {"_type": "MagnitudePruningConfig", "_version": 1, "_data": {...}}
    >>> Config.from_dict(d) == cfg
    True
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

_CONFIG_TYPES: dict[str, type[Config]] = {}


def config_type(name: str) -> type[Config]:
    """Return the registered config class called ``name`` (its class name)."""
    try:
        return _CONFIG_TYPES[name]
    except KeyError:
        known = ", ".join(sorted(_CONFIG_TYPES)) or "none"
        raise ValueError(
            f"unknown config type {name!r}; known types: {known} "
            "(import the module that defines a custom config before loading it)"
        ) from None


class ConfigError(ValueError):
    """A config field has a value the config does not accept.

    ``config`` is the config class name, ``field`` the field: tools (recipe validation) read
    these instead of parsing the message.
    """

    def __init__(self, message: str, *, config: str, field: str):
        super().__init__(message)
        self.config, self.field = config, field


class Config:
    """Base of every slimkit config. Subclasses are ``@dataclass``es.

    Subclasses validate in ``__post_init__`` with :meth:`_require` so that every error names
    the config, the field, the value and what is accepted. ``version`` is bumped when a
    config changes shape; ``_migrate`` turns an older ``_data`` dict into the current one.
    """

    version: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _CONFIG_TYPES[cls.__name__] = cls

    # -- validation -------------------------------------------------------------------------
    def _require(self, ok: bool, field: str, accepted: str) -> None:
        """Raise ``ValueError`` naming ``field`` unless ``ok``."""
        if not ok:
            value = getattr(self, field, None)
            self._fail(field, f"{field} must be {accepted}, got {value!r}")

    def _fail(self, field: str, message: str) -> None:
        """Raise :class:`ConfigError` for ``field`` (the message gets ``(Config.field)``)."""
        raise ConfigError(f"{message} ({type(self).__name__}.{field})",
                          config=type(self).__name__, field=field)

    # -- serialization ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict ``{"_type", "_version", "_data"}``; nested configs nest."""
        data = {f.name: _encode(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"_type": type(self).__name__, "_version": self.version, "_data": data}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Rebuild a config from :meth:`to_dict` output (older versions are migrated)."""
        if not isinstance(d, dict) or "_type" not in d or "_data" not in d:
            raise ValueError(
                f"a config dict needs the keys '_type', '_version' and '_data', got {d!r}"
            )
        target = config_type(d["_type"])
        if cls is not Config and not issubclass(target, cls):
            raise ValueError(f"expected a {cls.__name__} dict, got type {d['_type']!r}")
        version = int(d.get("_version", 1))
        if version > target.version:
            raise ValueError(
                f"{d['_type']} version {version} is newer than this slimkit supports "
                f"({target.version}); upgrade slimkit"
            )
        data = target._migrate(dict(d["_data"]), version)
        names = {f.name for f in dataclasses.fields(target)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"unknown field(s) {unknown} for {target.__name__}; accepted: {sorted(names)}"
            )
        return target(**{k: _decode(v) for k, v in data.items()})

    @classmethod
    def _migrate(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """Turn ``data`` saved at ``version`` into the current shape (override when bumping)."""
        return data


def _encode(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple):
        return {"_tuple": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "_type" in value and "_data" in value:
            return Config.from_dict(value)
        if set(value) == {"_tuple"}:
            return tuple(_decode(v) for v in value["_tuple"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value
