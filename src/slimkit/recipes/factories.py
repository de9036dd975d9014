"""``module:callable`` references: how a recipe names the user's own code.

``"mypkg.models:make_model"`` imports ``mypkg.models`` and takes its attribute
``make_model`` (dots after the colon walk attributes: ``"mypkg.zoo:Nets.small"``).

Example:
    >>> make = resolve_factory("torch.nn:Identity")
    >>> make()
    Identity()
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

_FORM = "'module.path:callable', e.g. 'mypkg.models:make_model'"


def resolve_factory(ref: str) -> Callable:
    """Import ``ref`` and return the callable it names (``ValueError`` if it cannot)."""
    if not isinstance(ref, str) or ref.count(":") != 1 or not all(ref.split(":")):
        raise ValueError(f"must be {_FORM}, got {ref!r}")
    module_name, attr_path = ref.split(":")
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:  # any import-time failure of user code is a bad recipe
        raise ValueError(
            f"cannot import module {module_name!r} of {ref!r} ({type(e).__name__}: {e}); "
            "is it installed or on PYTHONPATH?"
        ) from None
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{ref!r}: {type(obj).__name__} {getattr(obj, '__name__', '')!r} "
                             f"has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{ref!r} is a {type(obj).__name__}, not a callable")
    return obj


def check_factory(ref: str) -> str | None:
    """The problem with ``ref`` as a message, or None when it resolves to a callable."""
    try:
        resolve_factory(ref)
    except ValueError as e:
        return str(e)
    return None
