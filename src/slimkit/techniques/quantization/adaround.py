"""AdaRound (Nagel et al. 2020): learn, layer by layer, whether each weight rounds up or down.

Round-to-nearest is not the best rounding for a layer's output: the errors of neighbouring
weights add up. AdaRound keeps each weight's grid (the per-channel scale of the fixed
scheme) and learns a soft rounding ``h(V) in [0, 1]`` added to ``floor(w / s)``, minimising
the layer's output error on unlabeled calibration data, with a regulariser that drives every
``h`` to exactly 0 or 1. Layers are optimised in execution order; each one's input comes from
the model whose earlier layers are already rounded (and, in static mode, whose activations
are already quantized with calibrated ranges), its target from the float model.

The learned integers are baked into the weight as ``q * s``; the weight that sets each
channel's scale keeps its round-to-nearest value (``±qmax``), so the existing fake-quant
recomputes the same scale and the same integers, and export writes exactly them.

Example:
    >>> sk.quantize(model, sk.AdaRoundConfig(weight_bits=4), calibration=x_train[:256])
    >>> sk.export_onnx(model, "w4a8.onnx", example_inputs=x_train[:8])
"""

from __future__ import annotations

import math
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.core.parametrize import get_module, input_of, slim_parametrizations
from slimkit.core.state import Sum
from slimkit.storage.intcodes import expand_scale
from slimkit.techniques.quantization.activation import OUTPUT
from slimkit.techniques.quantization.fake_quant import (
    QUANT_STAGE,
    WeightFakeQuant,
    quantize_weight,
    weight_range,
)

# The rectified sigmoid's stretch (the paper's zeta and gamma): h reaches 0 and 1 exactly.
ZETA, GAMMA = 1.1, -0.1
ROUNDABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


class AdaRoundWeightFakeQuant(WeightFakeQuant):
    """The fixed-grid weight fake-quant of an AdaRound layer, plus whether its rounding has
    been learned (``rounded``): export refuses a layer AdaRound never reached."""

    def __init__(self, bits: int, per_channel: bool, group_size: int | None, narrow: bool,
                 group: str = ""):
        super().__init__(bits, per_channel, group_size, narrow, group=group)
        self.register_buffer("rounded", torch.zeros((), dtype=torch.bool))

    def stats(self) -> dict:
        return {**super().stats(), "adarounded": Sum(bool(self.rounded))}

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rounded={bool(self.rounded)}"


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _init_v(frac: torch.Tensor) -> torch.Tensor:
    # h(V) = frac at the start: soft rounding begins where the weight lies between grid points.
    p = ((frac - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


def adaround_layers(model: nn.Module) -> list[tuple[str, int, AdaRoundWeightFakeQuant]]:
    """``(name, index, p)`` of every AdaRound weight fake-quant."""
    return [(m, i, p) for m, t, i, p in slim_parametrizations(model)
            if t == "weight" and isinstance(p, AdaRoundWeightFakeQuant)]


def _layer_fn(module: nn.Module):
    if isinstance(module, nn.Linear):
        return lambda x, w: F.linear(x, w, module.bias)
    return lambda x, w: module._conv_forward(x, w, module.bias)


def _output_activation(module: nn.Module):
    """The ReLU fused into the layer's output quantizer (the paper includes it in the loss)."""
    q = module._modules.get(OUTPUT)
    if q is None or not getattr(q, "relu_first", False):
        return lambda y: y
    cap = q.relu_cap
    return (lambda y: F.relu(y)) if cap is None else (lambda y: torch.clamp(y, 0.0, cap))


def _capture_inputs(model, batches, name: str) -> torch.Tensor:
    """What ``name`` receives (after its own input quantizer) on every batch, concatenated."""
    from slimkit.core.batch import call_model

    got = []

    def hook(module, args):
        got.append(args[0].detach())

    h = get_module(model, name).register_forward_pre_hook(hook)  # after the quantizer's hook
    try:
        with torch.no_grad():
            for batch in batches:
                call_model(model, batch)
    finally:
        h.remove()
    if not got:
        raise ValueError(f"AdaRound: calibration never reached layer {name}")
    return torch.cat(got, 0)


def round_layer(module: nn.Module, w: torch.Tensor, p: WeightFakeQuant, x_q: torch.Tensor,
                x_fp: torch.Tensor, config) -> tuple[torch.Tensor, dict]:
    """Learn the rounding of one layer; returns its integers (as floats) and a summary."""
    lo, hi = weight_range(p.bits, p.narrow)
    with torch.no_grad():
        scale = p.scale(w)
        s = expand_scale(scale, w, None)
        ratio = w / s
        nearest = quantize_weight(w, scale, p.bits, None, p.narrow)
        floor = torch.floor(ratio)
        # Kept at round-to-nearest: exact zeros (pruned weights stay zero) and each channel's
        # largest magnitude (it is +-qmax and defines the scale the export recomputes).
        rows = ratio.abs().reshape(w.shape[0] if scale.dim() else 1, -1)
        top = torch.zeros_like(rows, dtype=torch.bool)
        top.scatter_(1, rows.argmax(1, keepdim=True), True)
        fixed = (w == 0) | top.reshape(w.shape)
    v = nn.Parameter(_init_v(ratio - floor))
    opt = torch.optim.Adam([v], lr=config.learning_rate)
    fn, act = _layer_fn(module), _output_activation(module)
    gen = torch.Generator().manual_seed(config.seed)
    n = x_q.shape[0]
    warm = int(config.warmup * config.iterations)
    start_beta, end_beta = config.beta
    dim = -1 if isinstance(module, nn.Linear) else 1
    free = (~fixed).to(w.dtype)
    with torch.no_grad():
        targets = torch.cat([act(fn(x_fp[i:i + 256], w)) for i in range(0, n, 256)])
    for it in range(config.iterations):
        idx = torch.randint(0, n, (min(config.batch_size, n),), generator=gen)
        h = rectified_sigmoid(v)
        q = torch.where(fixed, nearest, torch.clamp(floor + h, lo, hi))
        out = act(fn(x_q[idx], q * s))
        rec = (out - targets[idx]).pow(2).sum(dim).mean()
        loss = rec
        if it >= warm and config.regularization > 0:
            t = (it - warm) / max(config.iterations - warm, 1)
            beta = end_beta + 0.5 * (start_beta - end_beta) * (1 + math.cos(math.pi * t))
            reg = ((1 - (2 * h - 1).abs().pow(beta)) * free).sum()
            loss = rec + config.regularization * reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        q = torch.where(fixed, nearest, torch.clamp(floor + (v >= 0).to(w.dtype), lo, hi))
        final = float((act(fn(x_q, q * s)) - targets).pow(2).sum(dim).mean())
        rtn = float((act(fn(x_q, nearest * s)) - targets).pow(2).sum(dim).mean())
    return q, {"loss_nearest": rtn, "loss_adaround": final,
               "changed": float((q != nearest).float().mean())}


def _bake(module: nn.Module, index: int, p: WeightFakeQuant, name: str, q: torch.Tensor,
          scale: torch.Tensor) -> None:
    """Write ``q * scale`` as the weight and check that the fake-quant gives back ``q``."""
    plist = module.parametrizations.weight
    for earlier in list(plist)[:index]:
        if getattr(earlier, "stage", None) != "mask":
            raise ValueError(
                f"AdaRound bakes its rounding into {name}.weight, but a {type(earlier).__name__} "
                f"(stage {getattr(earlier, 'stage', '?')!r}) comes before the fake-quant: only "
                "pruning masks may precede it (cluster first, then use rounding='nearest')"
            )
    with torch.no_grad():
        new = q * expand_scale(scale, q, None)
        plist.original.copy_(new)
        w = input_of(module, "weight", index)
        again = quantize_weight(w, p.scale(w), p.bits, None, p.narrow)
    if not torch.equal(again, q):  # the scale moved: never export integers we did not learn
        raise RuntimeError(
            f"AdaRound: {name}.weight does not reproduce its learned integers after baking "
            f"({int((again != q).sum())} differ)"
        )


def adaround(model: nn.Module, config, data, *, batch_size: int = 32,
             progress: bool = True) -> dict:
    """Learn the rounding of every AdaRound layer of a prepared model on ``data`` (in place).

    Returns ``{layer: {"loss_nearest", "loss_adaround", "changed", "seconds"}}``. Layers that
    are not Conv1d/Conv2d/Linear keep round-to-nearest (listed in a warning).
    """
    from rich.progress import Progress

    from slimkit.techniques.quantization.bias_correction import (
        as_batches,
        execution_order,
        float_mode,
    )

    layers = adaround_layers(model)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no AdaRound layer: prepare it with "
            "sk.quantize(model, sk.AdaRoundConfig(...), calibration=data)"
        )
    batches = as_batches(data, batch_size)
    by_name = {n: (i, p) for n, i, p in layers}
    others = sorted(n for n in by_name if not isinstance(get_module(model, n), ROUNDABLE))
    order = execution_order(model, batches[0], [n for n in by_name if n not in others])
    never = sorted(set(by_name) - set(order) - set(others))
    if never:
        raise ValueError(f"AdaRound: calibration never reached layer(s) {', '.join(never)}")
    report = {}
    was_training = model.training
    model.eval()
    try:
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task("AdaRound", total=len(order))
            for name in order:
                t0 = time.perf_counter()
                index, p = by_name[name]
                module = get_module(model, name)
                if config.rounding == "adaround":
                    x_q = _capture_inputs(model, batches, name)
                    with float_mode(model):
                        x_fp = _capture_inputs(model, batches, name)
                    with torch.no_grad():
                        w = input_of(module, "weight", index).detach().clone()
                    if p.group_size is not None:
                        raise ValueError(f"AdaRound: {name} is quantized per group; "
                                         "AdaRound learns per-channel or per-tensor grids")
                    q, info = round_layer(module, w, p, x_q, x_fp, config)
                    _bake(module, index, p, name, q, p.scale(w))
                    report[name] = {**info, "seconds": time.perf_counter() - t0}
                p.rounded.fill_(True)
                bar.advance(task)
    finally:
        model.train(was_training)
    for name in others:
        by_name[name][1].rounded.fill_(True)
    if others and config.rounding == "adaround":
        warnings.warn(
            f"slimkit: AdaRound keeps round-to-nearest for {len(others)} layer(s) it does not "
            "optimise (not Conv1d/Conv2d/Linear): " + ", ".join(others),
            stacklevel=3,
        )
    return report


def check_rounded(model: nn.Module) -> None:
    """Raise if an AdaRound layer's rounding was never learned (no calibration ran)."""
    idle = [n for n, _i, p in adaround_layers(model) if not bool(p.rounded)]
    if idle:
        raise ValueError(
            f"AdaRound never ran on {', '.join(idle[:5])}{' ...' if len(idle) > 5 else ''}: "
            "AdaRound needs calibration data, pass it with "
            "sk.quantize(model, sk.AdaRoundConfig(...), calibration=data)"
        )


__all__ = ["QUANT_STAGE", "AdaRoundWeightFakeQuant", "adaround", "check_rounded"]
