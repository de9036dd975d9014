"""Every technique in its own folder: ``slimkit.techniques.<name>``.

A technique package owns all of its knowledge (config, parametrizations, export hooks, CLI
commands, conformance entries) and talks to the rest of slimkit only through
:mod:`slimkit.authoring`. Built-in techniques are registered through the same
``slimkit.techniques`` entry-point group third-party packages use.
"""
