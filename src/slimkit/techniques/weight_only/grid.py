"""The block-wise integer grid every weight-only algorithm writes to.

A weight ``w`` of shape ``[out, in]`` is cut along ``in`` into groups of ``group_size``
columns (``None``: one group, i.e. per output channel). Each (row, group) has a float ``scale``
and an unsigned zero point ``zero``; the codes are ``uint8`` in ``[0, 2**bits - 1]`` and the
deployed weight is ``(codes - zero) * scale``, which is what ONNX Runtime's ``MatMulNBits``
computes. Symmetric grids fix ``zero = 2**(bits-1)`` and may have negative scales (see
:func:`minmax_params`). When ``group_size`` does not divide
``in`` (allowed only with ``WeightOnlyConfig.allow_partial_group``), the last group of each row
is shorter, as ``MatMulNBits`` pads it; zero padding leaves a min/max range unchanged because
the range always includes 0.

Example:
    >>> scales, zeros = minmax_params(w, bits=4, group_size=128, symmetric=True)
    >>> codes = quantize_codes(w, scales, zeros, bits=4, group_size=128)
    >>> w_hat = dequantize(codes, scales, zeros, group_size=128)
"""

from __future__ import annotations

import math

import torch


def n_groups(in_features: int, group_size: int | None) -> int:
    """Groups per row: ``ceil(in / group_size)``, or 1 for per-channel quantization."""
    return 1 if group_size is None else math.ceil(in_features / group_size)


def expand(t: torch.Tensor, in_features: int, group_size: int | None) -> torch.Tensor:
    """``[out, n_groups]`` -> ``[out, in]``, repeating each group's value over its columns."""
    gs = in_features if group_size is None else group_size
    full = t.repeat_interleave(gs, dim=1)
    return full if full.shape[1] == in_features else full[:, :in_features]


def grouped(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """``[out, in]`` -> ``[out, n_groups, group_size]``, zero-padding a short last group."""
    out, cols = w.shape
    gs = cols if group_size is None else group_size
    pad = n_groups(cols, group_size) * gs - cols
    if pad:
        w = torch.nn.functional.pad(w, (0, pad))
    return w.reshape(out, -1, gs)


def group_mask(in_features: int, group_size: int | None) -> torch.Tensor:
    """``[n_groups, group_size]`` bool: True where a grouped entry is a real column."""
    gs = in_features if group_size is None else group_size
    return (torch.arange(n_groups(in_features, group_size) * gs) < in_features).reshape(-1, gs)


def minmax_params(w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool,
                  clip: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest scales and zero points from each group's range.

    Symmetric: ``zero = 2**(bits-1)`` and ``scale = -w_ext / 2**(bits-1)``, where ``w_ext`` is
    the group's value of largest magnitude (with its sign), so it is represented exactly by
    code 0 and the grid uses all ``2**bits`` codes; the scale is negative when ``w_ext > 0``.
    Asymmetric:
    the range ``[min(w, 0), max(w, 0)]`` over ``2**bits - 1`` steps, with an integer zero.
    ``clip`` (a float or an ``[out, n_groups]`` tensor in (0, 1]) shrinks the range first
    (AWQ's clipping search). Returns float32 ``scales`` and ``zeros`` of shape ``[out, n_groups]``.
    """
    maxq = 2**bits - 1
    g = grouped(w.float(), group_size)
    c = clip.float() if isinstance(clip, torch.Tensor) else torch.tensor(float(clip))
    if symmetric:
        half = 2 ** (bits - 1)
        # The signed value of largest magnitude lands exactly on the lowest code, -half steps:
        # the step is max|w| / half (not 2 max|w| / maxq, which is 7% coarser at 4 bits and
        # clips a positive extreme to 7/7.5 of itself). The scale is negative where that
        # value is positive, which MatMulNBits computes as written (ONNX Runtime's own
        # quantizer does the same).
        idx = g.abs().argmax(-1, keepdim=True)
        extreme = g.gather(-1, idx).squeeze(-1) * c
        scales = extreme / -half
        tiny = scales.abs() < 1e-10                       # an all-zero group
        scales = torch.where(tiny, torch.full_like(scales, 1e-10), scales)
        zeros = torch.full_like(scales, float(half))
        return scales, zeros
    lo = g.amin(-1).clamp_max(0) * c
    hi = g.amax(-1).clamp_min(0) * c
    scales = ((hi - lo) / maxq).clamp_min(1e-10)
    zeros = torch.round(-lo / scales).clamp(0, maxq)
    return scales, zeros


def quantize_codes(w: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int,
                   group_size: int | None) -> torch.Tensor:
    """Nearest codes of ``w`` on the grid ``(scales, zeros)``, as uint8 ``[out, in]``."""
    cols = w.shape[1]
    q = torch.round(w.float() / expand(scales, cols, group_size)
                    + expand(zeros, cols, group_size))
    return q.clamp_(0, 2**bits - 1).to(torch.uint8)


def dequantize(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               group_size: int | None) -> torch.Tensor:
    """The deployed weight ``(codes - zeros) * scales``, float32 ``[out, in]``."""
    cols = codes.shape[1]
    return (codes.float() - expand(zeros, cols, group_size)) * expand(scales, cols, group_size)


def fake_quantize(w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool,
                  clip: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Round-to-nearest quantize-dequantize of ``w`` (the float weight RTN deploys)."""
    scales, zeros = minmax_params(w, bits, group_size, symmetric, clip)
    return dequantize(quantize_codes(w, scales, zeros, bits, group_size), scales, zeros,
                      group_size)


def check_group_size(in_features: int, group_size: int | None, where: str,
                     allow_partial: bool = False) -> None:
    """Refuse a group size that does not divide ``in_features``, naming what would."""
    if group_size is None or allow_partial or in_features % group_size == 0:
        return
    ok = [g for g in (32, 64, 128) if in_features % g == 0]
    raise ValueError(
        f"group_size must divide in_features {in_features} of {where}, got {group_size}; "
        f"accepted here: {ok + [None]} (None: per output channel), or allow_partial_group=True "
        "for a shorter last group as MatMulNBits pads it (WeightOnlyConfig.group_size)"
    )
