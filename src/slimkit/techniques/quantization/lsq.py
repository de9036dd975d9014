"""Learned step sizes (LSQ, Esser et al. 2020): QAT whose weight and activation scales train.

``QATConfig(learn_ranges=True)`` gives every quantized weight a :class:`LearnedWeightFakeQuant`
(one trainable step size per output channel, or per tensor) and every activation a
:class:`LearnedActivationQuantizer` (one trainable step size; the zero point is fixed when
the range is first observed). The step sizes are ordinary parameters: the user's optimizer
moves them with the weights. The gradient of a step size is LSQ's: ``round(v) - v`` inside the
grid, the clamp bound outside it, scaled by ``1 / sqrt(elements * qmax)`` so that step sizes
and weights move at comparable rates. Export writes the learned scales (the forward pass
computes exactly ``integer * scale``).

Example:
    >>> sk.quantize(model, sk.QATConfig(weight_bits=4, learn_ranges=True), calibration=x[:100])
    >>> opt = torch.optim.Adam(model.parameters(), 1e-4)     # step sizes included
    >>> train(...); sk.export_onnx(model, "w4a8.onnx", example_inputs=x[:8])
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from slimkit.storage.intcodes import expand_scale
from slimkit.techniques.quantization.activation import ActivationQuantizer, activation_range
from slimkit.techniques.quantization.fake_quant import WeightFakeQuant, weight_range, weight_scale

# Step sizes stay positive: a floor far below any useful step (float32 weights ~1e-3).
_MIN_STEP = 1e-8


class _LSQ(torch.autograd.Function):
    """``clamp(round(x / s), lo, hi) * s`` with LSQ's gradients for ``x`` and ``s``.

    ``s`` is already expanded to ``x``'s shape (autograd sums its gradient back through the
    expansion to the parameter's shape); ``g`` is the gradient scale. The forward pass is the very arithmetic of
    :func:`slimkit.techniques.quantization.fake_quant.fake_quant` (so export is exact).
    """

    @staticmethod
    def forward(ctx, x, s, lo, hi, g):
        v = x / s
        q = v.round().clamp_(lo, hi)
        ctx.save_for_backward(v, q)
        ctx.lo, ctx.hi, ctx.g = lo, hi, g
        return q * s

    @staticmethod
    def backward(ctx, grad):
        v, q = ctx.saved_tensors
        inside = (v >= ctx.lo) & (v <= ctx.hi)
        grad_x = grad * inside
        # d(q*s)/ds: (round(v) - v) inside the grid, the bound (lo or hi) outside it.
        ds = torch.where(inside, q - v, q) * grad * ctx.g
        return grad_x, ds, None, None, None


def lsq_fake_quant(x, s_full, lo, hi, g):
    """Fake-quantize ``x`` with a trainable step size (``s_full`` expanded to ``x``)."""
    return _LSQ.apply(x, s_full, lo, hi, g)


def _positive(step: torch.Tensor) -> torch.Tensor:
    return step.abs().clamp(min=_MIN_STEP)


class LearnedWeightFakeQuant(WeightFakeQuant):
    """Weight fake-quant with a trainable step size per output channel (or per tensor).

    Initialised to the fixed scheme's scale (``max|w| / qmax``) of the weight it is attached
    to, then trained. :meth:`scale` returns the learned scale, so ``quantized_weights`` (the
    export and the packed format) store the learned grid.

    Example:
        >>> p = LearnedWeightFakeQuant(4, True, None, True, init=conv.weight)
        >>> torch.nn.utils.parametrize.register_parametrization(conv, "weight", p)
    """

    def __init__(self, bits: int, per_channel: bool, group_size: int | None, narrow: bool,
                 init: torch.Tensor, freeze_step: int | None = None, group: str = ""):
        super().__init__(bits, per_channel, group_size, narrow, freeze_step=freeze_step,
                         group=group)
        if group_size is not None:
            raise ValueError(
                f"learned step sizes are per channel or per tensor, got group_size={group_size} "
                "(QATConfig.group_size with learn_ranges=True): set group_size=None"
            )
        self.step_size = nn.Parameter(weight_scale(init, bits, per_channel, None, narrow))

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        return _positive(self.step_size.detach())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        lo, hi = weight_range(self.bits, self.narrow)
        s = _positive(self.step_size)
        per_scale = w.numel() // max(s.numel(), 1)
        g = 1.0 / math.sqrt(per_scale * hi)
        return lsq_fake_quant(w, expand_scale(s, w, None), lo, hi, g)

    def extra_repr(self) -> str:
        return "learned step, " + super().extra_repr()


class LearnedActivationQuantizer(ActivationQuantizer):
    """An activation quantizer whose step size trains (LSQ); the zero point stays fixed.

    The range is first observed (calibration data, or the first training batch), which sets
    the zero point and the initial step size; from then on the optimizer moves the step size
    and the observer is idle. ``qparams()`` returns the learned ``(scale, zero_point)``, which
    is what export writes.
    """

    # The step size is a parameter (synchronised like any other); the observed range only
    # initialises it.
    sync_rules = {"lo": "min", "hi": "max", "calibrated": "any", "zero_point": "max"}

    def __init__(self, cfg, qat: bool = True, relu_first: bool = False,
                 relu_cap: float | None = None, freeze_step: int | None = None, group: str = ""):
        super().__init__(cfg, qat=qat, relu_first=relu_first, relu_cap=relu_cap,
                         freeze_step=None, group=group)
        self.step_size = nn.Parameter(torch.ones(()))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.long))

    def set_range(self, lo: float, hi: float) -> None:
        super().set_range(lo, hi)
        scale, zp = super().qparams()
        with torch.no_grad():
            self.step_size.fill_(scale)
        self.zero_point.fill_(zp)

    def moves_in_forward(self) -> bool:
        return self.training and not bool(self.calibrated)

    def qparams(self) -> tuple[float, int]:
        return float(_positive(self.step_size.detach())), int(self.zero_point)

    def tensor_qparams(self):
        return _positive(self.step_size.detach()), self.zero_point.float()

    def layer_stats(self) -> dict:
        if not bool(self.calibrated):
            return {}
        scale, zp = self.qparams()
        qmin, qmax = activation_range(self.dtype)
        return {"range_lo": (qmin - zp) * scale, "range_hi": (qmax - zp) * scale}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.relu_first:
            x = self._relu(x)
        if self.export is not None:
            from slimkit.techniques.quantization.activation import export_fake_quant

            return export_fake_quant(x, *self.export, self.dtype)
        if self.calibrating:
            self.observer.update(x)
            return x
        if not bool(self.calibrated):
            if not self.training:
                return x
            with torch.no_grad():  # the first training batch sets the initial range
                self.set_range(float(x.amin()), float(x.amax()))
        qmin, qmax = activation_range(self.dtype)
        zp = int(self.zero_point)
        s = _positive(self.step_size)
        g = 1.0 / math.sqrt(x.numel() * (qmax - qmin))
        return lsq_fake_quant(x, s.expand_as(x), qmin - zp, qmax - zp, g)

    def extra_repr(self) -> str:
        return "learned step, " + super().extra_repr()
