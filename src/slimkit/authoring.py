"""The technique author's API: everything a technique package imports from slimkit.

A technique (built-in or contributed from another distribution) subclasses
:class:`Technique`, keeps its state in :class:`SlimParametrization` / :class:`SlimState`
objects, registers the stage its parametrizations use, and is registered through the
``slimkit.techniques`` entry-point group (or :func:`register` at run time). Nothing else in
slimkit needs to know it: the scheduler, training statistics, distributed sync, save / load,
export, recipes, the conformance kit and the CLI all ask the protocol.

Example:
    >>> from slimkit.authoring import Technique, SlimParametrization, register, register_stage
    >>> NOISE = register_stage("noise", 250)           # between cluster (200) and quant (300)
    >>> class Noise(Technique):
    ...     name, config_cls, family, stage = "noise", NoiseConfig, "other", NOISE
    ...     def prepare(self, model, config, layers): ...
    >>> register(Noise())
"""

from slimkit.core.batch import batch_inputs, call_model, check_inputs, flatten_outputs
from slimkit.core.config import Config, ConfigError
from slimkit.core.overrides import check_overrides, layer_config, split_layers
from slimkit.core.parametrize import (
    SlimParametrization,
    expand_tied,
    get_module,
    input_of,
    raw_tensor,
    slim_parametrizations,
    strip,
)
from slimkit.core.parametrize import register as register_parametrization
from slimkit.core.records import add_record, group_id, records
from slimkit.core.registry import get_technique, register, register_technique, techniques
from slimkit.core.selection import matches, module_type, register_weights, select_weights
from slimkit.core.sequential import (
    LinearInputStats,
    capture_block_inputs,
    find_blocks,
    run_sequential,
)
from slimkit.core.stages import register_stage, stage_order, stages
from slimkit.core.state import Max, Min, Ratio, SlimState, Stat, StateSite, Sum, slim_states
from slimkit.core.technique import Technique
from slimkit.export.pipeline import ExportContext, deployable, finish, techniques_of
from slimkit.storage.intcodes import IntCodes, expand_scale, int_initializer

__all__ = [
    "Config",
    "ConfigError",
    "ExportContext",
    "IntCodes",
    "LinearInputStats",
    "Max",
    "Min",
    "Ratio",
    "SlimParametrization",
    "SlimState",
    "Stat",
    "StateSite",
    "Sum",
    "Technique",
    "add_record",
    "batch_inputs",
    "call_model",
    "capture_block_inputs",
    "check_inputs",
    "check_overrides",
    "deployable",
    "expand_scale",
    "expand_tied",
    "find_blocks",
    "finish",
    "flatten_outputs",
    "get_module",
    "get_technique",
    "group_id",
    "input_of",
    "layer_config",
    "int_initializer",
    "matches",
    "module_type",
    "raw_tensor",
    "records",
    "register",
    "register_parametrization",
    "register_stage",
    "register_technique",
    "register_weights",
    "run_sequential",
    "select_weights",
    "slim_parametrizations",
    "slim_states",
    "split_layers",
    "stage_order",
    "stages",
    "strip",
    "techniques",
    "techniques_of",
]
