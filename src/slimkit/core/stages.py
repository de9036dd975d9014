"""Stages: the places of a weight's parametrization stack, as an open registry.

A weight's parametrizations run in stage order (lowest first), whatever order techniques
are applied in, so each later stage sees what the earlier ones produced. Techniques register
the stages they use; a contributed technique can add its own between or after the others.
Export hooks run in the same order.

Example:
    >>> register_stage("noise", 250)           # between the cluster (200) and quant (300) stages
    >>> sorted(stages(), key=stage_order)
    ['mask', 'cluster', 'noise', 'quant']
"""

from __future__ import annotations

_STAGES: dict[str, float] = {}


def register_stage(name: str, order: float) -> str:
    """Declare stage ``name`` at position ``order``; returns ``name``.

    Registering the same name at the same order again is a no-op (every import of a technique
    package does it); another order, or an order another stage holds, is an error.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a stage name must be a non-empty string, got {name!r}")
    if not isinstance(order, (int, float)) or isinstance(order, bool):
        raise TypeError(f"a stage order must be a number, got {order!r} (stage {name!r})")
    if name in _STAGES:
        if _STAGES[name] != order:
            raise ValueError(
                f"stage {name!r} is already registered at order {_STAGES[name]}, not {order}"
            )
        return name
    taken = [s for s, o in _STAGES.items() if o == order]
    if taken:
        raise ValueError(f"order {order} is taken by stage {taken[0]!r}; pick another for {name!r}")
    _STAGES[name] = order
    return name


def stage_order(name: str) -> float:
    """The order of stage ``name``; ``ValueError`` listing the known stages if unknown."""
    try:
        return _STAGES[name]
    except KeyError:
        known = ", ".join(f"{s} ({o})" for s, o in sorted(_STAGES.items(), key=lambda x: x[1]))
        raise ValueError(
            f"unknown stage {name!r}; registered stages: {known or 'none'} "
            "(a technique declares its own with slimkit.authoring.register_stage)"
        ) from None


def stages() -> dict[str, float]:
    """Every registered stage and its order."""
    return dict(_STAGES)
