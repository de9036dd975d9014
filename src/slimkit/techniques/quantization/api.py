"""``sk.quantize``: post-training quantization and quantization-aware training of any model.

Example:
    >>> sk.quantize(model, sk.QuantizationConfig(), calibration=x_train[:100])   # static int8
    >>> sk.quantize(model, sk.QuantizationConfig(mode="dynamic"))               # transformers
    >>> sk.quantize(model, sk.QATConfig(freeze_observers_step=200)); scheduler = sk.Scheduler(model)
"""

from __future__ import annotations

import torch.nn as nn

from slimkit.core.records import records
from slimkit.core.technique import Technique
from slimkit.techniques.quantization.adaround import adaround, check_rounded
from slimkit.techniques.quantization.bias_correction import correct_bias_empirical
from slimkit.techniques.quantization.calibrate import calibrate
from slimkit.techniques.quantization.config import AdaRoundConfig, QATConfig, QuantizationConfig
from slimkit.techniques.quantization.export import post_export, pre_export, stored_weights
from slimkit.techniques.quantization.fake_quant import QUANT_STAGE
from slimkit.techniques.quantization.prepare import prepare, select_layers

PTQ, QAT, ADAROUND = "quantization", "qat", "adaround"


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
    from slimkit.core.verbs import quantize as family_quantize

    return family_quantize(model, config, calibration, targets, ignore,
                           batch_size=batch_size, progress=progress)


class PostTrainingQuantization(Technique):
    """The ``quantization`` technique: static / dynamic / weight-only PTQ (stage ``quant``).

    Its state outlives ``sk.strip``: the activation quantizers stay as modules and the
    baked weights lie on the int8 grid, so the record is kept (marked ``stripped``) and export
    of the stripped model puts the weight fake-quant back on its copy: re-quantizing a weight
    already on its grid gives the same integers and scales, hence the same artifact.
    """

    name = PTQ
    config_cls = QuantizationConfig
    family = "quantization"
    stage = QUANT_STAGE
    description = "Post-training int8 (static, dynamic) or int8/int4 weight-only quantization."

    def select(self, model, config, targets, ignore):
        return select_layers(model, config, targets, ignore)

    def prepare(self, model, config, layers):
        prepare(model, config, layers)

    def replay(self, model, config, layers, record):
        prepare(model, config, layers, weights=not record.get("stripped"))

    def needs_calibration(self, config):
        return config.mode == "static" and not isinstance(config, QATConfig)

    def missing_calibration(self, config, verb):
        return ("static quantization needs calibration data: sk.quantize(model, config, "
                "calibration=loader_or_tensor); or use QuantizationConfig(mode='dynamic'), "
                "which needs none")

    def apply(self, model, config, *, targets=None, ignore=None, example_inputs=None,
              calibration=None, **options):
        if calibration is not None and config.mode != "static":
            # Refused before anything is prepared: the model stays as it was.
            raise ValueError(
                f"calibration is only used with mode='static', got mode={config.mode!r} "
                f"({type(config).__name__}.mode); drop calibration= or use mode='static'"
            )
        return super().apply(model, config, targets=targets, ignore=ignore,
                             example_inputs=example_inputs, calibration=calibration, **options)

    def calibrate(self, model, config, data, *, batch_size: int = 32, progress: bool = True):
        if config.mode != "static":
            raise ValueError(
                f"calibration is only used with mode='static', got mode={config.mode!r} "
                f"({type(config).__name__}.mode); drop calibration= or use mode='static'"
            )
        calibrate(model, data, batch_size=batch_size, progress=progress)
        if config.bias_correction == "empirical":
            # Measured on the whole simulation (int8 activations included), then the ranges
            # are observed again on the corrected model.
            correct_bias_empirical(model, data, batch_size=batch_size)
            calibrate(model, data, batch_size=batch_size, progress=progress)

    def survives_strip(self, record):
        return True

    def knobs(self, config):
        # int8 is the only width static / dynamic int8 kernels take: the per-layer choice is
        # int8 or left in float (the search's "off"); weight-only also stores int4.
        return {"weight_bits": [8, 4] if config.mode == "weight_only" else [8]}

    def pre_export(self, model, ctx):
        from slimkit.core.config import Config

        for rec in records(model):
            if rec["technique"] == self.name and rec.get("stripped"):
                prepare(model, Config.from_dict(rec["config"]),
                        [tuple(x) for x in rec["layers"]], activations=False)
        pre_export(model, ctx)

    def post_export(self, proto, ctx):
        return post_export(proto, ctx)

    def stored_weights(self, model):
        return stored_weights(model)

    def conformance_entries(self):
        from slimkit.techniques.quantization.conformance import ENTRIES

        return [e for e in ENTRIES if e.technique == self.name]


class QuantizationAwareTraining(PostTrainingQuantization):
    """The ``qat`` technique: fake-quant trained with straight-through gradients."""

    name = QAT
    config_cls = QATConfig
    description = "Quantization-aware training: fake-quant with straight-through gradients."

    def needs_calibration(self, config):
        return config.bias_correction == "empirical"

    def knobs(self, config):
        # 4-bit weights next to int8 activations train well (int8 containers, int8 kernels).
        return {"weight_bits": [8, 4]}

    def calibrate(self, model, config, data, *, batch_size: int = 32, progress: bool = True):
        # Optional for QAT: starts the activation ranges from data instead of the first steps.
        calibrate(model, data, batch_size=batch_size, progress=progress)
        if config.bias_correction == "empirical":
            correct_bias_empirical(model, data, batch_size=batch_size)
            calibrate(model, data, batch_size=batch_size, progress=progress)


class AdaRoundQuantization(PostTrainingQuantization):
    """The ``adaround`` technique: PTQ whose weight rounding is learned on calibration data.

    Static mode (W{bits}A8): activation ranges are calibrated first, so each layer's input
    during the optimisation carries the int8 activation grid; AdaRound then rounds the layers
    in execution order; bias correction (if asked) and the activation ranges are measured
    again on the rounded model. Weight-only mode (W{bits}A16) rounds with float activations.
    """

    name = ADAROUND
    config_cls = AdaRoundConfig
    description = "AdaRound: post-training 8/4/3-bit weights with rounding learned per layer."

    def needs_calibration(self, config):
        return True

    def knobs(self, config):
        return {}    # learned rounding per layer: not searched yet

    def missing_calibration(self, config, verb):
        return ("adaround needs calibration data (it learns each layer's rounding on unlabeled "
                f"inputs): sk.{verb}(model, config, calibration=loader_or_tensor), e.g. 256 "
                "training samples; AdaRoundConfig(rounding='nearest') also calibrates")

    def apply(self, model, config, *, targets=None, ignore=None, example_inputs=None,
              calibration=None, **options):
        # Weight-only AdaRound takes calibration data too (PTQ's apply refuses it there).
        return Technique.apply(self, model, config, targets=targets, ignore=ignore,
                               example_inputs=example_inputs, calibration=calibration,
                               **options)

    def calibrate(self, model, config, data, *, batch_size: int = 32, progress: bool = True):
        static = config.mode == "static"
        if static:
            calibrate(model, data, batch_size=batch_size, progress=progress)
        adaround(model, config, data, batch_size=batch_size, progress=progress)
        if config.bias_correction == "empirical":
            correct_bias_empirical(model, data, batch_size=batch_size)
        if static:
            calibrate(model, data, batch_size=batch_size, progress=progress)

    def pre_export(self, model, ctx):
        check_rounded(model)
        super().pre_export(model, ctx)


TECHNIQUE = PostTrainingQuantization()
QAT_TECHNIQUE = QuantizationAwareTraining()
ADAROUND_TECHNIQUE = AdaRoundQuantization()
