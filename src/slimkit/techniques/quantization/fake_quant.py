"""Fake quantization: round to the integer grid and back, with straight-through gradients.

Weights use symmetric scales (zero maps to integer 0, so pruned weights stay exactly zero and
every cluster value maps to one integer), per output channel or per group of input weights.
Activations use per-tensor affine parameters from an observer's range.

Example:
    >>> scale = weight_scale(w, bits=8, per_channel=True, group_size=None, narrow=True)
    >>> wq = fake_quant_weight(w, scale, bits=8, group_size=None, narrow=True)
    >>> (wq / expand_scale(scale, w, None)).round().abs().max() <= 127
"""

from __future__ import annotations

import torch

from slimkit.core.parametrize import (
    SlimParametrization,
    get_module,
    input_of,
    slim_parametrizations,
)
from slimkit.core.stages import register_stage
from slimkit.core.state import Sum
from slimkit.storage.intcodes import expand_scale

QUANT_STAGE = register_stage("quant", 300)


def weight_range(bits: int, narrow: bool) -> tuple[int, int]:
    """The integer range of a signed ``bits``-bit weight: narrow drops the lowest value."""
    hi = 2 ** (bits - 1) - 1
    return (-hi if narrow else -hi - 1), hi


def _grouped(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    # Rows are output channels; groups run along the flattened input dimension.
    m = w.reshape(w.shape[0], -1)
    return m if group_size is None else m.reshape(m.shape[0], -1, group_size)


def weight_scale(w: torch.Tensor, bits: int, per_channel: bool, group_size: int | None,
                 narrow: bool) -> torch.Tensor:
    """Symmetric scale: ``max|w| / qmax`` per tensor, per output channel or per group.

    Shape: ``()``, ``(out,)`` or ``(out, in // group_size)``. An all-zero channel gets scale 1
    (any scale represents it exactly; 1 avoids dividing by zero).
    """
    _, hi = weight_range(bits, narrow)
    w = w.detach()
    # max(-min, max) without a |w| temporary (this runs on every QAT step). Separate amin and
    # amax: torch.aminmax(dim=...) measured ~13x slower than both on CPU (torch 2.13).
    if group_size is not None:
        g = _grouped(w, group_size)
        wmin, wmax = g.amin(-1), g.amax(-1)
    elif per_channel and w.dim() > 1:
        m = w.reshape(w.shape[0], -1)
        wmin, wmax = m.amin(1), m.amax(1)
    else:
        wmin, wmax = w.amin(), w.amax()
    amax = torch.maximum(-wmin, wmax)
    return torch.where(amax > 0, amax / hi, torch.ones_like(amax)).float()


def on_tensor_grid(w: torch.Tensor, bits: int, narrow: bool) -> bool:
    """Whether ``w`` is exactly ``integers * max|w| / qmax`` (one symmetric per-tensor grid)."""
    if w.dim() < 2 or not w.numel():
        return False
    _, hi = weight_range(bits, narrow)
    amax = w.detach().abs().amax()
    if not bool(amax > 0):
        return False
    r = w.detach() * (hi / amax)
    return bool((r - r.round()).abs().amax() < 1e-3)


def quantize_weight(w: torch.Tensor, scale: torch.Tensor, bits: int, group_size: int | None,
                    narrow: bool) -> torch.Tensor:
    """The integers of ``w`` on the grid of ``scale`` (as a float tensor)."""
    lo, hi = weight_range(bits, narrow)
    return torch.clamp(torch.round(w / expand_scale(scale, w, group_size)), lo, hi)


class _FakeQuantSTE(torch.autograd.Function):
    """Round to the grid in the forward pass; pass the gradient straight through.

    Same result as ``x + (q - x).detach()`` in one autograd node: the backward pass is free,
    and torch's fused ``fake_quantize_*`` kernels measured ~9x slower on CPU (torch 2.13).
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, lo, hi):
        # One new tensor, then in place: this runs on every activation at every step.
        # round(x/s) + z clamped to [lo, hi], minus z == round(x/s) clamped to [lo-z, hi-z]
        # (z is an integer): two passes fewer than adding and removing the zero point.
        if isinstance(zero_point, torch.Tensor):
            # On CPU a clamp with tensor bounds measured ~15x slower than with numbers (torch
            # 2.13), and reading a CPU scalar costs no sync; elsewhere keep the tensor.
            zero_point = (zero_point.item() if zero_point.device.type == "cpu"
                          else zero_point.to(x.dtype))
        lo, hi = lo - zero_point, hi - zero_point
        return (x / scale).round_().clamp_(lo, hi).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None, None


def fake_quant(x: torch.Tensor, scale, zero_point, lo: int, hi: int) -> torch.Tensor:
    """``x`` quantized to ``[lo, hi]`` with ``scale`` / ``zero_point`` and back (STE gradient)."""
    return _FakeQuantSTE.apply(x, scale, zero_point, lo, hi)


def fake_quant_weight(w: torch.Tensor, scale: torch.Tensor, bits: int, group_size: int | None,
                      narrow: bool) -> torch.Tensor:
    """``w`` rounded to its grid, with a straight-through gradient."""
    lo, hi = weight_range(bits, narrow)
    return fake_quant(w, expand_scale(scale, w, group_size), 0, lo, hi)


class WeightFakeQuant(SlimParametrization):
    """Fake-quantizes a weight (stage ``"quant"``: after pruning masks and cluster snapping).

    The scale is recomputed from the incoming weight on every forward pass, so it follows
    the weights during QAT and matches the exported int8 weights exactly. The ``step`` buffer,
    advanced by :class:`slimkit.Scheduler`, freezes the layer's activation observers at
    ``freeze_step``.

    Example:
        >>> p = WeightFakeQuant(bits=8, per_channel=True, group_size=None, narrow=True)
        >>> torch.nn.utils.parametrize.register_parametrization(linear, "weight", p)
    """

    stage = QUANT_STAGE

    def __init__(self, bits: int, per_channel: bool, group_size: int | None, narrow: bool,
                 freeze_step: int | None = None, group: str = "", input_axis: int = 1):
        super().__init__(group)
        self.bits, self.per_channel, self.group_size, self.narrow = (
            bits, per_channel, group_size, narrow)
        self.freeze_step = freeze_step
        # 0 for a weight stored (in, out) (Hugging Face's Conv1D): the grid is computed on its
        # transpose, so scales run over output channels and groups over inputs as for Linear.
        self.input_axis = input_axis
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def canonical(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` in the ``(out, in, ...)`` layout the grid is defined on (a view)."""
        return w.t() if self.input_axis == 0 else w

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        """The scale of weight ``w`` (given in the layer's own layout), for its canonical
        ``(out, in)`` form: shape ``()``, ``(out,)`` or ``(out, in // group_size)``."""
        w = self.canonical(w)
        if (self.per_channel and self.group_size is None and not torch.is_grad_enabled()
                and on_tensor_grid(w, self.bits, self.narrow)):
            # Baked on one scale per tensor (quantized after per-tensor clustering, then
            # stripped): that scale gives back exactly these integers, per-channel ones would
            # not. Checked outside autograd only (export, strip, load), never in a QAT step.
            return weight_scale(w, self.bits, False, None, self.narrow)
        return weight_scale(w, self.bits, self.per_channel, self.group_size, self.narrow)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        out = fake_quant_weight(self.canonical(w), self.scale(w), self.bits, self.group_size,
                                self.narrow)
        return self.canonical(out)

    def extra_repr(self) -> str:
        gran = f"group={self.group_size}" if self.group_size else (
            "per_channel" if self.per_channel else "per_tensor")
        return f"int{self.bits}, {gran}, narrow={self.narrow}, step={int(self.step)}"

    def stats(self) -> dict:
        return {"quantized_tensors": Sum(1)}


def quantized_weights(model):
    """Every fake-quantized weight as ``(key, module, p, q, scale, baked)``: its integers, its
    scale and exactly what strip writes (``p(w)``), computed from the weight as it enters the
    fake-quant stage. Export and the packed format both store these numbers. ``q`` and
    ``scale`` are in the canonical ``(out, in)`` layout, ``baked`` in the layer's own
    (``p.input_axis == 0``: stored ``(in, out)``).

    Example:
        >>> for key, module, p, q, scale, baked in quantized_weights(model):
        ...     assert torch.equal(p.canonical(baked), q * expand_scale(scale, q, p.group_size))
    """
    for mname, tname, index, p in slim_parametrizations(model):
        if not isinstance(p, WeightFakeQuant):
            continue
        module = get_module(model, mname)
        with torch.no_grad():
            w = input_of(module, tname, index)
            scale = p.scale(w)
            q = quantize_weight(p.canonical(w), scale, p.bits, p.group_size, p.narrow)
            baked = p(w)
        yield (f"{mname}.{tname}" if mname else tname), module, p, q, scale, baked
