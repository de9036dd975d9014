"""Core: configs, technique registry, layer selection, parametrizations, scheduler, save/load."""

from slimkit.core.config import Config
from slimkit.core.parametrize import SlimParametrization, strip
from slimkit.core.records import records
from slimkit.core.registry import Technique, apply, get_technique, register_technique, techniques
from slimkit.core.scheduler import Scheduler
from slimkit.core.selection import register_weights, select_weights
from slimkit.core.serialization import load, save

__all__ = [
    "Config",
    "Scheduler",
    "SlimParametrization",
    "Technique",
    "apply",
    "get_technique",
    "load",
    "records",
    "register_technique",
    "register_weights",
    "save",
    "select_weights",
    "strip",
    "techniques",
]
