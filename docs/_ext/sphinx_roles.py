"""Griffe extension for the docs site: show Sphinx roles in docstrings as inline code.

Several docstrings cross-reference with reStructuredText roles (``:func:`prune```); the
site renders Markdown, where such a role would appear verbatim. This rewrites each role to
an inline code span (``:class:`~slimkit.core.Config``` -> ```Config```) when griffe loads
the package, so the source docstrings stay as they are. Used by ``mkdocs.yml``.

Example:
    >>> _replace_roles("See :func:`~slimkit.prune` and :class:`Config`.")
    'See `prune` and `Config`.'
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")


def _code(match: re.Match) -> str:
    tilde, target = match.groups()
    # `~a.b.c` shows only the last component, as Sphinx does.
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def _replace_roles(text: str) -> str:
    return _ROLE.sub(_code, text)


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring of the loaded package to inline code."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        seen: set[int] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = _replace_roles(obj.docstring.value)
            stack.extend(m for m in obj.members.values() if not m.is_alias)
