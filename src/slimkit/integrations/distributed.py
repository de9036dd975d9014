"""Keep slimkit's state identical on every rank of a ``torch.distributed`` job (DDP, torchrun).

What DistributedDataParallel already guarantees, and what it does not:

- At construction DDP broadcasts parameters and buffers from rank 0, and it all-reduces
  gradients, so every rank's optimizer makes the same update: weights and centroids (they
  are parameters) stay identical.
- Masks, cluster labels and step counts change only in ``Scheduler.step()``, computed from
  those identical weights by deterministic code (stable sorts), so they stay identical as long
  as every rank calls ``step()`` equally often.
- Activation observers (static PTQ calibration, QAT) update their ranges inside the forward
  pass, from each rank's own batch: the ranks diverge. With ``forward_sync_buffers=True``
  (formerly ``broadcast_buffers``, the default) DDP overwrites every buffer with rank 0's copy
  at the start of the next forward, so the other ranks' data never reach the ranges, and
  after the last step (no forward follows) each rank keeps its own. With
  ``forward_sync_buffers=False`` they drift apart for good.

:func:`sync_observers` fixes the observers: an all-reduce takes the minimum of the ``lo``
buffers and the maximum of the ``hi`` buffers. For the ``minmax`` and ``moving_average``
observers this is exactly the range a single process would compute from the union of the
ranks' values, because each update is monotone in the batch extreme:
``min_k(lo + c * (lo_k - lo)) = lo + c * (min_k lo_k - lo)``. :class:`DistributedScheduler`
calls it before every step; the Lightning and Hugging Face callbacks do so automatically.
:func:`sync_slimkit_state` also broadcasts all other slimkit state from one rank, for the
moments when ranks may have prepared or calibrated separately.

Example:
    >>> dist.init_process_group("gloo"); model = sk.prune(DigitsCNN(), cfg)
    >>> ddp = DDP(model); scheduler = DistributedScheduler(model)
    >>> for x, y in shard:
    ...     loss_fn(ddp(x), y).backward(); opt.step(); opt.zero_grad(); scheduler.step()
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist
import torch.nn as nn

from slimkit.core.scheduler import Scheduler
from slimkit.core.state import SYNC_RULES, slim_states, unique_states


def is_distributed(group=None) -> bool:
    """True inside an initialised process group with more than one rank."""
    return (
        dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1
    )


def _synced(model: nn.Module) -> list:
    # unique_states visits in registration order, the same on every rank of one model.
    return [site.state for site in unique_states(model) if site.state.sync_rules]


@torch.no_grad()
def sync_forward_state(model: nn.Module, group=None) -> None:
    """All-reduce every buffer that a forward pass changes, as its state object declares.

    Each state object's ``sync_rules`` maps a buffer to ``"min"``, ``"max"`` or ``"any"``
    (:class:`slimkit.core.state.SlimState`); with ``sync_valid`` (a bool buffer) a rank that
    has no values yet (an observer that saw no data) does not take part in the minimum or
    maximum. One collective for the whole model. A no-op outside a multi-process group or on a
    model whose techniques declare nothing to sync.

    For the built-in activation observers this is :func:`sync_observers`: ``lo`` = min,
    ``hi`` = max over ranks, ``calibrated`` and ``frozen`` true if true on any rank.

    Example:
        >>> sk.calibrate(model, my_shard); sync_forward_state(model)
    """
    states = _synced(model)
    if not states or not is_distributed(group):
        return
    parts, plan = [], []
    for state in states:
        valid = getattr(state, state.sync_valid) if state.sync_valid else None
        for name, rule in state.sync_rules.items():
            if rule not in SYNC_RULES:
                raise ValueError(
                    f"{type(state).__name__}.sync_rules[{name!r}] = {rule!r}; accepted: "
                    f"{', '.join(SYNC_RULES)}"
                )
            t = getattr(state, name)
            flat = t.detach().reshape(-1).to(torch.float64)
            if rule == "any":
                packed = -flat.ne(0).to(torch.float64)  # min over -flag: -1 if any rank is set
            else:
                sign = 1.0 if rule == "min" else -1.0
                packed = sign * flat
                if valid is not None and name != state.sync_valid and not bool(valid.all()):
                    packed = torch.full_like(packed, float("inf"))  # no say in the extreme
            parts.append(packed)
            plan.append((state, name, rule, packed.numel()))
    packed = torch.cat(parts)
    dist.all_reduce(packed, op=dist.ReduceOp.MIN, group=group)
    offset = 0
    reduced: dict = {}
    for state, name, rule, n in plan:
        reduced[(id(state), name)] = (rule, packed[offset:offset + n])
        offset += n
    for state in states:
        if state.sync_valid and not bool((-reduced[(id(state), state.sync_valid)][1]).all()):
            continue  # no rank has values yet
        for name, rule in state.sync_rules.items():
            rule, values = reduced[(id(state), name)]
            t = getattr(state, name)
            if rule == "any":
                out = values < 0
            else:
                if torch.isinf(values).any():
                    continue
                out = values if rule == "min" else -values
            t.copy_(out.reshape(t.shape).to(t.dtype))


def sync_observers(model: nn.Module, group=None) -> None:
    """All-reduce every activation observer's range (``lo`` = min, ``hi`` = max over ranks).

    The name this step had before the state protocol: it is :func:`sync_forward_state`, which
    also syncs the forward-pass state of any contributed technique. Call it on every rank
    after the forward passes whose ranges should count: after each training step of a QAT
    model (:class:`DistributedScheduler` does), and after ``sk.calibrate`` on per-rank
    calibration shards.

    For the ``percentile`` and ``mse`` observers the result is the widest of the per-rank
    ranges (their clipping needs the values themselves, which are not exchanged).

    Example:
        >>> sk.calibrate(model, my_shard); sync_observers(model)
    """
    sync_forward_state(model, group)


def slimkit_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of slimkit's state in ``model``, by state_dict-style name.

    The buffers and parameters of every state object (:mod:`slimkit.core.state`):
    parametrizations and stateful modules such as activation quantizers (masks, step counts,
    centroids, labels, observer ranges), not the weights themselves. A tensor shared by tied
    weights appears once.
    """
    out: dict[str, torch.Tensor] = {}
    for site in unique_states(model):
        module = site.state
        for name, t in [*module.named_buffers(recurse=False),
                        *module.named_parameters(recurse=False)]:
            out[f"{site.name}.{name}"] = t
    return out


@torch.no_grad()
def broadcast_slimkit_state(model: nn.Module, src: int = 0, group=None) -> None:
    """Copy rank ``src``'s slimkit state (:func:`slimkit_tensors`) to every other rank.

    Use it when ranks may hold different masks, labels or step counts: each rank prepared or
    calibrated the model itself after the DDP wrapper was built, or a checkpoint was loaded
    on one rank only. Coalesced by dtype: one broadcast per dtype.
    """
    if not is_distributed(group):
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in slimkit_tensors(model).values():
        by_dtype.setdefault(t.dtype, []).append(t)
    for dtype in sorted(by_dtype, key=str):  # the same order on every rank
        tensors = by_dtype[dtype]
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        if dtype == torch.bool:  # gloo does not broadcast bool tensors
            flat = flat.to(torch.uint8)
        dist.broadcast(flat, src=src, group=group)
        offset = 0
        for t in tensors:
            # copy_ bumps the version counter, which ClusterSnap uses to rebuild its index.
            t.copy_(flat[offset:offset + t.numel()].view(t.shape).to(dtype))
            offset += t.numel()


def sync_slimkit_state(model: nn.Module, src: int = 0, group=None) -> None:
    """Make every rank's slimkit state identical: observers reduced, the rest from ``src``.

    :func:`sync_observers` first (so the ranges cover every rank's data), then
    :func:`broadcast_slimkit_state`. Call it on every rank after preparing or calibrating
    each rank separately, and before saving or exporting from one rank if you trained with
    a plain ``sk.Scheduler``. A no-op outside a multi-process group.

    Example:
        >>> sk.quantize(model, sk.QuantizationConfig(), calibration=my_shard)
        >>> sync_slimkit_state(model)      # every rank: ranges of all shards
    """
    sync_observers(model, group)
    broadcast_slimkit_state(model, src, group)


def unsynced_tensors(model: nn.Module, everything: bool = False, group=None) -> list[str]:
    """Names of the tensors whose bytes differ between ranks (empty when all agree).

    Checks slimkit's state (:func:`slimkit_tensors`), or with ``everything=True`` every
    parameter and buffer of ``model``. Compares SHA-1 digests gathered from all ranks, so it
    is exact and sends a few bytes per tensor. Call it on every rank.

    Example:
        >>> assert not unsynced_tensors(model, everything=True)
    """
    if not is_distributed(group):
        return []
    if everything:
        tensors = dict(model.named_parameters())
        tensors.update(model.named_buffers())
    else:
        tensors = slimkit_tensors(model)
    mine = {n: hashlib.sha1(_bytes(t)).hexdigest()
            for n, t in tensors.items()}
    gathered: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, mine, group=group)
    names = set().union(*(g.keys() for g in gathered))
    return sorted(n for n in names if len({g.get(n) for g in gathered}) > 1)


def unused_parameters(model: nn.Module) -> list[str]:
    """Parameters that require grad but that no gradient can reach, by slimkit's design.

    The weights under a parametrization that declares ``original_unused()`` (a
    ``ClusterSnap`` without ``refresh_every``: the output uses only the centroids). DDP's
    default reducer waits for a gradient of every parameter and fails on the second step
    ("Expected to have finished reduction in the prior iteration..."): when this list is not
    empty, wrap with ``DDP(model, static_graph=True)`` (cheapest) or
    ``find_unused_parameters=True``.

    Example:
        >>> sk.cluster(model, sk.ClusteringConfig(16))
        >>> unused_parameters(model)
        ['conv1.parametrizations.weight.original', ...]
    """
    names = []
    for site in slim_states(model):
        if site.tensor_name is None or not site.state.original_unused():
            continue
        prefix = f"{site.module_name}." if site.module_name else ""
        module = model.get_submodule(site.module_name) if site.module_name else model
        original = module.parametrizations[site.tensor_name].original
        name = f"{prefix}parametrizations.{site.tensor_name}.original"
        if original.requires_grad and name not in names:
            names.append(name)
    return names


def _bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


class DistributedScheduler(Scheduler):
    """``sk.Scheduler`` for DDP: reduces the observer ranges over all ranks, then steps.

    Everything else the scheduler changes (step counts, masks, cluster labels) is computed
    from weights that DDP keeps identical, so it needs no communication. Outside a
    multi-process group it is a plain ``sk.Scheduler``. Give it the prepared model (or the
    DDP wrapper) and call ``step()`` on every rank after ``optimizer.step()``.

    Example:
        >>> scheduler = DistributedScheduler(model)
        >>> opt.step(); scheduler.step()
    """

    def __init__(self, model: nn.Module, group=None):
        super().__init__(model)
        self.group = group

    def step(self) -> None:
        # Only state that moves in forward passes needs the collective (QAT observers in
        # training mode, until frozen). The flags agree on every rank: they were reduced by
        # the last sync and are set by the same step counts.
        if any(state.moves_in_forward() for state in _synced(self.model)):
            sync_forward_state(self.model, self.group)
        super().step()
