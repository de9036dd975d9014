"""Deprecated import path: ``slimkit.quantization`` moved to ``slimkit.techniques.quantization``.

Kept for one release (removed in 0.3): the names and sub-modules are the new ones, so
``isinstance`` checks and configs agree whichever path imported them.
"""

import importlib as _importlib
import sys as _sys
import warnings as _warnings

from slimkit.techniques.quantization import *  # noqa: F401,F403

_warnings.warn("slimkit.quantization moved to slimkit.techniques.quantization; the old path is removed in 0.3",
               DeprecationWarning, stacklevel=2)

_MOVED = {'activation': 'slimkit.techniques.quantization.activation', 'api': 'slimkit.techniques.quantization.api', 'calibrate': 'slimkit.techniques.quantization.calibrate', 'config': 'slimkit.techniques.quantization.config', 'export': 'slimkit.techniques.quantization.export', 'fake_quant': 'slimkit.techniques.quantization.fake_quant', 'graph': 'slimkit.techniques.quantization.graph', 'observers': 'slimkit.techniques.quantization.observers', 'prepare': 'slimkit.techniques.quantization.prepare'}
for _name, _target in _MOVED.items():
    _sys.modules[f"{__name__}.{_name}"] = _importlib.import_module(_target)
