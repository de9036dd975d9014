"""HQQ: calibration-free optimisation of each group's zero point (or scale) for a sparse error.

Half-quadratic quantization (Badri & Shaji, 2023) fits the grid to the weight alone by
minimising ``||w - dequant(quant(w))||_p^p`` with ``p < 1``, a norm that tolerates a few large
errors (outliers) in exchange for small errors everywhere else. Splitting the error into an
auxiliary variable ``e`` makes each step closed-form:

1. ``e <- shrink_p(w - w_hat, beta)``: the generalized soft-threshold of the lp norm;
2. asymmetric grids: ``zero <- mean(codes - (w - e) / scale)`` per group (the paper's update,
   scale fixed, so zeros become non-integer); symmetric grids keep ``zero = 2**(bits-1)`` and
   update the scale by least squares instead: ``scale <- <w - e, c> / <c, c>``, ``c = codes - zero``;
3. codes are re-rounded, ``beta`` grows by ``kappa``.

Each group keeps the parameters of the iteration with the smallest squared error, starting
from round-to-nearest, so the result is never worse than RTN in the L2 sense.

Example:
    >>> codes, scales, zeros = hqq_optimize(w, bits=4, group_size=64, symmetric=False)
    >>> float((dequantize(codes, scales, zeros) - w).pow(2).sum()) <= rtn_error
    True
"""

from __future__ import annotations

import torch

from slimkit.techniques.weight_only.grid import group_mask, grouped, minmax_params


def _shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    # Proximal operator of |x|^p / beta (generalized soft-thresholding for p < 1).
    ax = x.abs()
    return torch.sign(x) * torch.relu(ax - (1.0 / beta) * ax.clamp_min(1e-12).pow(p - 1))


def hqq_optimize(w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool, *,
                 iterations: int = 20, p: float = 0.7, beta: float = 10.0,
                 kappa: float = 1.01) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Optimise the grid of ``w`` ``[out, in]`` with HQQ's half-quadratic solver.

    Returns ``(codes uint8 [out, in], scales [out, g], zeros [out, g])``; asymmetric grids get
    float (non-integer) zero points.
    """
    maxq = 2**bits - 1
    out_f, in_f = w.shape
    with torch.no_grad():
        wg = grouped(w.float(), group_size)                          # [out, g, gs]
        mask = group_mask(in_f, group_size).float()                  # padding of a short group
        count = mask.sum(-1, keepdim=True)
        scales, zeros = minmax_params(w, bits, group_size, symmetric)
        s, z = scales.unsqueeze(-1).clone(), zeros.unsqueeze(-1).clone()
        # Each group is scaled to unit steps so that beta means the same in every group.
        unit = s.clone()
        wn = wg / unit

        def codes_of(s, z):
            return torch.round(wn / (s / unit) + z).clamp_(0, maxq)

        def error(q, s, z):
            return (((q - z) * (s / unit) - wn).pow(2) * mask).sum(-1, keepdim=True)

        q = codes_of(s, z)
        best_err = error(q, s, z)
        best_s, best_z = s.clone(), z.clone()
        b = beta
        for _ in range(iterations):
            sn = s / unit
            e = _shrink_lp(wn - (q - z) * sn, b, p)
            target = wn - e
            if symmetric:
                c = (q - z) * mask
                sn = ((target * c).sum(-1, keepdim=True)
                      / c.pow(2).sum(-1, keepdim=True).clamp_min(1e-12)).clamp_min(1e-8)
                s = sn * unit
            else:
                z = ((q - target / sn) * mask).sum(-1, keepdim=True) / count
            q = codes_of(s, z)
            err = error(q, s, z)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_s = torch.where(better, s, best_s)
            best_z = torch.where(better, z, best_z)
            b *= kappa
        codes = codes_of(best_s, best_z).to(torch.uint8).reshape(out_f, -1)[:, :in_f]
        return codes.contiguous(), best_s.squeeze(-1).float(), best_z.squeeze(-1).float()
