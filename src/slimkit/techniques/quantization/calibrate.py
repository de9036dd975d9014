"""Calibration: run sample data through a prepared model so observers fix activation ranges.

``data`` is a tensor (split into batches), or any iterable of batches (a DataLoader): each
batch a tensor, a dict of keyword tensors, or a tuple/list whose first element is the input
(the usual ``(x, y)`` pair).

Example:
    >>> sk.apply(model, sk.QuantizationConfig())
    >>> calibrate(model, x_train[:100])                 # or a DataLoader
    >>> sk.export_onnx(model, "int8.onnx", example_inputs=x_train[:8])
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
import torch.nn as nn

from slimkit.core.batch import batch_inputs, call_model, describe
from slimkit.core.parametrize import get_module
from slimkit.techniques.quantization.activation import INPUT, OUTPUT, ActivationQuantizer
from slimkit.techniques.quantization.fake_quant import quantized_weights

# The largest int32 bias code accepted: half the int32 range, the other half left to the
# products an int8 kernel adds to it (255 * 127 per input: 2**30 is ~33,000 inputs).
BIAS_CODE_LIMIT = 2.0 ** 30


def _batches(data, batch_size: int) -> Iterable:
    if isinstance(data, torch.Tensor):
        if data.dim() == 0:
            raise ValueError(
                "calibration must be a batch of inputs (N, ...) or an iterable of batches, "
                "got a 0-d tensor"
            )
        return list(torch.split(data, batch_size))
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(
            "calibration must be a tensor of inputs or an iterable of batches (a DataLoader), "
            f"got {type(data).__name__}"
        )
    return data


def calibrate(model: nn.Module, data, *, batch_size: int = 32, progress: bool = True) -> nn.Module:
    """Observe ``data`` and freeze the activation ranges of a static-quantized model; returns it.

    Raises ``ValueError`` when the model has nothing to calibrate, the data is empty, or a
    batch does not fit the model (the message gives its shape).
    """
    from rich.progress import Progress

    quantizers = [(n, m) for n, m in model.named_modules() if isinstance(m, ActivationQuantizer)]
    if not quantizers:
        raise ValueError(
            f"{type(model).__name__} has no activation quantizer to calibrate: calibration is "
            "for QuantizationConfig(mode='static') or QATConfig (prepare it with sk.quantize)"
        )
    batches = _batches(data, batch_size)
    for _, q in quantizers:
        q.start_calibration()
    was_training = model.training
    model.eval()
    seen = 0
    try:
        total = len(batches) if hasattr(batches, "__len__") else None
        with Progress(transient=True, disable=not progress) as bar, torch.no_grad():
            task = bar.add_task("calibrating", total=total)
            for batch in batches:
                try:
                    call_model(model, batch_inputs(batch))
                except (RuntimeError, TypeError, ValueError, IndexError) as e:
                    raise ValueError(
                        f"calibration batch {seen} ({describe(batch_inputs(batch))}) does not fit "
                        f"{type(model).__name__}: {type(e).__name__}: {e}"
                    ) from e
                seen += 1
                bar.advance(task)
        if seen == 0:
            raise ValueError(
                "calibration is empty: pass at least one batch (e.g. 100 training samples)"
            )
    except BaseException:
        for _, q in quantizers:
            q.calibrating, q.observer = False, None
        raise
    finally:
        model.train(was_training)
    idle = [n for n, q in quantizers if not q.finish_calibration()]
    fit_int32_biases(model)
    if idle:
        warnings.warn(
            f"slimkit: {len(idle)} quantized layer(s) never ran during calibration and keep "
            f"float activations until calibrated: {', '.join(idle)}",
            stacklevel=2,
        )
    return model


def _input_quantizer(model: nn.Module, module: nn.Module) -> ActivationQuantizer | None:
    """The quantizer of ``module``'s input: its own, or the producer's output quantizer."""
    q = module._modules.get(INPUT)
    if isinstance(q, ActivationQuantizer):
        return q
    src = getattr(module, "_sk_input_from", None)
    if src:
        q = get_module(model, src)._modules.get(OUTPUT)
        return q if isinstance(q, ActivationQuantizer) else None
    return None


def fit_int32_biases(model: nn.Module) -> list[str]:
    """Widen input ranges so every quantized layer's bias fits its int32 grid; returns the
    layers whose input range was widened.

    An int8 kernel (ORT's QLinearConv / QGemm, which it fuses from the file's
    DequantizeLinear -> Conv/Gemm -> QuantizeLinear) stores the bias as int32 codes of step
    ``input scale * weight scale``. Where the activations are tiny against the bias (a
    random-initialised MobileNetV2-style CNN: inputs of ~1e-6 at the classifier, scale
    3e-8, bias 0.05) the codes exceed the int32 range and the kernel's output is wrong
    (123% RMS error) while the torch simulation, which adds the bias in float, is right.
    Such a layer's output is its bias to ~1e-4 (its products are at most ``255 * 127``
    codes per input): widening its input scale until ``|bias| / step <= 2**30`` costs
    nothing measurable and makes file and simulation agree.
    """
    need: dict[int, tuple[ActivationQuantizer, float, list[str]]] = {}
    for key, module, _p, _q, scale, _baked in quantized_weights(model):
        bias = getattr(module, "bias", None)
        if not key.endswith("weight") or not isinstance(bias, torch.Tensor) or bias.dim() != 1:
            continue
        aq = _input_quantizer(model, module)
        if aq is None or not bool(aq.calibrated):
            continue
        # The smallest step of each output channel (per group: its smallest group).
        sw = scale.reshape(scale.shape[0], -1).amin(1) if scale.dim() else scale.reshape(1)
        if sw.numel() not in (1, bias.numel()):
            continue
        b = bias.detach().abs().float()
        required = float((b / (sw.float() * BIAS_CODE_LIMIT)).max()) if b.numel() else 0.0
        name = key.rsplit(".", 1)[0]
        if id(aq) in need:
            q, r, names = need[id(aq)]
            need[id(aq)] = (q, max(r, required), names + [name])
        else:
            need[id(aq)] = (aq, required, [name])
    widened = []
    for aq, required, names in need.values():
        scale = aq.qparams()[0]
        if required > scale:
            factor = required / scale * (1 + 1e-6)
            aq.set_range(float(aq.lo) * factor, float(aq.hi) * factor)
            widened += names
    return widened
