"""The conformance entries of every registered technique, gathered through the protocol.

Each technique declares its own rows (``Technique.conformance_entries``, in its folder); this
module only collects them, so the kit knows no technique by name. ``slimkit conformance``
runs these by default.

Example:
    >>> from slimkit.testing import run_conformance
    >>> run_conformance(registered_entries(), checks=["config", "json"])
"""

from __future__ import annotations

from slimkit.core.registry import techniques


def registered_entries(source: str | None = None) -> list:
    """Every registered technique's conformance entries (only ``source``'s when given:
    ``"slimkit"`` for the built-in techniques)."""
    out = []
    for tech in techniques():
        if source is None or tech.source == source:
            out.extend(tech.conformance_entries())
    return out


BUILTIN_ENTRIES = registered_entries("slimkit")
"""The entries of slimkit's own techniques (one row per technique and mode)."""
