"""Accuracy-aware compression: per-layer sensitivity and a target-driven search.

``sk.sensitivity`` measures what compressing one layer (or block) costs; ``sk.optimize``
finds the smallest or fastest per-layer setting of any registered techniques that declare
knobs (``Technique.knobs``), measured on the exported ONNX Runtime artifact.

Example:
    >>> res = sk.optimize(model, eval_fn, max_drop=0.005, example_inputs=x, calibration=x,
    ...                   techniques=[sk.MagnitudePruningConfig(0.5), sk.ClusteringConfig(16)])
    >>> res.write_report("optimize-report")
"""

from slimkit.search.optimizer import BudgetError, OptimizeResult, optimize
from slimkit.search.sensitivity_pass import SensitivityResult, sensitivity
from slimkit.search.space import SearchError, SearchSpace, apply_stages, plan_stages

__all__ = [
    "BudgetError",
    "OptimizeResult",
    "SearchError",
    "SearchSpace",
    "SensitivityResult",
    "apply_stages",
    "optimize",
    "plan_stages",
    "sensitivity",
]
