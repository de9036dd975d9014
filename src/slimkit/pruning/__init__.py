"""Deprecated import path: ``slimkit.pruning`` moved to ``slimkit.techniques.pruning``, ``slimkit.techniques.channel_pruning``.

Kept for one release (removed in 0.3): the names and sub-modules are the new ones, so
``isinstance`` checks and configs agree whichever path imported them.
"""

import importlib as _importlib
import sys as _sys
import warnings as _warnings

from slimkit.techniques.channel_pruning import *  # noqa: F401,F403
from slimkit.techniques.pruning import *  # noqa: F401,F403

_warnings.warn("slimkit.pruning moved to slimkit.techniques.pruning and slimkit.techniques.channel_pruning; the old path is removed in 0.3",
               DeprecationWarning, stacklevel=2)

_MOVED = {'config': 'slimkit.techniques.pruning.config', 'magnitude': 'slimkit.techniques.pruning.magnitude', 'mask': 'slimkit.techniques.pruning.mask', 'nm': 'slimkit.techniques.pruning.nm', 'schedules': 'slimkit.techniques.pruning.schedules', 'channels': 'slimkit.techniques.channel_pruning.channels', 'latency': 'slimkit.techniques.channel_pruning.latency'}
for _name, _target in _MOVED.items():
    _sys.modules[f"{__name__}.{_name}"] = _importlib.import_module(_target)
