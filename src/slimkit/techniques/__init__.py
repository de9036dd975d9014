"""Every technique in its own folder: ``slimkit.techniques.<name>``.

A technique package owns all of its knowledge (config, parametrizations, export hooks, CLI
commands, conformance entries) and talks to the rest of slimkit only through
:mod:`slimkit.authoring`. Built-in techniques are registered through the same
``slimkit.techniques`` entry-point group third-party packages use.

``sk.techniques()`` (the registry listing, a fixed public name) and this package share the
name ``slimkit.techniques``: importing a sub-package binds the package on ``slimkit``, so the
package itself is made callable and returns the listing, and both readings stay true.

Example:
    >>> import slimkit as sk
    >>> [t.name for t in sk.techniques()][:2]
    ['channel-pruning', 'magnitude-pruning']
"""

import sys
import types


class _TechniquesPackage(types.ModuleType):
    """The package of technique folders; calling it lists the registered techniques."""

    def __call__(self):
        from slimkit.core.registry import techniques

        return techniques()


sys.modules[__name__].__class__ = _TechniquesPackage
