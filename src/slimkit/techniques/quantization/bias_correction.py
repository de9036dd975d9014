"""Bias correction: remove the mean output error that quantizing a layer's weight introduces.

A quantized weight ``Wq = W + dW`` shifts the layer's output by ``dW @ E[x]`` on average; that
bias propagates and grows through the network (Nagel et al. 2019). Two ways to know ``E[x]``:

- ``"empirical"``: calibration data. Layer by layer in execution order, the mean of each output
  channel of the quantized model is measured against the float model's and the difference is
  subtracted from the bias (so errors of the layers before are corrected too).
- ``"bn"``: data-free. A layer whose input is ``act(y)`` for a BatchNorm'd ``y`` of the layer
  before sees ``y_c ~ N(beta_c, gamma_c)`` per channel; ``E[relu(y)]`` (or the capped ReLU's)
  has a closed form, and ``dW @ E[x]`` follows (zero padding at the borders is ignored).

Example:
    >>> correct_bias_empirical(model, x_train[:100])     # after prepare, before calibration
"""

from __future__ import annotations

import contextlib
import math
import warnings

import torch
import torch.nn as nn

from slimkit.core.batch import batch_inputs, call_model
from slimkit.core.parametrize import get_module, input_of, slim_parametrizations
from slimkit.techniques.quantization.activation import ActivationQuantizer, DynamicQuantizer
from slimkit.techniques.quantization.fake_quant import WeightFakeQuant

CORRECTABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _identity(x):
    return x


@contextlib.contextmanager
def float_mode(model: nn.Module):
    """Run a prepared model as the float model it came from: weight fake-quant and activation
    quantizers pass their input through (the model's own ReLUs still run)."""
    patched = [m for m in model.modules()
               if isinstance(m, (WeightFakeQuant, ActivationQuantizer, DynamicQuantizer))]
    try:
        for m in patched:
            m.forward = _identity  # an instance attribute shadows the class's forward
        yield model
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)


def weight_quantizer(model: nn.Module, name: str):
    """``(index, p)`` of the weight fake-quant on ``name.weight``, or None."""
    for mname, tname, index, p in slim_parametrizations(model):
        if mname == name and tname == "weight" and isinstance(p, WeightFakeQuant):
            return index, p
    return None


def correctable_layers(model: nn.Module) -> list[str]:
    """The Conv/Linear layers with a weight fake-quant and a bias to correct."""
    out = []
    for mname, tname, _index, p in slim_parametrizations(model):
        m = get_module(model, mname)
        if (tname == "weight" and isinstance(p, WeightFakeQuant) and isinstance(m, CORRECTABLE)
                and m.bias is not None):
            out.append(mname)
    return out


def add_zero_biases(model: nn.Module, names) -> None:
    """Give the Conv/Linear layers among ``names`` without a bias a zero bias to correct."""
    for name in names:
        m = get_module(model, name)
        if isinstance(m, CORRECTABLE) and m.bias is None:
            w = m.weight if not hasattr(m, "parametrizations") else \
                m.parametrizations.weight.original
            m.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))


def _channel_dim(m: nn.Module) -> int:
    return -1 if isinstance(m, nn.Linear) else 1


def _channel_mean(m: nn.Module, y: torch.Tensor) -> tuple[torch.Tensor, int]:
    d = _channel_dim(m) % y.dim()
    dims = [i for i in range(y.dim()) if i != d]
    return y.detach().double().sum(dims), y.numel() // y.shape[d]


def _output_means(model, batches, names: list[str]) -> dict[str, torch.Tensor]:
    sums: dict[str, list] = {n: [0.0, 0] for n in names}
    handles = []

    def hook_for(name):
        def hook(module, args, output):
            s, n = _channel_mean(module, output)
            sums[name][0] = sums[name][0] + s
            sums[name][1] += n
        return hook

    for name in names:
        # prepend: the layer's raw output, before its output quantizer (and fused ReLU).
        handles.append(get_module(model, name).register_forward_hook(hook_for(name),
                                                                     prepend=True))
    try:
        with torch.no_grad():
            for batch in batches:
                call_model(model, batch)
    finally:
        for h in handles:
            h.remove()
    return {n: (s / max(c, 1)).float() for n, (s, c) in sums.items() if c}


def execution_order(model: nn.Module, batch, names) -> list[str]:
    """``names`` in the order the model runs them on ``batch`` (never-run layers dropped)."""
    order, handles = [], []
    for name in names:
        def hook(module, args, name=name):
            if name not in order:
                order.append(name)
        handles.append(get_module(model, name).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            call_model(model, batch)
    finally:
        for h in handles:
            h.remove()
    return order


def as_batches(data, batch_size: int) -> list:
    """Calibration data (a tensor, or an iterable of batches) as a list of model inputs."""
    from slimkit.techniques.quantization.calibrate import _batches

    batches = [batch_inputs(b) for b in _batches(data, batch_size)]
    if not batches:
        raise ValueError("calibration is empty: pass at least one batch (e.g. 100 samples)")
    return batches


def correct_bias_empirical(model: nn.Module, data, *, batch_size: int = 32) -> dict[str, float]:
    """Correct every quantized layer's bias against the float model on ``data`` (in place).

    Returns ``{layer: largest |correction|}``. The quantized side is the whole simulation:
    calibrated activation quantizers included (uncalibrated ones pass floats).
    """
    names = correctable_layers(model)
    if not names:
        raise ValueError(
            "bias_correction='empirical' found no quantized Conv/Linear layer with a bias "
            f"in {type(model).__name__}"
        )
    batches = as_batches(data, batch_size)
    was_training = model.training
    model.eval()
    try:
        with float_mode(model):
            reference = _output_means(model, batches, names)
        done = {}
        for name in execution_order(model, batches[0], names):
            measured = _output_means(model, batches, [name])[name]
            shift = measured - reference[name]
            with torch.no_grad():
                get_module(model, name).bias.sub_(shift.to(get_module(model, name).bias.dtype))
            done[name] = float(shift.abs().max())
    finally:
        model.train(was_training)
    return done


def expected_relu(mu: torch.Tensor, sigma: torch.Tensor, cap: float | None) -> torch.Tensor:
    """``E[relu(y)]`` (``E[clip(y, 0, cap)]`` with a cap) for ``y ~ N(mu, sigma^2)``."""
    def relu_mean(m, s):
        s = s.clamp(min=1e-12)
        z = m / s
        cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
        pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        return m * cdf + s * pdf

    out = relu_mean(mu, sigma)
    if cap is not None:  # clip(y, 0, c) = relu(y) - relu(y - c)
        out = out - relu_mean(mu - cap, sigma)
    return out


def _weight_error(model, name) -> torch.Tensor:
    index, p = weight_quantizer(model, name)
    m = get_module(model, name)
    with torch.no_grad():
        w = input_of(m, "weight", index)
        return p(w) - w


def _error_from_mean(m: nn.Module, dw: torch.Tensor, mean_in: torch.Tensor) -> torch.Tensor:
    """``E[output error]`` per output channel for input channel means ``mean_in``."""
    if isinstance(m, nn.Linear):
        return dw @ mean_in
    out = dw.shape[0]
    groups = m.groups
    summed = dw.reshape(out, dw.shape[1], -1).sum(-1)  # [out, in / groups]
    per_group = mean_in.reshape(groups, -1).repeat_interleave(out // groups, 0)
    return (summed * per_group).sum(1)


def correct_bias_bn(model: nn.Module, chains: list, stats: dict) -> dict[str, str]:
    """Data-free correction of every chain's second layer whose first layer had a BatchNorm.

    ``stats``: ``{layer: (mean, std)}`` of that layer's (BN-normalised) output per channel,
    already divided by any equalization scale. Returns the layers skipped, with the reason.
    """
    skipped = {}
    corrected = set()
    for c in chains:
        if c.a not in stats:
            skipped.setdefault(c.b, f"no BatchNorm after {c.a}")
            continue
        if c.pooled:
            skipped.setdefault(c.b, f"a pooling between {c.a} and it")
            continue
        m = get_module(model, c.b)
        if weight_quantizer(model, c.b) is None or m.bias is None:
            continue
        if len(c.acts) > 1:
            skipped.setdefault(c.b, f"two activations between {c.a} and it")
            continue
        mu, sigma = stats[c.a]
        mean = expected_relu(mu, sigma, c.acts[0]) if c.acts else mu
        if c.factor > 1:
            mean = mean.repeat_interleave(c.factor)
        with torch.no_grad():
            m.bias.sub_(_error_from_mean(m, _weight_error(model, c.b), mean).to(m.bias.dtype))
        corrected.add(c.b)
    for name in correctable_layers(model):
        if name not in corrected:
            skipped.setdefault(name, "its input does not come from a BatchNorm'd layer")
    return {n: why for n, why in skipped.items() if n not in corrected}


def warn_skipped(skipped: dict[str, str]) -> None:
    if skipped:
        warnings.warn(
            f"slimkit: bias_correction='bn' left {len(skipped)} layer(s) uncorrected (no "
            "BatchNorm statistics for their input; bias_correction='empirical' covers them): "
            + "; ".join(f"{n} ({why})" for n, why in sorted(skipped.items())),
            stacklevel=4,
        )
