"""``WeightOnlyQuant``: the weight a layer computes with is its integer codes, dequantized.

The parametrization holds, per weight, ``codes`` (uint8 ``[out, in]``, values in
``[0, 2**bits - 1]``), ``scales`` and ``zeros`` (float32 ``[out, n_groups]``) as buffers, so the
state_dict carries them and ``sk.load`` restores them. Its forward ignores the float weight
under it and returns ``(codes - zeros) * scales``: the torch model computes exactly the weights
that ONNX Runtime's ``MatMulNBits`` will, and ``sk.strip`` bakes them.

Example:
    >>> p = WeightOnlyQuant(*rtn(layer.weight, 4, 128, True), bits=4, group_size=128)
    >>> register_parametrization(model, [("fc", "weight")], p)
    >>> torch.equal(model.fc.weight, p.dequantized())
    True
"""

from __future__ import annotations

import torch

from slimkit.authoring import SlimParametrization, register_stage
from slimkit.techniques.weight_only.grid import dequantize

QUANT_STAGE = register_stage("quant", 300)


class WeightOnlyQuant(SlimParametrization):
    """Block-wise integer weight: ``codes``, ``scales``, ``zeros`` buffers (see module doc).

    ``integer_zeros`` is False when the zero points are not integers (HQQ on an asymmetric
    grid), which a deployment format must store as floats.
    """

    stage = QUANT_STAGE

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, *,
                 bits: int, group_size: int | None, algorithm: str = "rtn",
                 integer_zeros: bool = True, group: str = ""):
        super().__init__(group)
        self.bits = int(bits)
        self.group_size = group_size
        self.algorithm = algorithm
        self.integer_zeros = bool(integer_zeros)
        self.register_buffer("codes", codes.to(torch.uint8).contiguous())
        self.register_buffer("scales", scales.float().contiguous())
        self.register_buffer("zeros", zeros.float().contiguous())
        # 1 once GPTQ / AWQ calibrated the codes (a buffer, so sk.load restores it).
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.uint8))
        # Calibration only: compute with the float weight under this parametrization
        # (passthrough) or with a candidate float weight (override) instead of the codes.
        self.passthrough = False
        self.override: torch.Tensor | None = None

    def set_(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> None:
        """Replace the quantized state in place (shapes must not change)."""
        if codes.shape != self.codes.shape or scales.shape != self.scales.shape:
            raise ValueError(
                f"new codes {tuple(codes.shape)} / scales {tuple(scales.shape)} do not match "
                f"{tuple(self.codes.shape)} / {tuple(self.scales.shape)}"
            )
        with torch.no_grad():
            self.codes.copy_(codes.to(torch.uint8))
            self.scales.copy_(scales.float())
            self.zeros.copy_(zeros.float())

    def dequantized(self) -> torch.Tensor:
        """``(codes - zeros) * scales`` as float32 ``[out, in]``."""
        return dequantize(self.codes, self.scales, self.zeros, self.group_size)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.override is not None:
            return self.override.to(dtype=w.dtype, device=w.device)
        if self.passthrough:
            return w
        return self.dequantized().to(dtype=w.dtype, device=w.device)

    def original_unused(self) -> bool:
        # The output depends on the codes only: the float weight gets no gradient.
        return True

    def extra_repr(self) -> str:
        gs = self.group_size if self.group_size is not None else "channel"
        return f"bits={self.bits}, group_size={gs}, algorithm={self.algorithm}"
