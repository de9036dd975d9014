"""What the training callbacks schedule: the prepared model inside the framework's module.

Shared by the Lightning and Hugging Face callbacks (it imports neither framework).

Example:
    >>> target = find_prepared(pl_module, "model", "SlimkitCallback")
    >>> scheduler = make_scheduler(target, "SlimkitCallback")
"""

from __future__ import annotations

import torch.nn as nn

from slimkit.integrations.distributed import DistributedScheduler


def find_prepared(owner_module: nn.Module, model_attr: str | None, owner: str) -> nn.Module:
    """The module to schedule: ``owner_module.<model_attr>`` (dotted) or ``owner_module`` itself."""
    if model_attr is None:
        return owner_module
    target = owner_module
    for part in model_attr.split("."):
        if not hasattr(target, part):
            children = ", ".join(n for n, _ in owner_module.named_children()) or "none"
            raise ValueError(
                f"{type(owner_module).__name__} has no attribute {model_attr!r} "
                f"({owner}.model_attr); its submodules: {children}"
            )
        target = getattr(target, part)
    if not isinstance(target, nn.Module):
        raise ValueError(
            f"{type(owner_module).__name__}.{model_attr} is a {type(target).__name__}, not an "
            f"nn.Module ({owner}.model_attr)"
        )
    return target


def make_scheduler(target: nn.Module, owner: str) -> DistributedScheduler:
    """A :class:`DistributedScheduler` for ``target``, or an error naming the callback."""
    try:
        return DistributedScheduler(target)
    except ValueError:
        raise ValueError(
            f"{owner} found no slimkit technique to step in {type(target).__name__}: prepare the "
            "model (sk.prune / sk.cluster / sk.quantize(..., sk.QATConfig())) before training"
        ) from None
