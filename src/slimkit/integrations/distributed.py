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

from slimkit.core.parametrize import slim_parametrizations
from slimkit.core.scheduler import Scheduler

_OBSERVER_BUFFERS = ("lo", "hi", "calibrated", "frozen")


def is_distributed(group=None) -> bool:
    """True inside an initialised process group with more than one rank."""
    return (
        dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1
    )


def _activation_quantizers(model: nn.Module) -> list[nn.Module]:
    from slimkit.quantization.activation import ActivationQuantizer

    # model.modules() visits in registration order, the same on every rank of one model.
    return [m for m in model.modules() if isinstance(m, ActivationQuantizer)]


@torch.no_grad()
def sync_observers(model: nn.Module, group=None) -> None:
    """All-reduce every activation observer's range: ``lo`` = min, ``hi`` = max over ranks.

    Call it on every rank after the forward passes whose ranges should count, before they
    are used again: after each training step of a QAT model (:class:`DistributedScheduler`
    does), and after ``sk.calibrate`` on per-rank calibration shards. A rank whose observer
    has not seen data yet does not pull the range towards its zeros. ``calibrated`` and
    ``frozen`` become true everywhere if they are on any rank. A no-op outside a
    multi-process group or on a model without observers.

    For the ``percentile`` and ``mse`` observers the result is the widest of the per-rank
    ranges (their clipping needs the values themselves, which are not exchanged).

    Example:
        >>> sk.calibrate(model, my_shard); sync_observers(model)
    """
    quantizers = _activation_quantizers(model)
    if not quantizers or not is_distributed(group):
        return
    calibrated = torch.stack([q.calibrated for q in quantizers])
    lo = torch.stack([q.lo.float() for q in quantizers])
    hi = torch.stack([q.hi.float() for q in quantizers])
    inf = torch.full_like(lo, float("inf"))
    # One collective: min over [lo, -hi, -frozen]; uncalibrated entries send +inf so they
    # never win the minimum.
    frozen = torch.stack([q.frozen for q in quantizers]).float()
    packed = torch.cat([torch.where(calibrated, lo, inf), torch.where(calibrated, -hi, inf),
                        -frozen])
    dist.all_reduce(packed, op=dist.ReduceOp.MIN, group=group)
    n = len(quantizers)
    lo_all, neg_hi_all, neg_frozen = packed[:n], packed[n:2 * n], packed[2 * n:]
    for i, q in enumerate(quantizers):
        if torch.isinf(lo_all[i]):  # no rank has a range yet
            continue
        q.lo.fill_(lo_all[i])
        q.hi.fill_(-neg_hi_all[i])
        q.calibrated.fill_(True)
        if neg_frozen[i] < 0:
            q.frozen.fill_(True)


def slimkit_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of slimkit's state in ``model``, by state_dict-style name.

    Masks, step counts, centroids, labels, observer ranges: the buffers and parameters of
    slimkit's parametrizations and activation quantizers (not the weights themselves).
    A tensor shared by tied weights appears once.
    """
    from slimkit.quantization.activation import ActivationQuantizer

    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    owners = []
    for mname, tname, index, p in slim_parametrizations(model):
        prefix = f"{mname}." if mname else ""
        owners.append((f"{prefix}parametrizations.{tname}.{index}", p))
    owners += [(n, m) for n, m in model.named_modules() if isinstance(m, ActivationQuantizer)]
    for owner, module in owners:
        if id(module) in seen:
            continue
        seen.add(id(module))
        for name, t in [*module.named_buffers(recurse=False),
                        *module.named_parameters(recurse=False)]:
            out[f"{owner}.{name}"] = t
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

    Today: the weights under a ``ClusterSnap`` without ``refresh_every`` (the output uses
    only the centroids). DDP's default reducer waits for a gradient of every parameter and
    fails on the second step ("Expected to have finished reduction in the prior
    iteration..."): when this list is not empty, wrap with
    ``DDP(model, static_graph=True)`` (cheapest) or ``find_unused_parameters=True``.

    Example:
        >>> sk.cluster(model, sk.ClusteringConfig(16))
        >>> unused_parameters(model)
        ['conv1.parametrizations.weight.original', ...]
    """
    from slimkit.clustering.snap import ClusterSnap

    names = []
    for mname, tname, _index, p in slim_parametrizations(model):
        if isinstance(p, ClusterSnap) and not p.config.refresh_every:
            prefix = f"{mname}." if mname else ""
            module = model.get_submodule(mname) if mname else model
            original = module.parametrizations[tname].original
            name = f"{prefix}parametrizations.{tname}.original"
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
        # Only QAT observers in training mode move during training; once all are frozen (or
        # there are none) the collective is skipped. The flags agree on every rank: they were
        # reduced by the last sync and are set by the same step counts.
        if any(q.qat and q.training and not bool(q.frozen)
               for q in _activation_quantizers(self.model)):
            sync_observers(self.model, self.group)
        super().step()
