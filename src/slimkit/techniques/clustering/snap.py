"""``ClusterSnap``: the parametrization that replaces each weight by its cluster's centroid.

The centroids are an ``nn.Parameter`` of the parametrization, so ``model.parameters()`` hands
them to the optimizer and the state_dict saves them
(``fc.parametrizations.weight.<i>.centroids``). The labels (which centroid each weight uses),
the fixed-centroid mask and the step count are buffers. In the backward pass a centroid gets
the sum (or mean) of its members' gradients (Deep Compression, section 3). With
``refresh_every`` set, the weight below gets the gradient straight through, so it keeps
training and a refresh can move a weight to another centroid when it has drifted closer to
it; without refreshes it gets none (it could not change the output).

Example:
    >>> c, labels, fixed = fit_codebook(w, cfg, "fc.weight")
    >>> p = ClusterSnap(c, labels, fixed, cfg)
    >>> p(w)                      # same shape as w, at most cfg.clusters distinct values
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from slimkit.core.parametrize import SlimParametrization, get_module, input_of
from slimkit.core.stages import register_stage
from slimkit.core.state import Max, Sum
from slimkit.techniques.clustering.codebook import as_rows, assign, label_dtype
from slimkit.techniques.clustering.config import ClusteringConfig


class _Snap(torch.autograd.Function):
    """out = centroids.flatten()[index]; d out/d w = identity; d out/d centroids = scatter-add."""

    @staticmethod
    def forward(ctx, w, centroids, index, scale):
        ctx.save_for_backward(index, scale)
        ctx.shape = centroids.shape
        return centroids.reshape(-1).index_select(0, index.reshape(-1)).view(w.shape)

    @staticmethod
    def backward(ctx, grad):
        index, scale = ctx.saved_tensors
        grad_c = None
        if ctx.needs_input_grad[1]:
            g = grad.reshape(-1)
            grad_c = torch.zeros(ctx.shape.numel(), dtype=g.dtype, device=g.device)
            grad_c.scatter_add_(0, index.reshape(-1), g)
            if scale.numel():  # "mean": divide by the members of each centroid
                grad_c.mul_(scale)
            grad_c = grad_c.view(ctx.shape)
        return grad, grad_c, None, None


class ClusterSnap(SlimParametrization):
    """Snap a weight to shared centroids: (k,) per tensor or (channels, k) per channel."""

    # The assignment to centroids was computed from the weight at prepare time: a pruning
    # mask added underneath later would be snapped back to non-zero centroids.
    accepts_lower_stages = False

    stage = register_stage("cluster", 200)

    def __init__(self, centroids: torch.Tensor, labels: torch.Tensor, fixed: torch.Tensor,
                 config: ClusteringConfig, dtype: torch.dtype = torch.float32, group: str = ""):
        super().__init__(group)
        self.config = config
        self.centroids = nn.Parameter(centroids.detach().to(dtype).clone())
        self.register_buffer("labels", labels.to(label_dtype(centroids.shape[-1])))
        self.register_buffer("fixed", fixed.clone().bool())
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._key = None

    @property
    def per_channel(self) -> bool:
        return self.centroids.dim() == 2

    def _index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat int64 index into the centroids (and 1/count for "mean"), cached.

        The labels are stored small (uint8 for k <= 256) to keep checkpoints small; the int64
        copy is rebuilt only when the labels change (load, refresh, device move), which the
        tensor's version counter and storage pointer tell.
        """
        lab = self.labels
        key = (lab.data_ptr(), lab._version, self.centroids.shape)
        if self._key != key:
            index = lab.long()
            if self.per_channel:
                k = self.centroids.shape[1]
                rows = torch.arange(lab.shape[0], device=lab.device) * k
                index = index + rows.view(-1, *([1] * (lab.dim() - 1)))
            scale = torch.empty(0, device=lab.device)
            if self.config.gradient_aggregation == "mean":
                counts = torch.bincount(index.reshape(-1), minlength=self.centroids.numel())
                scale = 1.0 / counts.clamp(min=1).to(self.centroids.dtype)
            self._cache = (index, scale)
            self._key = key
        return self._cache

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        index, scale = self._index()
        c = self.centroids
        if self.config.preserve_sparsity:
            # Zero stays exactly 0.0 whatever the optimizer does (weight decay, a user's
            # edit), and masked_fill gives the fixed centroid no gradient.
            c = c.masked_fill(self.fixed, 0.0)
        if not self.config.refresh_every:
            # Never re-assigned, the weights below cannot change the output: no gradient
            # reaches them, so optimizers skip them (and their Adam moments) entirely.
            w = w.detach()
        return _Snap.apply(w, c, index, scale)

    @torch.no_grad()
    def refresh(self, w: torch.Tensor) -> None:
        """Re-assign every weight of ``w`` (this parametrization's input) to its nearest centroid.

        With preserve_sparsity, weights on the zero centroid stay on it and weights that are
        exactly zero (e.g. newly pruned below) join it; no other weight goes to zero.
        """
        rows = as_rows(w, self.per_channel)
        c = self.centroids if self.per_channel else self.centroids[None]
        fixed = self.fixed if self.per_channel else self.fixed[None]
        sticky = None
        if self.config.preserve_sparsity:
            on_zero = fixed.gather(1, as_rows(self.labels, self.per_channel).long())
            sticky = on_zero | (rows == 0)
        labels = assign(rows, c, fixed, sticky)
        self.labels.copy_(labels.reshape(self.labels.shape))

    def used_values(self) -> int:
        """Most distinct values any one codebook actually uses (one row with per_channel)."""
        c = self.centroids.detach()
        if self.config.preserve_sparsity:
            c = c.masked_fill(self.fixed, 0.0)
        if c.dim() == 1:
            return int(c[self.labels.long().unique()].unique().numel())
        rows = self.labels.reshape(c.shape[0], -1).long()
        return max(int(c[i][rows[i].unique()].unique().numel()) for i in range(c.shape[0]))

    def stats(self) -> dict:
        return {"clusters": Max(self.used_values()), "clustered_tensors": Sum(1)}

    def layer_stats(self) -> dict:
        return {"clusters": float(self.used_values())}

    def original_unused(self) -> bool:
        # Without refreshes the output is built from centroids and labels alone: the weight
        # under the snap gets no gradient (DDP must be told).
        return not self.config.refresh_every

    def extra_repr(self) -> str:
        shape = "x".join(str(s) for s in self.centroids.shape)
        return f"centroids={shape}, refresh_every={self.config.refresh_every}, step={int(self.step)}"

    @classmethod
    def on_step(cls, model: nn.Module, sites: list) -> None:
        first = sites[0][3]
        if not getattr(first, "_checked_masks", False):
            # Checked on the first step, not at prepare: sk.load replays the records before
            # the step counts are loaded, and masks only change while a scheduler steps.
            first._checked_masks = True
            warn_rising_sparsity(model, [(m, t) for m, t, _, _ in sites], first.config)
        every = first.config.refresh_every
        if not every or int(first.step) % every:
            return
        seen = set()
        for mname, tname, index, p in sites:
            if id(p) in seen:  # tied weights share one parametrization
                continue
            seen.add(id(p))
            p.refresh(input_of(get_module(model, mname), tname, index))


def warn_rising_sparsity(model: nn.Module, layers, config: ClusteringConfig) -> None:
    """Warn when a pruning schedule below will still raise sparsity while clustering trains.

    The cluster stage sits above the mask: without ``refresh_every`` its output comes from the
    labels alone, so a weight the schedule prunes later stays on its centroid (non-zero) in
    the weight the layer uses. With refreshes, newly zero weights join the zero centroid.
    """
    if config.refresh_every:
        return
    late = []
    for mname, tname in layers:
        module = get_module(model, mname)
        if not parametrize.is_parametrized(module, tname):
            continue
        for q in module.parametrizations[tname]:
            schedule = getattr(getattr(q, "config", None), "schedule", None)
            if getattr(q, "stage", "") != "mask" or not hasattr(schedule, "sparsity"):
                continue
            step, end = int(q.step), getattr(schedule, "end_step", -1)
            if end != -1 and step < end and schedule.sparsity(end) > schedule.sparsity(step):
                late.append(f"{mname}.{tname} (step {step}, sparsity rises until step {end})")
    if late:
        warnings.warn(
            "slimkit: weight clustering on weights whose pruning schedule has not finished: "
            + "; ".join(late[:3]) + (f" and {len(late) - 3} more" if len(late) > 3 else "")
            + ". Weights pruned from now on keep their centroid value; finish pruning first, "
            "or set ClusteringConfig(refresh_every=...) so pruned weights join the zero "
            "centroid (with preserve_sparsity=True).",
            stacklevel=4,  # the caller of Scheduler.step()
        )
