"""``PruningMask``: the parametrization that applies a pruning mask to a weight.

The mask and the step count are buffers, so they live in the state_dict and a checkpoint
resumes exactly. Masked weights are exactly zero in the forward pass and receive zero
gradient. The mask only changes in :meth:`PruningMask.on_step`, on the schedule's update
steps.

Example:
    >>> p = PruningMask(torch.ones(4, 4), cfg)
    >>> p(torch.randn(4, 4))       # masked weight
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.core.parametrize import SlimParametrization, get_module, input_of
from slimkit.core.stages import register_stage
from slimkit.core.state import Max, Ratio
from slimkit.techniques.pruning.config import MagnitudePruningConfig


class PruningMask(SlimParametrization):
    stage = register_stage("mask", 100)

    def __init__(self, weight: torch.Tensor, config: MagnitudePruningConfig, group: str = ""):
        super().__init__(group)
        self.config = config
        # A bool mask: a quarter of a float one (a prepared BERT-base holds 1.25x the plain
        # model's tensors, not 2x). ``w * mask`` promotes it to the weight's dtype; on CPU
        # that costs more than a float multiply (see benchmarks/scale.py), which is small
        # next to the layer's own matmul. Checkpoints with float masks load into it.
        self.register_buffer("mask", torch.ones_like(weight, dtype=torch.bool))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask

    def before_strip(self, original: torch.Tensor) -> None:
        """Zero the stored weights under the mask, so baked zeros are +0.0, never -0.0
        (a negative weight times 0 is -0.0; mixed signed zeros cost compressed size)."""
        with torch.no_grad():
            original.masked_fill_(self.mask == 0, 0.0)

    def extra_repr(self) -> str:
        return f"sparsity={1.0 - self.mask.float().mean().item():.3f}, step={int(self.step)}"

    def stats(self) -> dict:
        zeros = int((self.mask == 0).sum())
        target = float(self.config.schedule.sparsity(int(self.step)))
        return {"sparsity": Ratio(zeros, self.mask.numel()), "target_sparsity": Max(target)}

    def layer_stats(self) -> dict:
        return {"sparsity": int((self.mask == 0).sum()) / max(self.mask.numel(), 1)}

    @classmethod
    def on_step(cls, model: nn.Module, sites: list) -> None:
        first = sites[0][3]
        schedule = first.config.schedule
        step = int(first.step)
        if schedule.should_update(step):
            update_masks(model, sites, schedule.sparsity(step))


def update_masks(model: nn.Module, sites: list, sparsity: float) -> None:
    """Recompute the masks of ``sites`` to ``sparsity`` and zero the pruned weights.

    Scores are ``|w|`` of the weights as the model currently uses them (already pruned
    entries score 0), so pruning is monotone while sparsity rises, and the ranking uses a
    stable sort so ties break the same way on every run.
    """
    seen, items = set(), []
    for mname, tname, index, p in sites:
        if id(p) in seen:  # tied weights share one mask
            continue
        seen.add(id(p))
        module = get_module(model, mname)
        items.append((module, tname, index, p))
    cfg = items[0][3].config
    if sparsity <= 0.0:
        # Nothing to prune (a schedule's first step): skip scoring every weight, which on a
        # BERT-base is seconds of work that would keep every entry anyway.
        for _m, _t, _i, p in items:
            p.mask.fill_(True)
        return
    if cfg.nm is not None:
        _update_nm_masks(items, cfg, sparsity)
        return
    with torch.no_grad():
        # The innermost mask's raw weights are already zero where it prunes (see below):
        # no multiply by the mask needed there.
        scores = [_block_scores(input_of(m, t, i) if i == 0 else input_of(m, t, i) * p.mask,
                                cfg, f"{t}") for m, t, i, p in items]
        if cfg.scope == "global":
            flat = torch.cat([s.flatten() for s in scores])
            keep = _keep_mask(flat, sparsity)
            parts = torch.split(keep, [s.numel() for s in scores])
            keeps = [k.view_as(s) for k, s in zip(parts, scores)]
        else:
            keeps = [_keep_mask(s.flatten(), sparsity).view_as(s) for s in scores]
        for (m, t, i, p), keep in zip(items, keeps):
            p.mask.copy_(_expand_blocks(keep, cfg.block_size, p.mask.shape))
            if i == 0:
                # Zero the stored weights too, as the mask stage is innermost: the raw tensor
                # then matches what the model computes with.
                raw = m.parametrizations[t].original
                raw.masked_fill_(~p.mask, 0.0)


def _update_nm_masks(items: list, cfg: MagnitudePruningConfig, sparsity: float) -> None:
    # The schedule sets the pace: at s(t) the share s(t) / s_final of each layer's groups is
    # N:M-pruned, so the last update leaves every group with at most N non-zeros.
    from slimkit.core.selection import input_axis
    from slimkit.techniques.pruning.nm import final_sparsity, nm_keep_mask

    n, m = cfg.nm
    fraction = sparsity / final_sparsity(cfg.schedule)
    with torch.no_grad():
        for module, t, i, p in items:
            w = input_of(module, t, i) * p.mask
            axis = input_axis(module, t) if w.dim() == 2 else 1
            keep = nm_keep_mask(w, n, m, fraction, input_axis=axis)
            p.mask.copy_(keep.to(p.mask.dtype))
            if i == 0:
                module.parametrizations[t].original.masked_fill_(p.mask == 0, 0.0)


def _keep_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep all but the ``sparsity`` share of lowest scores; ties at the threshold are pruned
    in index order (what a stable sort gives), so every run prunes the same entries.

    A selection (kthvalue) instead of a full sort, and as few passes over the scores as the
    common case allows (no tie at the threshold): on BERT-base's 110M weights every pass
    costs about a second on 2 cores.
    """
    n = scores.numel()
    n_prune = int(round(sparsity * n))
    if n_prune <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    if n_prune >= n:
        return torch.zeros_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(scores, n_prune).values
    keep = scores > threshold
    missing = (n - n_prune) - int(keep.sum())
    if missing > 0:
        # Entries equal to the threshold: the first ones (by index) are pruned, the last
        # ``missing`` kept.
        ties = (scores == threshold).nonzero().flatten()
        keep[ties[len(ties) - missing:]] = True
    return keep


def _as_matrix(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1) if w.dim() != 2 else w


def _block_scores(w: torch.Tensor, cfg: MagnitudePruningConfig, name: str) -> torch.Tensor:
    a = w.abs().float()
    bh, bw = cfg.block_size
    if (bh, bw) == (1, 1):
        return a
    m = _as_matrix(a)
    rows, cols = m.shape
    ph, pw = (-rows) % bh, (-cols) % bw
    m = F.pad(m, (0, pw, 0, ph))[None, None]
    if cfg.block_reduce == "max":
        s = F.max_pool2d(m, (bh, bw))
    else:
        # The mean over only the real (unpadded) entries of an edge block.
        s = F.avg_pool2d(m, (bh, bw)) * (bh * bw)
        ones = F.pad(torch.ones(rows, cols, device=a.device), (0, pw, 0, ph))[None, None]
        s = s / F.avg_pool2d(ones, (bh, bw)).mul(bh * bw)
    return s[0, 0]


def _expand_blocks(keep: torch.Tensor, block: tuple[int, int], shape: torch.Size) -> torch.Tensor:
    bh, bw = block
    if (bh, bw) == (1, 1):
        return keep.view(shape)
    rows = shape[0]
    cols = math.prod(shape[1:]) if len(shape) > 1 else 1
    full = keep.repeat_interleave(bh, 0).repeat_interleave(bw, 1)[:rows, :cols]
    return full.reshape(shape)


def schedule_shortfall(model: nn.Module, record: dict) -> str | None:
    """A warning when the masks of ``record`` are below the sparsity their schedule ends at.

    The usual cause is a training loop that never called ``sk.Scheduler(model).step()``: the
    masks then stay at the sparsity of step 0 (0.0 for a schedule from 0), and the exported
    model is not pruned. None when every mask reached its schedule's final sparsity.
    """
    from slimkit.core.parametrize import slim_parametrizations
    from slimkit.techniques.pruning.nm import final_sparsity

    layers = {(m, t) for m, t in record["layers"]}
    behind = []
    seen = set()
    for mname, tname, _i, p in slim_parametrizations(model):
        if not isinstance(p, PruningMask) or (mname, tname) not in layers or id(p) in seen:
            continue
        seen.add(id(p))
        target = final_sparsity(p.config.schedule)
        have = float((p.mask == 0).float().mean())
        if have + 0.01 < target:
            behind.append((f"{mname}.{tname}", int(p.step), have, target))
    if not behind:
        return None
    name, step, have, target = behind[0]
    never = all(b[1] == 0 for b in behind)
    cause = ("the schedule was never stepped: call sk.Scheduler(model).step() after each "
             "optimizer.step()" if never else
             f"the schedule stopped at step {step} before its end")
    return (f"slimkit: magnitude pruning of {len(behind)} weight(s) is below its target "
            f"({name}: sparsity {have:.2f} of {target:.2f}); {cause}")
