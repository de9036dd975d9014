"""Codebooks of a weight: the first k-means fit, and nearest-centroid assignment.

Rows are the unit of work: a per-tensor codebook is one row over all of a weight's values,
a per-channel codebook one row per slice along dim 0. With ``preserve_sparsity`` the codebook
holds a fixed 0.0: weights that are exactly zero get it, and no other weight does, so the
zero pattern stays exactly as it was.

Example:
    >>> c, labels, fixed = fit_codebook(w, ClusteringConfig(16), "fc1.weight")
    >>> snapped = c.reshape(-1)[labels.flatten()]        # per-tensor: 16 values at most
    >>> labels = assign(w.reshape(1, -1), c[None], None)  # nearest centroid, ties to the lower
"""

from __future__ import annotations

import numpy as np
import torch

from slimkit.techniques.clustering.config import ClusteringConfig
from slimkit.techniques.clustering.kmeans import kmeans_1d, kmeans_1d_per_channel


def label_dtype(k: int) -> torch.dtype:
    """The smallest integer dtype that indexes ``k`` centroids (uint8 up to 256)."""
    if k <= 256:
        return torch.uint8
    return torch.int16 if k <= 32767 else torch.int32


def as_rows(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """``w`` viewed as (rows, values per row): one row, or one per slice along dim 0."""
    return w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)


def check_size(w: torch.Tensor, config: ClusteringConfig, name: str) -> None:
    """Refuse a layer with fewer weights (per row) than clusters, naming it."""
    k = config.clusters
    if config.per_channel:
        if w.dim() < 2:
            raise ValueError(f"per_channel needs a weight with channels on dim 0; {name} has "
                             f"shape {tuple(w.shape)} (ClusteringConfig.per_channel)")
        n = w[0].numel()
        if k > n:
            raise ValueError(
                f"clusters={k} is more than the {n} weights per channel of {name} (shape "
                f"{tuple(w.shape)}); use clusters <= {n}, per_channel=False, or "
                f"ignore=[{name.rsplit('.', 1)[0]!r}] (ClusteringConfig.clusters)")
    elif k > w.numel():
        raise ValueError(
            f"clusters={k} is more than the {w.numel()} weights of {name} (shape "
            f"{tuple(w.shape)}); use clusters <= {w.numel()} or "
            f"ignore=[{name.rsplit('.', 1)[0]!r}] (ClusteringConfig.clusters)")


def assign(rows: torch.Tensor, c: torch.Tensor, fixed: torch.Tensor | None,
           sticky: torch.Tensor | None = None) -> torch.Tensor:
    """Label of the nearest centroid for every value: rows (R, n), centroids (R, k) -> (R, n).

    Fixed centroids (the zero of preserve_sparsity) take no value by distance; values where
    ``sticky`` is True take the row's fixed centroid instead. Ties go to the lower centroid.
    """
    c = c.detach().float()
    rows = rows.detach().float()
    if fixed is not None and bool(fixed.any()):
        c = c.masked_fill(fixed, float("inf"))
    cs, order = torch.sort(c, dim=1, stable=True)
    mids = (cs[:, 1:] + cs[:, :-1]) * 0.5
    labels = order.gather(1, torch.searchsorted(mids.contiguous(), rows.contiguous()))
    if sticky is not None and fixed is not None and bool(fixed.any()):
        zero = fixed.to(torch.uint8).argmax(dim=1, keepdim=True)
        labels = torch.where(sticky, zero.expand_as(labels), labels)
    return labels


def fit_codebook(w: torch.Tensor, config: ClusteringConfig, name: str):
    """The first codebook of weight ``w`` (already checked with :func:`check_size`).

    Returns ``(centroids, labels, fixed)``: float32 centroids (k,) or (channels, k), int64
    labels shaped like ``w`` (into the row of their channel when per-channel) and a bool mask
    of the fixed centroids. A row with fewer distinct values than k keeps them exactly (the
    codebook is padded to k with repeats).
    """
    rows = as_rows(w.detach().float().cpu(), config.per_channel)
    zero = config.preserve_sparsity
    if config.per_channel:
        c = _fit_rows(rows, config)
    else:
        values = rows[0][rows[0] != 0] if zero else rows[0]
        k = config.clusters - int(zero)
        few = _few_distinct(values, k)
        if values.numel() == 0:
            c = torch.zeros(0)
        elif few is not None:
            c = few
        else:
            # Labels come from assign() below (with the fixed zero's rules): none here.
            c, _ = kmeans_1d(values, k, init=config.init, seed=config.seed,
                             max_iter=config.max_iter, labels=False)
        if zero:
            c = torch.sort(torch.cat([c, torch.zeros(1)])).values
        c = _pad(c, config.clusters)[None]
    fixed = (c == 0) & zero
    if zero:  # one fixed zero per row: padding duplicates of 0.0 stay free (and unused)
        first = fixed.to(torch.uint8).argmax(dim=1, keepdim=True)
        fixed = torch.zeros_like(fixed).scatter_(1, first, True) & fixed.any(1, keepdim=True)
    labels = assign(rows, c, fixed, (rows == 0) if zero else None)
    if not config.per_channel:
        c, fixed = c[0], fixed[0]
    return c, labels.reshape(w.shape), fixed


def _few_distinct(values: torch.Tensor, k: int) -> torch.Tensor | None:
    """The sorted distinct values if there are at most ``k`` of them, else None.

    A strided sample answers for real weights; otherwise one numpy sort and a neighbour
    comparison. ``torch.unique`` of the whole tensor on BERT-base's 23M-value word embedding
    took ~2 s a call here, the most of a k=256 clustering prepare.
    """
    if values.numel() == 0:
        return None
    flat = values.reshape(-1)
    # More than k distinct values in an evenly strided sample of 4k proves there are more
    # than k in all (real weights): no sort of the whole tensor for that answer.
    if torch.unique(flat[:: max(1, flat.numel() // (4 * k))]).numel() > k:
        return None
    srt = np.sort(flat.numpy())
    new = np.empty(srt.shape, dtype=bool)
    new[0] = True
    np.not_equal(srt[1:], srt[:-1], out=new[1:])
    if int(new.sum()) > k:
        return None
    return torch.from_numpy(srt[new].copy())


def _fit_rows(rows: torch.Tensor, config: ClusteringConfig) -> torch.Tensor:
    """Per-channel centroids (R, k): batched k-means where a row has enough distinct values."""
    k = config.clusters
    zero = config.preserve_sparsity
    srt = torch.sort(rows, dim=1).values
    distinct = 1 + (srt[:, 1:] != srt[:, :-1]).sum(1)
    c = torch.empty(rows.shape[0], k)
    ok = distinct >= k
    if bool(ok.any()):
        c[ok], _ = kmeans_1d_per_channel(rows[ok], k, init=config.init, seed=config.seed,
                                         max_iter=config.max_iter,
                                         fixed=(0.0,) if zero else ())
    for r in torch.nonzero(~ok).flatten().tolist():
        # Few distinct values: the row is its own exact codebook.
        u = torch.unique(rows[r])
        if zero and not bool((u == 0).any()):
            u = torch.sort(torch.cat([u, torch.zeros(1)])).values
        c[r] = _pad(u, k)
    return c


def _pad(u: torch.Tensor, k: int) -> torch.Tensor:
    """Pad a codebook to k entries so its shape never depends on the data (a checkpoint of
    one model loads into another). The pad repeats a value, which never wins one (ties go
    to the lower index); nonzero where possible, as a free copy of 0.0 could take nonzero
    values by distance."""
    pad = u[u != 0][-1:] if bool((u != 0).any()) else u[-1:]
    return torch.cat([u, pad.expand(k - u.numel())])
