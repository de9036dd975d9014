"""``sk.quantize``: post-training quantization and quantization-aware training of any model.

Example:
    >>> sk.quantize(model, sk.QuantizationConfig(), calibration=x_train[:100])   # static int8
    >>> sk.quantize(model, sk.QuantizationConfig(mode="dynamic"))               # transformers
    >>> sk.quantize(model, sk.QATConfig(freeze_observers_step=200)); scheduler = sk.Scheduler(model)
"""

from __future__ import annotations

import torch.nn as nn

from slimkit.core.records import records
from slimkit.core.registry import apply, register_technique
from slimkit.quantization.calibrate import calibrate
from slimkit.quantization.config import QATConfig, QuantizationConfig
from slimkit.quantization.export import post_export, pre_export
from slimkit.quantization.prepare import prepare, select_layers

PTQ, QAT = "quantization", "qat"


def quantize(model: nn.Module, config: QuantizationConfig, calibration=None, targets=None,
             ignore=None, *, batch_size: int = 32, progress: bool = True) -> nn.Module:
    """Quantize ``model`` in place as ``config`` says; returns ``model``.

    - ``QuantizationConfig(mode="static")`` needs ``calibration`` (a tensor of inputs or a
      DataLoader; ~100 samples are enough): activation ranges are observed, then frozen.
    - ``mode="dynamic"`` / ``"weight_only"`` need no data.
    - ``QATConfig``: fake-quant is attached; train with your loop and step ``sk.Scheduler``.
      ``calibration`` is optional and starts the activation ranges from data.

    ``targets`` / ``ignore`` select layers (type names, globs, ``re:`` regexes). Calling it
    again on a model already prepared with ``sk.apply(model, config)`` only calibrates.
    The result exports with ``sk.export_onnx`` to QDQ ONNX with int8 (int4) weights.
    """
    if not isinstance(config, QuantizationConfig):
        raise TypeError(
            f"sk.quantize takes a QuantizationConfig or QATConfig, got {type(config).__name__}"
        )
    qat = isinstance(config, QATConfig)
    if calibration is not None and config.mode != "static":
        raise ValueError(
            f"calibration is only used with mode='static', got mode={config.mode!r} "
            f"({type(config).__name__}.mode); drop calibration= or use mode='static'"
        )
    if calibration is None and config.mode == "static" and not qat:
        raise ValueError(
            "static quantization needs calibration data: sk.quantize(model, config, "
            "calibration=loader_or_tensor); or use QuantizationConfig(mode='dynamic'), which "
            "needs none"
        )
    prepared = any(r["technique"] in (PTQ, QAT) for r in records(model))
    if not prepared:
        apply(model, config, targets, ignore)
    elif targets is not None or ignore is not None:
        raise ValueError(
            "this model is already quantized; targets/ignore apply only when preparing "
            "(use a fresh model to change the layer selection)"
        )
    if calibration is not None:
        calibrate(model, calibration, batch_size=batch_size, progress=progress)
    return model


def _select(model, config, targets, ignore):
    return select_layers(model, config, targets, ignore)


for _name, _cls, _desc in (
    (PTQ, QuantizationConfig,
     "Post-training int8 (static, dynamic) or int8/int4 weight-only quantization."),
    (QAT, QATConfig, "Quantization-aware training: fake-quant with straight-through gradients."),
):
    register_technique(_name, _cls, prepare, select=_select, family="quantization",
                       description=_desc, pre_export=pre_export, post_export=post_export)
