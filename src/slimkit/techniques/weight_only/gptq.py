"""GPTQ: quantize a layer column by column, compensating each rounding error with the Hessian.

For a layer ``y = w x`` and calibration inputs ``X``, GPTQ (Frantar et al., 2022) minimises
``||w X - q X||^2`` one input column at a time: after rounding column ``j`` it spreads the error
over the columns not yet quantized, weighted by the inverse Hessian ``H = 2 X X^T / n``. The
implementation follows the paper's fast form: the upper Cholesky factor of ``H^-1`` replaces the
repeated inverse updates, and columns are processed in blocks of ``block`` with the updates to
later columns applied lazily once per block (one matrix product instead of ``block`` rank-one
updates). ``act_order`` quantizes columns by decreasing ``diag(H)`` (largest activations first);
with groups it uses static groups (each group's grid from the weight before any update), so the
groups stay contiguous in the original column order that the deployed format needs.

Example:
    >>> codes, scales, zeros = gptq_quantize(w, H, bits=4, group_size=128, symmetric=True)
    >>> layer_error(w, dequantize(codes, scales, zeros), H) < layer_error(w, w_rtn, H)
    True
"""

from __future__ import annotations

import torch

from slimkit.core.threads import one_thread
from slimkit.techniques.weight_only.grid import minmax_params, n_groups


def layer_error(w: torch.Tensor, q: torch.Tensor, H: torch.Tensor) -> float:
    """``||w X - q X||^2 / n`` up to the Hessian's factor 2: ``tr((w - q) H (w - q)^T) / 2``."""
    d = (w.double() - q.double())
    return float(((d @ H.double()) * d).sum() / 2)


def _inverse_cholesky(H: torch.Tensor, damp: float) -> torch.Tensor:
    n = H.shape[0]
    H = H.clone()
    H += damp * torch.mean(torch.diag(H)) * torch.eye(n, dtype=H.dtype)
    for attempt in range(5):
        L, info = torch.linalg.cholesky_ex(H)
        if int(info) == 0:
            break
        # Not positive definite in float precision: add more damping and retry.
        H += 10.0**attempt * damp * torch.mean(torch.diag(H)) * torch.eye(n, dtype=H.dtype)
    else:
        raise ValueError("the layer Hessian is not positive definite even after damping; "
                         "raise WeightOnlyConfig.damp or give more calibration tokens")
    Hinv = torch.cholesky_inverse(L)
    return torch.linalg.cholesky(Hinv, upper=True)


def gptq_quantize(w: torch.Tensor, H: torch.Tensor, bits: int, group_size: int | None,
                  symmetric: bool, *, damp: float = 0.01, act_order: bool = False,
                  block: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize ``w`` ``[out, in]`` with GPTQ given its input Hessian ``H`` ``[in, in]``.

    ``damp`` adds ``damp * mean(diag(H))`` to the diagonal. Returns ``(codes uint8 [out, in],
    scales [out, g], zeros [out, g])`` on the grid of :mod:`.grid`, in the original column order.
    """
    maxq = 2**bits - 1
    out_f, in_f = w.shape
    gs = in_f if group_size is None else group_size
    with torch.no_grad(), one_thread():
        W = w.detach().float().clone()
        H = H.detach().double().clone()
        dead = torch.diag(H) == 0
        H[dead, dead] = 1.0
        W[:, dead] = 0.0
        perm = None
        if act_order:
            perm = torch.argsort(torch.diag(H), descending=True)
            inv = torch.argsort(perm)
        # Static grids: per channel always (one group), and for groups under act_order.
        static = group_size is None or act_order
        scales = torch.zeros(out_f, n_groups(in_f, group_size))
        zeros = torch.zeros(out_f, n_groups(in_f, group_size))
        if static:
            scales, zeros = minmax_params(W, bits, group_size, symmetric)
        if perm is not None:
            W = W[:, perm]
            H = H[perm][:, perm]
        U = _inverse_cholesky(H, damp).float()
        codes = torch.zeros(out_f, in_f, dtype=torch.uint8)
        for i1 in range(0, in_f, block):
            i2 = min(i1 + block, in_f)
            W1 = W[:, i1:i2].clone()
            Err = torch.zeros_like(W1)
            U1 = U[i1:i2, i1:i2]
            for i in range(i2 - i1):
                col = i1 + i
                orig = int(perm[col]) if perm is not None else col
                g = orig // gs
                if not static and orig % gs == 0:
                    # First column of a group: its grid from the current (updated) weights.
                    # (A short last group simply has fewer columns.)
                    s, z = minmax_params(torch.cat([W1[:, i:], W[:, i2:]], 1)[:, :gs],
                                         bits, None, symmetric)
                    scales[:, g], zeros[:, g] = s[:, 0], z[:, 0]
                x = W1[:, i]
                s, z = scales[:, g], zeros[:, g]
                q = torch.clamp(torch.round(x / s + z), 0, maxq)
                codes[:, col] = q.to(torch.uint8)
                err = (x - (q - z) * s) / U1[i, i]
                W1[:, i:] -= err.unsqueeze(1) @ U1[i, i:].unsqueeze(0)
                Err[:, i] = err
            W[:, i2:] -= Err @ U[i1:i2, i2:]
        if perm is not None:
            codes = codes[:, inv]
        return codes, scales, zeros
