"""Griffe extension for the docs site: make slimkit's docstrings render as intended.

Two habits of the code base do not match what the Google-style parser of mkdocstrings
expects, and would show up garbled in the API reference:

- ``Example:`` sections (the style guide's name): the parser only knows ``Examples:``, so
  ``Example:`` became a note whose ``>>>`` lines rendered as nested quotes. The header is
  renamed, so the lines render as a Python console block. Likewise ``Fields:`` (a config's
  fields) becomes ``Attributes:``, rendered as a table.
- reStructuredText roles (``:func:`prune```) would appear verbatim; they become inline code
  (``:class:`~slimkit.core.Config``` -> ```Config```).

Both are rewritten when griffe loads the package; the source docstrings stay as they are.
Used by ``mkdocs.yml``.

Example:
    >>> to_markdown("See :func:`~slimkit.prune`.\\n\\nExample:\\n    >>> 1 + 1")
    'See `prune`.\\n\\nExamples:\\n    >>> 1 + 1'
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")
_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.M)
_FIELDS = re.compile(r"^(\s*)Fields:[ \t]*$", re.M)


def _code(match: re.Match) -> str:
    tilde, target = match.groups()
    # `~a.b.c` shows only the last component, as Sphinx does.
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def to_markdown(text: str) -> str:
    """Rewrite the roles and the ``Example:`` / ``Fields:`` headers of one docstring."""
    text = _EXAMPLE.sub(r"\1Examples:", _ROLE.sub(_code, text))
    return _FIELDS.sub(r"\1Attributes:", text)


class MarkdownDocstrings(griffe.Extension):
    """Apply :func:`to_markdown` to every docstring of the loaded package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        seen: set[int] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = to_markdown(obj.docstring.value)
            stack.extend(m for m in obj.members.values() if not m.is_alias)
