"""Round-to-nearest: each group's min/max range, nearest code. No data needed.

Example:
    >>> codes, scales, zeros = rtn(layer.weight, bits=4, group_size=128, symmetric=True)
    >>> w_hat = dequantize(codes, scales, zeros, group_size=128)
"""

from __future__ import annotations

import torch

from slimkit.techniques.weight_only.grid import minmax_params, quantize_codes


def rtn(w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool,
        clip: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize ``w`` ``[out, in]`` to the nearest codes of its min/max grid.

    Returns ``(codes uint8 [out, in], scales float32 [out, g], zeros float32 [out, g])``.
    ``clip`` shrinks each group's range (see :func:`minmax_params`).
    """
    with torch.no_grad():
        scales, zeros = minmax_params(w, bits, group_size, symmetric, clip)
        return quantize_codes(w, scales, zeros, bits, group_size), scales, zeros
