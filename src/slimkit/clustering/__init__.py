"""Deprecated import path: ``slimkit.clustering`` moved to ``slimkit.techniques.clustering``.

Kept for one release (removed in 0.3): the names and sub-modules are the new ones, so
``isinstance`` checks and configs agree whichever path imported them.
"""

import importlib as _importlib
import sys as _sys
import warnings as _warnings

from slimkit.techniques.clustering import *  # noqa: F401,F403

_warnings.warn("slimkit.clustering moved to slimkit.techniques.clustering; the old path is removed in 0.3",
               DeprecationWarning, stacklevel=2)

_MOVED = {'api': 'slimkit.techniques.clustering.api', 'codebook': 'slimkit.techniques.clustering.codebook', 'compact': 'slimkit.storage.codebook', 'config': 'slimkit.techniques.clustering.config', 'kmeans': 'slimkit.techniques.clustering.kmeans', 'snap': 'slimkit.techniques.clustering.snap'}
for _name, _target in _MOVED.items():
    _sys.modules[f"{__name__}.{_name}"] = _importlib.import_module(_target)
