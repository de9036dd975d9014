"""Core: configs, the technique protocol and registry, the state protocol and stages, layer
selection, parametrizations, the family verbs, scheduler, save/load."""

from slimkit.core.config import Config, ConfigError
from slimkit.core.parametrize import SlimParametrization, strip
from slimkit.core.records import records
from slimkit.core.registry import apply, get_technique, register, register_technique, techniques
from slimkit.core.scheduler import Scheduler
from slimkit.core.selection import register_weights, select_weights
from slimkit.core.serialization import load, save
from slimkit.core.stages import register_stage
from slimkit.core.state import SlimState
from slimkit.core.technique import Technique
from slimkit.core.verbs import calibrate, cluster, prune, quantize

__all__ = [
    "Config",
    "ConfigError",
    "Scheduler",
    "SlimParametrization",
    "SlimState",
    "Technique",
    "apply",
    "calibrate",
    "cluster",
    "get_technique",
    "load",
    "prune",
    "quantize",
    "records",
    "register",
    "register_stage",
    "register_technique",
    "register_weights",
    "save",
    "select_weights",
    "strip",
    "techniques",
]
