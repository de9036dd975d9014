"""AWQ: protect the weights that meet large activations by scaling them up before rounding.

Activation-aware weight quantization (Lin et al., 2023) observes that a few input channels
carry much larger activations than the rest, and that rounding errors on their weights cost
the most. Multiplying those weight columns by ``s > 1`` and the input by ``1 / s`` leaves the
float layer unchanged (``W x = (W diag(s)) (x / s)``) but shrinks their relative rounding
error. The scale is searched as ``s = mean|x| ** alpha`` over a grid of ``alpha`` in ``[0, 1]``,
minimising the error of a module's output on calibration inputs; ``1 / s`` is then folded into
whatever produces the input (a norm's weight, or the rows of a preceding linear), so nothing
is added at run time. :func:`awq_clip` then searches, per group, how far to shrink the range.

Example:
    >>> s, alpha, errs = awq_search([w], x.abs().mean(0), lambda ws: err(x, w, ws[0]),
    ...                             bits=4, group_size=128, symmetric=True)
    >>> w_scaled = w * s                    # and the input divided by s
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from slimkit.techniques.weight_only.grid import fake_quantize, grouped


def awq_candidate(w: torch.Tensor, s: torch.Tensor, bits: int, group_size: int | None,
                  symmetric: bool) -> torch.Tensor:
    """The float weight a layer effectively computes with after scaling: ``Q(w * s) / s``."""
    return fake_quantize(w * s, bits, group_size, symmetric) / s


def awq_search(weights: Sequence[torch.Tensor], x_mean: torch.Tensor,
               evaluate: Callable[[list[torch.Tensor]], float], bits: int,
               group_size: int | None, symmetric: bool, grid: int = 20,
               ) -> tuple[torch.Tensor, float, list[float]]:
    """Search the per-input-channel scale shared by ``weights`` (all ``[out_i, in]``).

    ``evaluate(candidates)`` returns the output error when each layer computes with its
    candidate weight ``Q(w * s) / s`` (lower is better). ``alpha = 0`` (no scaling, plain
    round-to-nearest) is always a candidate, so the result is never worse than RTN on the
    same objective. Returns ``(s [in], best alpha, error per grid point)``.
    """
    x_mean = x_mean.float().clamp_min(1e-8)
    errors: list[float] = []
    best = (float("inf"), 0.0, torch.ones_like(x_mean))
    for i in range(grid):
        alpha = i / (grid - 1) if grid > 1 else 0.0
        s = x_mean.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()          # centre the scales around 1
        err = float(evaluate([awq_candidate(w.float(), s, bits, group_size, symmetric)
                              for w in weights]))
        errors.append(err)
        if err < best[0]:
            best = (err, alpha, s)
    return best[2], best[1], errors


def awq_clip(w: torch.Tensor, x: torch.Tensor, bits: int, group_size: int | None,
             symmetric: bool, grid: int = 20, max_shrink: float = 0.5) -> torch.Tensor:
    """Per (row, group) range shrink factor in ``[1 - max_shrink, 1]`` minimising the
    output error ``||x_g (w_g - Q(w_g))^T||^2`` on input rows ``x`` ``[n, in]``.

    Returns the clip tensor ``[out, n_groups]`` for :func:`~.grid.minmax_params`.
    """
    w = w.float()
    xg = grouped(x.float(), group_size)                        # [n, g, gs]
    best_err = None
    best_clip = None
    steps = max(1, int(round(grid * max_shrink)))
    for i in range(steps + 1):
        ratio = 1.0 - max_shrink * i / steps
        d = grouped(w - fake_quantize(w, bits, group_size, symmetric, ratio), group_size)
        err = torch.einsum("ngk,ogk->nog", xg, d).pow(2).sum(0)   # [out, g]
        if best_err is None:
            best_err, best_clip = err, torch.ones_like(err)
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_clip = torch.where(better, torch.full_like(err, ratio), best_clip)
    return best_clip
