"""The per-layer math of SparseGPT and Wanda (no model, no hooks: tensors in, tensors out).

SparseGPT (Frantar & Alistarh, 2023) treats pruning like GPTQ treats rounding: for a layer
``y = W x`` with input Hessian ``H = 2 X X^T / n``, it visits the input columns in order and,
for each column, zeroes the masked weights and spreads their error over the columns not yet
visited through the inverse Hessian (the optimal brain surgeon update, restricted to later
columns so that one Cholesky factor of ``H^-1`` serves every row). Columns are processed in
blocks: the mask of a block is chosen jointly from ``w^2 / [H^-1]_jj^2`` (adaptive mask
selection), and the updates to the columns after the block are applied once per block.
Wanda (Sun et al., 2023) scores ``|W_ij| * ||X_j||_2`` and prunes the lowest scores of every
output row, with no update.

Example:
    >>> w2, keep = sparsegpt_prune(w, H, sparsity=0.5)
    >>> layer_error(w, w2, H) < layer_error(w, w * magnitude_keep(w, 0.5), H)
    True
"""

from __future__ import annotations

import torch

from slimkit.core.threads import one_thread


def layer_error(w: torch.Tensor, q: torch.Tensor, H: torch.Tensor) -> float:
    """The layer's output error ``||W X - Q X||^2 / n``: ``tr((W - Q) H (W - Q)^T) / 2``."""
    d = w.double() - q.double()
    return float(((d @ H.double()) * d).sum() / 2)


def _inverse_cholesky(H: torch.Tensor, damp: float, name: str) -> torch.Tensor:
    """The upper Cholesky factor of ``(H + damp * mean(diag H) I)^-1``."""
    n = H.shape[0]
    eye = torch.eye(n, dtype=H.dtype)
    mean = float(torch.diag(H).mean())
    H = H + damp * mean * eye
    for attempt in range(5):
        L, info = torch.linalg.cholesky_ex(H)
        if int(info) == 0:
            break
        # Not positive definite in float precision: more damping, as the paper's code does.
        H = H + (10.0**attempt) * damp * mean * eye
    else:
        raise ValueError(f"the input Hessian of {name} is not positive definite even after "
                         "damping; raise SparseGPTConfig.damp or give more calibration tokens")
    return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A bool mask of the ``k`` lowest entries of ``scores`` (stable: ties by position)."""
    flat = scores.flatten()
    out = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        out[torch.argsort(flat, stable=True)[:k]] = True
    return out.view_as(scores)


def sparsegpt_prune(w: torch.Tensor, H: torch.Tensor, sparsity: float, *,
                    nm: tuple[int, int] | None = None, damp: float = 0.01, block: int = 128,
                    name: str = "layer") -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``w`` ``[out, in]`` with SparseGPT given its input Hessian ``H`` ``[in, in]``.

    ``sparsity``: share of zeros (unstructured, chosen per block of ``block`` columns, so each
    block and the layer end at that share); ``nm=(N, M)``: N:M instead. Returns
    ``(new weight, keep mask)``, both ``[out, in]``; the weight is zero where the mask is False.
    """
    out_f, in_f = w.shape
    if nm is not None and in_f % nm[1]:
        raise ValueError(f"{name}: input width {in_f} is not a multiple of M={nm[1]}")
    with torch.no_grad(), one_thread():
        W = w.detach().double().clone()
        H = H.detach().double().clone()
        dead = torch.diag(H) == 0
        H[dead, dead] = 1.0   # inputs that were always zero: any weight there is free
        Hinv = _inverse_cholesky(H, damp, name)
        keep = torch.ones_like(W, dtype=torch.bool)
        for i1 in range(0, in_f, block):
            i2 = min(i1 + block, in_f)
            W1 = W[:, i1:i2].clone()
            Hinv1 = Hinv[i1:i2, i1:i2]
            d = torch.diag(Hinv1)
            err = torch.zeros_like(W1)
            pruned = torch.zeros_like(W1, dtype=torch.bool)
            if nm is None:
                # Adaptive mask selection: the block's lowest OBS saliencies w^2 / [H^-1]_jj^2.
                k = int(round(sparsity * W1.numel()))
                pruned = _lowest(W1.pow(2) / d.pow(2).unsqueeze(0), k)
            n, m = nm if nm is not None else (0, 0)
            for i in range(i2 - i1):
                if nm is not None and i % m == 0:
                    sal = W1[:, i:i + m].pow(2) / d[i:i + m].pow(2).unsqueeze(0)
                    lowest = torch.argsort(sal, dim=1, stable=True)[:, : m - n]
                    pruned[:, i:i + m].scatter_(1, lowest, True)
                col = W1[:, i]
                q = torch.where(pruned[:, i], torch.zeros_like(col), col)
                e = (col - q) / d[i]
                # Later columns of the block absorb this column's error right away.
                W1[:, i:].sub_(e.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0))
                W1[:, i] = q
                err[:, i] = e
            W[:, i1:i2] = W1
            keep[:, i1:i2] = ~pruned
            # Columns after the block: one matrix product instead of a rank-one update each.
            W[:, i2:].sub_(err @ Hinv[i1:i2, i2:])
        W[~keep] = 0.0
    return W.to(w.dtype), keep


def wanda_keep(w: torch.Tensor, sq_norm: torch.Tensor, sparsity: float, *,
               nm: tuple[int, int] | None = None) -> torch.Tensor:
    """Wanda's keep mask of ``w`` ``[out, in]``: the lowest ``|W_ij| * ||X_j||_2`` of every
    output row pruned (``sq_norm``: sum of ``x_j^2`` per input channel, ``[in]``); with
    ``nm=(N, M)`` the lowest ``M - N`` of every group of M inputs of a row."""
    out_f, in_f = w.shape
    score = w.detach().abs().double() * sq_norm.double().clamp_min(0).sqrt().unsqueeze(0)
    if nm is not None:
        n, m = nm
        groups = score.reshape(out_f, in_f // m, m)
        order = torch.argsort(groups, dim=2, stable=True)
        pruned = torch.zeros_like(groups, dtype=torch.bool)
        pruned.scatter_(2, order[:, :, : m - n], True)
        return ~pruned.reshape(out_f, in_f)
    k = int(round(sparsity * in_f))   # per output row, as the paper compares within a row
    keep = torch.ones_like(score, dtype=torch.bool)
    if k > 0:
        order = torch.argsort(score, dim=1, stable=True)
        keep.scatter_(1, order[:, :k], False)
    return keep


def magnitude_keep(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The keep mask of one-shot magnitude pruning of one layer (the baseline)."""
    return ~_lowest(w.detach().abs(), int(round(sparsity * w.numel())))
