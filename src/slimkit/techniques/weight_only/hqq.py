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

Speed: every step is vectorised over all groups of a block of rows (``rows`` at a time, so the
working set stays in the CPU cache), in float32, on one thread (the steps are short
elementwise passes that a contended thread pool slows down), and a block stops early once an
iteration lowers its total squared error by less than ``tol`` (relative). On one core of
the benchmark machine (load 3.6) a 576 x 1536 weight took 0.25 s at int4 sym g128 (RTN:
0.015 s; see
``benchmarks/llm_weight_only.py --only hqq-speed``).

Example:
    >>> codes, scales, zeros = hqq_optimize(w, bits=4, group_size=64, symmetric=False)
    >>> float((dequantize(codes, scales, zeros) - w).pow(2).sum()) <= rtn_error
    True
"""

from __future__ import annotations

import torch

from slimkit.core.threads import one_thread
from slimkit.techniques.weight_only.grid import group_mask, grouped, minmax_params


def _shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    # Proximal operator of |x|^p / beta (generalized soft-thresholding for p < 1):
    # sign(x) * relu(|x| - |x|^(p-1) / beta). |x|^(p-1) as exp((p-1) log|x|): torch's
    # vectorised exp and log are ~4x faster on CPU than its pow with a fractional exponent.
    ax = x.abs()
    t = ax.clamp_min(1e-12).log_().mul_(p - 1).exp_().mul_(1.0 / beta)
    return ax.sub_(t).relu_().mul_(torch.sign(x))


def _solve_block(wn: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None, maxq: int,
                 symmetric: bool, iterations: int, p: float, beta: float, kappa: float,
                 tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """HQQ on ``wn`` ``[r, g, gs]`` in units of the RTN step (so the RTN scale is 1).

    Returns the best ``(scale in RTN steps, zero)`` per group, each ``[r, g, 1]``.
    """
    sn = torch.ones_like(z)

    def codes(sn, z):
        return torch.round(wn / sn + z).clamp_(0, maxq)

    def sq_error(q, sn, z):
        d = (q - z).mul_(sn).sub_(wn)
        d = d.mul_(d)
        if mask is not None:
            d.mul_(mask)
        return d.sum(-1, keepdim=True)

    q = codes(sn, z)
    best_err = sq_error(q, sn, z)
    best_s, best_z = sn.clone(), z.clone()
    total = float(best_err.sum())
    b = beta
    for _ in range(iterations):
        target = wn - _shrink_lp(wn - (q - z) * sn, b, p)
        if symmetric:
            c = q - z
            if mask is not None:
                c.mul_(mask)
            sn = ((target * c).sum(-1, keepdim=True)
                  / (c * c).sum(-1, keepdim=True).clamp_min(1e-12)).clamp_min(1e-8)
        else:
            d = q - target / sn
            if mask is not None:
                d.mul_(mask)
            z = d.sum(-1, keepdim=True) / _mask_count(mask, d)
        q = codes(sn, z)
        err = sq_error(q, sn, z)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s = torch.where(better, sn, best_s)
        best_z = torch.where(better, z, best_z)
        b *= kappa
        new_total = float(best_err.sum())
        if total - new_total <= tol * total:
            break
        total = new_total
    return best_s, best_z


def _mask_count(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | float:
    """Real columns per group: ``mask.sum`` for a short last group, else the group size."""
    return float(like.shape[-1]) if mask is None else mask.sum(-1, keepdim=True)


def hqq_optimize(w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool, *,
                 iterations: int = 20, p: float = 0.7, beta: float = 10.0,
                 kappa: float = 1.01, tol: float = 1e-4,
                 rows: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Optimise the grid of ``w`` ``[out, in]`` with HQQ's half-quadratic solver.

    ``iterations``: at most this many solver steps; a block of ``rows`` rows stops earlier
    once a step lowers its squared error by less than ``tol`` relative (``tol=0``: run them
    all). Returns ``(codes uint8 [out, in], scales [out, g], zeros [out, g])``; asymmetric grids
    get float (non-integer) zero points.
    """
    maxq = 2**bits - 1
    out_f, in_f = w.shape
    with torch.no_grad(), one_thread():
        wg = grouped(w.detach().float(), group_size)                 # [out, g, gs]
        m = group_mask(in_f, group_size)
        mask = None if bool(m.all()) else m.float()                   # padding of a short group
        scales, zeros = minmax_params(w.detach(), bits, group_size, symmetric)
        unit = scales.unsqueeze(-1)                                   # RTN step, [out, g, 1]
        best_s = torch.empty_like(unit)
        best_z = torch.empty_like(unit)
        codes = torch.empty(wg.shape, dtype=torch.uint8)
        for r0 in range(0, out_f, max(1, rows)):
            r1 = min(r0 + max(1, rows), out_f)
            # Each group in units of its RTN step, so that beta means the same in every group.
            wn = wg[r0:r1] / unit[r0:r1]
            sn, z = _solve_block(wn, zeros[r0:r1].unsqueeze(-1).clone(), mask, maxq, symmetric,
                                 iterations, p, beta, kappa, tol)
            codes[r0:r1] = torch.round(wn / sn + z).clamp_(0, maxq).to(torch.uint8)
            best_s[r0:r1] = sn * unit[r0:r1]
            best_z[r0:r1] = z
        codes = codes.reshape(out_f, -1)[:, :in_f]
        return codes.contiguous(), best_s.squeeze(-1).float(), best_z.squeeze(-1).float()
