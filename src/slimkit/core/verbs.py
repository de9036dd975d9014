"""The family verbs: ``sk.prune``, ``sk.cluster``, ``sk.quantize`` and ``sk.calibrate``.

Each verb accepts the config of any registered technique of its family (built-in or
contributed: a SparseGPT config is as welcome in ``sk.prune`` as magnitude pruning's), and
hands it to :func:`slimkit.apply`. ``sk.calibrate`` asks every applied technique that takes
data to calibrate on it.

Example:
    >>> sk.prune(model, sk.MagnitudePruningConfig(0.5), ignore=["classifier"])
    >>> sk.quantize(model, sk.QuantizationConfig(), calibration=x_train[:100])
"""

from __future__ import annotations

import torch.nn as nn

from slimkit.core.config import Config
from slimkit.core.records import records
from slimkit.core.registry import apply, get_technique, techniques


def _family_verb(model: nn.Module, config: Config, family: str, verb: str, *,
                 targets=None, ignore=None, calibration=None, **options) -> nn.Module:
    accepted = sorted(t.config_cls.__name__ for t in techniques() if t.family == family)
    tech = get_technique(config) if isinstance(config, Config) and any(
        isinstance(config, t.config_cls) for t in techniques()) else None
    if tech is None or tech.family != family:
        raise TypeError(
            f"sk.{verb} takes a {' or '.join(accepted)} (the {family} family), got "
            f"{type(config).__name__}; use sk.apply for any technique"
        )
    if calibration is None and tech.needs_calibration(config) and not _applied(model, tech):
        raise ValueError(tech.missing_calibration(config, verb))
    if _applied(model, tech) and calibration is not None:
        # A second call on a prepared model with data only calibrates (sk.apply first, then
        # sk.quantize(..., calibration=...)); preparing twice is refused by the stages.
        if targets is not None or ignore is not None:
            raise ValueError(
                f"this model already has {tech.name} applied; targets/ignore apply only when "
                "preparing (use a fresh model to change the layer selection)"
            )
        tech.calibrate(model, config, calibration, **options)
        return model
    return apply(model, config, targets, ignore, calibration=calibration, **options)


def _applied(model: nn.Module, tech) -> bool:
    return any(r["technique"] == tech.name and not r.get("stripped") for r in records(model))


def prune(model: nn.Module, config: Config, targets=None, ignore=None, *, calibration=None,
          **options) -> nn.Module:
    """Prepare ``model`` in place with a pruning config; returns ``model``.

    ``targets`` / ``ignore`` select layers by type name, glob or ``re:`` regex (see
    :func:`slimkit.core.selection.select_weights`); one-shot methods that need data take
    ``calibration=``. Masks follow the config's schedule as :class:`slimkit.Scheduler`
    steps; ``sk.strip`` bakes them.

    Example:
        >>> sk.prune(model, sk.MagnitudePruningConfig(sk.PolynomialDecay(0.0, 0.8, 0, 500)))
    """
    return _family_verb(model, config, "pruning", "prune", targets=targets, ignore=ignore,
                        calibration=calibration, **options)


def cluster(model: nn.Module, config: Config, targets=None, ignore=None, **options) -> nn.Module:
    """Prepare ``model`` in place with a clustering config; returns ``model``.

    Example:
        >>> sk.cluster(model, sk.ClusteringConfig(clusters=16))
    """
    return _family_verb(model, config, "clustering", "cluster", targets=targets, ignore=ignore,
                        **options)


def quantize(model: nn.Module, config: Config, calibration=None, targets=None, ignore=None,
             **options) -> nn.Module:
    """Quantize ``model`` in place as ``config`` says; returns ``model``.

    - ``QuantizationConfig(mode="static")`` needs ``calibration`` (a tensor of inputs or a
      DataLoader; ~100 samples are enough): activation ranges are observed, then frozen.
    - ``mode="dynamic"`` / ``"weight_only"`` need no data.
    - ``QATConfig``: fake-quant is attached; train with your loop and step ``sk.Scheduler``.
      ``calibration`` is optional and starts the activation ranges from data.
    - any other quantization-family config (contributed techniques) as it declares.

    ``targets`` / ``ignore`` select layers (type names, globs, ``re:`` regexes). Calling it
    again on a model already prepared with ``sk.apply(model, config)`` only calibrates.
    Extra keywords (``batch_size``, ``progress``) reach the technique's calibration.

    Example:
        >>> sk.quantize(model, sk.QuantizationConfig(), calibration=x_train[:100])
    """
    return _family_verb(model, config, "quantization", "quantize", targets=targets,
                        ignore=ignore, calibration=calibration, **options)


def calibrate(model: nn.Module, data, **options) -> nn.Module:
    """Calibrate every applied technique that takes data on ``data``; returns ``model``.

    Example:
        >>> sk.apply(model, sk.QuantizationConfig()); sk.calibrate(model, x_train[:100])
    """
    done = False
    seen = set()
    for rec in records(model):
        tech = get_technique(rec["technique"])
        if tech.name in seen or rec.get("stripped"):
            continue
        seen.add(tech.name)
        config = Config.from_dict(rec["config"])
        if _takes_data(tech):
            tech.calibrate(model, config, data, **options)
            done = True
    if not done:
        raise ValueError(
            f"{type(model).__name__} has nothing to calibrate: no applied technique takes "
            "calibration data (e.g. QuantizationConfig(mode='static') or QATConfig; prepare "
            "it with sk.quantize or sk.apply first)"
        )
    return model


def _takes_data(tech) -> bool:
    from slimkit.core.technique import Technique

    return type(tech).calibrate is not Technique.calibrate
