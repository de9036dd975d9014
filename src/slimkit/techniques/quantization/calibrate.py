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
from slimkit.techniques.quantization.activation import ActivationQuantizer


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
    if idle:
        warnings.warn(
            f"slimkit: {len(idle)} quantized layer(s) never ran during calibration and keep "
            f"float activations until calibrated: {', '.join(idle)}",
            stacklevel=2,
        )
    return model
