"""Activation quantizers: observers and fake-quant on the inputs and outputs of quantized layers.

They are child modules of the layer they serve (``layer.sk_input_quant`` /
``layer.sk_output_quant``), called from forward hooks, so the model keeps its structure, its
state_dict carries the ranges, and ``copy.deepcopy`` / ``sk.save`` just work.

Example:
    >>> attach(conv, ActivationQuantizer(cfg), ActivationQuantizer(cfg, relu_first=True))
    >>> conv(x)     # input and (ReLU'd) output fake-quantized once calibrated
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.core.state import SlimState, Sum
from slimkit.techniques.quantization.config import QuantizationConfig
from slimkit.techniques.quantization.fake_quant import fake_quant
from slimkit.techniques.quantization.observers import make_observer

INPUT, OUTPUT = "sk_input_quant", "sk_output_quant"


def activation_range(cfg_dtype: str) -> tuple[int, int]:
    return (0, 255) if cfg_dtype == "uint8" else (-128, 127)


def qparams(lo: float, hi: float, dtype: str, symmetric: bool) -> tuple[float, int]:
    """(scale, zero point) of a range, the range widened to include 0 (so 0 is exact)."""
    qmin, qmax = activation_range(dtype)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        amax = max(-lo, hi)
        scale = amax / ((qmax - qmin) // 2) if amax > 0 else 1.0
        return scale, (qmin + qmax + 1) // 2
    scale = (hi - lo) / (qmax - qmin) if hi > lo else 1.0
    zp = int(min(max(round(qmin - lo / scale), qmin), qmax))
    return scale, zp


def _exporting() -> bool:
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


class ActivationQuantizer(SlimState, nn.Module):
    """Observes a tensor, then fake-quantizes it per tensor with the observed range.

    PTQ: observes while ``calibrating`` (float passes through), then quantizes with the
    frozen range. QAT (``qat=True``): in training mode it observes and quantizes at once,
    until ``frozen`` (set by the scheduler at ``freeze_observers_step``).
    ``relu_first`` applies the ReLU that follows the layer before quantizing, as ORT fuses it;
    with ``relu_cap`` it is a capped ReLU (ReLU6: ``relu_cap=6.0``), exported as Clip, which
    ORT drops in front of QuantizeLinear because the quantized range lies inside it.
    """

    # The observed range moves in QAT's forward passes, on each rank's own batch: over a
    # distributed job the ranges are reduced (min of lo, max of hi) where a rank has one.
    sync_rules = {"lo": "min", "hi": "max", "calibrated": "any", "frozen": "any"}
    sync_valid = "calibrated"

    def __init__(self, cfg: QuantizationConfig, qat: bool = False, relu_first: bool = False,
                 relu_cap: float | None = None, freeze_step: int | None = None,
                 group: str = ""):
        super().__init__()
        self.freeze_step, self.group = freeze_step, group
        self.dtype = cfg.activation_dtype
        self.symmetric = cfg.activation_scheme == "symmetric"
        self.observer_name, self.percentile = cfg.observer, cfg.percentile
        self.averaging_constant = cfg.averaging_constant
        self.qat, self.relu_first, self.relu_cap = qat, relu_first, relu_cap
        self.calibrating = False
        self.export = None  # (scale, zero point) as Python numbers once in export mode
        self.observer = None
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))
        # Advanced by sk.Scheduler; the range freezes at freeze_step (QAT).
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before activation quantizers had a step count: the frozen flag
        # they stored already says whether the range moves.
        state_dict.setdefault(f"{prefix}step", torch.zeros((), dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def on_step(cls, model: nn.Module, sites: list) -> None:
        for site in sites:
            q = site.state
            if q.freeze_step is not None and int(q.step) >= q.freeze_step and not bool(q.frozen):
                q.frozen.fill_(True)

    def stats(self) -> dict:
        return {"observers": Sum(1), "observers_calibrated": Sum(bool(self.calibrated)),
                "observers_frozen": Sum(bool(self.frozen))}

    def layer_stats(self) -> dict:
        if not bool(self.calibrated):
            return {}
        return {"range_lo": float(self.lo), "range_hi": float(self.hi)}

    def moves_in_forward(self) -> bool:
        return self.qat and self.training and not bool(self.frozen)

    @property
    def levels(self) -> int:
        qmin, qmax = activation_range(self.dtype)
        return qmax - qmin + 1

    def qparams(self) -> tuple[float, int]:
        lo, hi = float(self.lo), float(self.hi)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            # Not "cannot convert float NaN to integer" from deep inside the zero point.
            raise FloatingPointError(
                f"slimkit: an activation quantizer's range became [{lo}, {hi}] after "
                f"{int(self.step)} step(s): the activations it observes are not finite, so "
                "training (or the calibration data) diverged. Under QAT this usually means the "
                "learning rate is too high for the model with fake quantization: lower it, "
                "clip gradients, or freeze the observers earlier "
                "(QATConfig.freeze_observers_step)"
            )
        return qparams(lo, hi, self.dtype, self.symmetric)

    def start_calibration(self) -> None:
        self.observer = make_observer(self.observer_name, self.percentile, self.averaging_constant)
        self.calibrating = True

    def finish_calibration(self) -> bool:
        """Set the range from what was observed; False if the layer never ran."""
        self.calibrating = False
        obs, self.observer = self.observer, None
        if obs is None or obs.lo is None:
            return False
        lo, hi = obs.range(self.levels)
        self.set_range(lo, hi)
        return True

    def set_range(self, lo: float, hi: float) -> None:
        self.lo.fill_(lo)
        self.hi.fill_(hi)
        self.calibrated.fill_(True)

    def _observe_training(self, x: torch.Tensor) -> None:
        # Tensor ops only: this runs on every training step, and Python round trips per
        # layer would dominate QAT's overhead on small models.
        with torch.no_grad():
            if self.observer_name in ("minmax", "moving_average"):
                # amin / amax, not aminmax: measured 1.4x faster on CPU (torch 2.13).
                x = x.detach()
                hi = x.amax()
                if self.relu_first:  # x may be the pre-ReLU tensor (see forward)
                    lo = torch.zeros_like(hi)
                    hi = hi.clamp(0.0, self.relu_cap) if self.relu_cap else hi.clamp(min=0.0)
                else:
                    lo = x.amin()
            else:
                obs = make_observer(self.observer_name, self.percentile)
                obs.update(self._relu(x) if self.relu_first else x)
                lo, hi = (torch.tensor(v) for v in obs.range(self.levels))
            if not bool(self.calibrated):
                self.lo.copy_(lo)
                self.hi.copy_(hi)
                self.calibrated.fill_(True)
            elif self.observer_name == "minmax":
                torch.minimum(self.lo, lo, out=self.lo)
                torch.maximum(self.hi, hi, out=self.hi)
            else:
                self.lo.add_(self.averaging_constant * (lo - self.lo))
                self.hi.add_(self.averaging_constant * (hi - self.hi))

    def tensor_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`qparams` as float32 tensors (scale, integer-valued zero point), no sync."""
        qmin, qmax = activation_range(self.dtype)
        lo, hi = torch.clamp(self.lo, max=0.0), torch.clamp(self.hi, min=0.0)
        if self.symmetric:
            scale = torch.maximum(-lo, hi) / ((qmax - qmin) // 2)
            zp = torch.full((), float((qmin + qmax + 1) // 2))
        else:
            scale = (hi - lo) / (qmax - qmin)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        if not self.symmetric:
            zp = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax)
        return scale.float(), zp.float()

    def _relu(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) if self.relu_cap is None else torch.clamp(x, 0.0, self.relu_cap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # QAT training with an asymmetric grid whose zero point is the lowest integer: the
        # clamp inside fake-quant already zeroes negatives (and caps at the range's top, below
        # a ReLU6's cap), so the ReLU is left to the model's own ReLU that follows. Same
        # values and gradients, one ReLU forward and backward fewer per layer and step.
        by_clamp = self.relu_first and self.qat and self.training and not self.symmetric
        if self.relu_first and not by_clamp:
            x = self._relu(x)
        if self.export is not None:
            return export_fake_quant(x, *self.export, self.dtype)
        if self.calibrating:
            self.observer.update(x)
            return x
        if self.qat and self.training and not bool(self.frozen):
            self._observe_training(x)
        if not bool(self.calibrated):
            return x
        # On CPU, reading the two range scalars costs no device sync, and the Python
        # arithmetic of qparams() (the very numbers export writes) replaces ~10 tiny tensor
        # ops per call; on an accelerator the tensor form avoids the sync.
        scale, zp = self.qparams() if x.device.type == "cpu" else self.tensor_qparams()
        qmin, qmax = activation_range(self.dtype)
        return fake_quant(x, scale, zp, qmin, qmax)

    def extra_repr(self) -> str:
        if not bool(self.calibrated):
            return f"{self.dtype}, {self.observer_name}, not calibrated"
        scale, zp = self.qparams()
        fused = f", relu_cap={self.relu_cap}" if self.relu_cap is not None else ""
        return (f"{self.dtype}, scale={scale:.4g}, zero_point={zp}, "
                f"relu_first={self.relu_first}{fused}")


class DynamicQuantizer(nn.Module):
    """Quantizes a tensor per tensor with its own min/max at run time (uint8, asymmetric).

    The arithmetic is ONNX's DynamicQuantizeLinear. Under export it is the identity: the
    ONNX rewrite inserts DynamicQuantizeLinear itself, so ORT runs MatMulInteger.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _exporting():
            return x
        with torch.no_grad():
            lo = torch.clamp(x.min(), max=0.0)
            hi = torch.clamp(x.max(), min=0.0)
            scale = torch.where(hi > lo, (hi - lo) / 255.0, torch.ones_like(hi))
            zp = torch.clamp(torch.round(-lo / scale), 0, 255)
        return fake_quant(x, scale, zp, 0, 255)


def export_fake_quant(x: torch.Tensor, scale: float, zp: int, dtype: str) -> torch.Tensor:
    """Quantize-dequantize with ops ``torch.onnx`` turns into QuantizeLinear/DequantizeLinear.

    ``torch.fake_quantize_per_tensor_affine`` fails under ``torch.export`` with a dynamic batch
    axis (torch 2.13), the decomposed ops do not.
    """
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers the ops)

    qd = torch.ops.quantized_decomposed
    qmin, qmax = activation_range(dtype)
    tdtype = torch.uint8 if dtype == "uint8" else torch.int8
    q = qd.quantize_per_tensor(x, scale, zp, qmin, qmax, tdtype)
    return qd.dequantize_per_tensor(q, scale, zp, qmin, qmax, tdtype)


def _pre_hook(module: nn.Module, args):
    q = module._modules.get(INPUT)
    if q is None or not args:
        return None
    return (q(args[0]), *args[1:])


def _post_hook(module: nn.Module, args, output):
    q = module._modules.get(OUTPUT)
    return None if q is None else q(output)


def attach(module: nn.Module, input_q: nn.Module | None, output_q: nn.Module | None) -> None:
    """Give ``module`` its activation quantizers and the hooks that call them."""
    if input_q is not None:
        module.add_module(INPUT, input_q)
    if output_q is not None:
        module.add_module(OUTPUT, output_q)
    if _pre_hook not in module._forward_pre_hooks.values():
        module.register_forward_pre_hook(_pre_hook)
    if _post_hook not in module._forward_hooks.values():
        module.register_forward_hook(_post_hook)

