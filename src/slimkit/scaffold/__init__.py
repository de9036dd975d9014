"""The technique scaffold behind ``slimkit new-technique`` (templates ship as package data).

Example:
    >>> from slimkit.scaffold import new_technique
    >>> new_technique("my-noise", "contrib")     # package, conformance test, docs, RFCs
"""

from slimkit.scaffold.generate import check_name, new_technique, render, template_text

__all__ = ["check_name", "new_technique", "render", "template_text"]
