"""``QuantizationConfig`` (post-training) and ``QATConfig`` (quantization-aware training).

The defaults are the int8 scheme ONNX Runtime runs fastest on CPU (U8S8): weights int8,
symmetric, per output channel, narrow range [-127, 127]; activations uint8, per tensor,
asymmetric. Measured on a bottleneck ResNet, ORT ran uint8 activations 3.3x faster than fp32
and int8 activations only 1.0x, so the activation type is not a detail.

Example:
    >>> cfg = QuantizationConfig()                                    # static int8, U8S8
    >>> cfg = QuantizationConfig(mode="weight_only", weight_bits=4, group_size=32)
    >>> cfg = QATConfig(freeze_observers_step=500, overrides={"fc2": {"weight_bits": 8}})
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from slimkit.core.config import Config

MODES = ("static", "dynamic", "weight_only")
OBSERVERS = ("minmax", "moving_average", "percentile", "mse")
ACTIVATION_DTYPES = ("uint8", "int8")
ACTIVATION_SCHEMES = ("asymmetric", "symmetric")
WEIGHT_SCHEMES = ("symmetric",)
# Fields a per-layer override may change (the activation scheme is global: a tensor shared by
# two layers must have one scale).
OVERRIDABLE = ("weight_bits", "group_size", "per_channel", "narrow_range", "observer", "percentile")
BIAS_CORRECTIONS = (None, "empirical", "bn")
# Weight widths of the configs that train or optimise their rounding (QAT, AdaRound): 3- and
# 4-bit integers, stored in int8 containers next to int8 activations (ORT runs its int8
# kernels on them) and in int4 containers in weight-only mode.
LOW_BITS = (3, 4, 8)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class QuantizationConfig(Config):
    """Post-training quantization: what to quantize and how.

    Attributes:
        mode: ``"static"`` (int8 weights and activations, activation ranges from calibration
            data: the fastest for conv nets), ``"dynamic"`` (int8 weights, activation ranges
            measured at run time: Linear-heavy and transformer models) or ``"weight_only"``
            (int8 or int4 weights, float activations: smallest file, no int8 kernels).
        weight_bits: 8, or 4 with ``mode="weight_only"``.
        group_size: quantize every ``group_size`` consecutive input weights of a Linear with
            their own scale (``None``: one scale per output channel). Int4 wants groups (32-128).
        weight_scheme: ``"symmetric"``: zero maps to zero, so pruned weights stay exactly zero.
        per_channel: one weight scale per output channel (default) or one per tensor.
        narrow_range: weights in [-127, 127] rather than [-128, 127] (symmetric around zero).
        activation_dtype: ``"uint8"`` (U8S8, ORT's fastest) or ``"int8"`` (S8S8).
        activation_scheme: ``"asymmetric"`` (a zero point; uses the full range of a ReLU
            output) or ``"symmetric"`` (zero point fixed at the middle of the range).
        observer: how calibration turns activations into a range: ``"minmax"``,
            ``"moving_average"`` (EMA of batch min/max), ``"percentile"`` (clip outliers at
            ``percentile``) or ``"mse"`` (the clipping range with the least quantization error).
        percentile: the percentile kept by the percentile observer, in (50, 100].
        averaging_constant: EMA weight of a new batch for the moving-average observer.
        fold_bn: fold a BatchNorm into the convolution before it (as deployment runs it).
        fuse_relu: quantize the output of Conv/Linear after the ReLU that follows it, as ORT
            fuses Conv+ReLU (needs a model that ``torch.fx`` can trace; otherwise skipped).
        overrides: ``{layer pattern: {field: value}}`` per-layer changes of the fields in
            ``OVERRIDABLE``, e.g. ``{"fc2": {"weight_bits": 8}}``; patterns as in ``targets``.
        equalize: cross-layer equalization before quantizing (static mode): consecutive
            conv/linear pairs through ReLU / ReLU6 (depthwise-separable blocks included, BN
            folded first) are rescaled per channel so both weights have equal ranges; the
            float model computes the same function (a ReLU6 between a pair becomes a ReLU,
            as AIMET does). Layers left out are listed in a warning.
        bias_correction: ``None``, ``"empirical"`` (calibration data: each layer's mean output
            error against the float model is subtracted from its bias) or ``"bn"`` (data-free:
            the error of the quantized weight times the input mean that the BatchNorm before
            the layer implies). Static mode.
    """

    mode: str = "static"
    weight_bits: int = 8
    group_size: int | None = None
    weight_scheme: str = "symmetric"
    per_channel: bool = True
    narrow_range: bool = True
    activation_dtype: str = "uint8"
    activation_scheme: str = "asymmetric"
    observer: str = "minmax"
    percentile: float = 99.99
    averaging_constant: float = 0.01
    fold_bn: bool = True
    fuse_relu: bool = True
    overrides: dict = field(default_factory=dict)
    equalize: bool = False
    bias_correction: str | None = None

    def _check_weight_bits(self) -> None:
        self._require(
            _is_int(self.weight_bits) and self.weight_bits in (4, 8), "weight_bits",
            "8, or 4 with mode='weight_only'",
        )
        self._require(
            self.weight_bits == 8 or self.mode == "weight_only", "weight_bits",
            f"8 with mode={self.mode!r} (4-bit weights need mode='weight_only'; 3- and 4-bit "
            "weights with int8 activations: QATConfig or AdaRoundConfig)",
        )

    def _check_low_bits(self) -> None:
        # QAT and AdaRound make low-bit weights usable: 3, 4 or 8 bits in any mode but dynamic.
        self._require(_is_int(self.weight_bits) and self.weight_bits in LOW_BITS, "weight_bits",
                      f"one of {LOW_BITS}")
        self._require(self.weight_bits == 8 or self.mode != "dynamic", "weight_bits",
                      "8 with mode='dynamic' (3/4-bit weights: mode='static' or 'weight_only')")

    def __post_init__(self):
        self._require(self.mode in MODES, "mode", f"one of {MODES}")
        self._check_weight_bits()
        self._require(
            self.group_size is None or (_is_int(self.group_size) and self.group_size >= 2),
            "group_size", "None (per channel) or an integer >= 2",
        )
        self._require(self.weight_scheme in WEIGHT_SCHEMES, "weight_scheme",
                      f"one of {WEIGHT_SCHEMES} (zero must stay exactly zero)")
        self._require(isinstance(self.per_channel, bool), "per_channel", "True or False")
        self._require(isinstance(self.narrow_range, bool), "narrow_range", "True or False")
        self._require(self.activation_dtype in ACTIVATION_DTYPES, "activation_dtype",
                      f"one of {ACTIVATION_DTYPES}")
        self._require(self.activation_scheme in ACTIVATION_SCHEMES, "activation_scheme",
                      f"one of {ACTIVATION_SCHEMES}")
        self._require(self.observer in OBSERVERS, "observer", f"one of {OBSERVERS}")
        self._require(
            isinstance(self.percentile, (int, float)) and 50.0 < self.percentile <= 100.0,
            "percentile", "a number in (50, 100]",
        )
        self._require(
            isinstance(self.averaging_constant, (int, float)) and 0 < self.averaging_constant <= 1,
            "averaging_constant", "a number in (0, 1]",
        )
        self._require(isinstance(self.fold_bn, bool), "fold_bn", "True or False")
        self._require(isinstance(self.fuse_relu, bool), "fuse_relu", "True or False")
        self._require(isinstance(self.overrides, dict), "overrides",
                      "a dict {layer pattern: {field: value}}")
        for pattern, changes in self.overrides.items():
            ok = isinstance(pattern, str) and isinstance(changes, dict)
            self._require(ok, "overrides", "a dict {layer pattern (str): {field: value}}")
            unknown = sorted(set(changes) - set(OVERRIDABLE))
            self._require(not unknown, "overrides",
                          f"a dict whose per-layer fields are among {OVERRIDABLE} "
                          f"(unknown: {unknown})")
            # Validate the per-layer result now, not when the model is prepared.
            dataclasses.replace(self, overrides={}, **changes)
        self._require(isinstance(self.equalize, bool), "equalize", "True or False")
        self._require(not self.equalize or self.mode == "static", "equalize",
                      f"False with mode={self.mode!r} (cross-layer equalization is a step of "
                      "static quantization and QAT)")
        self._require(self.bias_correction in BIAS_CORRECTIONS, "bias_correction",
                      f"one of {BIAS_CORRECTIONS}")
        self._require(self.bias_correction is None or self.mode == "static", "bias_correction",
                      f"None with mode={self.mode!r} (bias correction is a step of static "
                      "quantization and QAT)")

    @property
    def quantizes_activations(self) -> bool:
        return self.mode == "static"

    def for_layer(self, name: str, module) -> QuantizationConfig:
        """The config of one layer: the overrides whose pattern matches it, applied in order."""
        from slimkit.core.selection import matches

        changes = {}
        for pattern, fields in self.overrides.items():
            if matches(name, module, pattern):
                changes.update(fields)
        return dataclasses.replace(self, overrides={}, **changes) if changes else self


@dataclass
class QATConfig(QuantizationConfig):
    """Quantization-aware training: fake-quantize in the forward pass while the user trains.

    All :class:`QuantizationConfig` fields apply (default static int8, U8S8), plus:

    Attributes:
        freeze_observers_step: after this many ``sk.Scheduler`` steps the activation ranges
            stop moving (``None``: they follow the data until the end). Freezing for the last
            part of training lets the weights adapt to fixed scales.

        learn_ranges: learned step sizes (LSQ): every weight scale (per channel or per tensor)
            and every activation scale is a trainable parameter, initialised from the observed
            range and then moved by the optimizer; export writes the learned scales. The
            activation ranges then do not freeze (``freeze_observers_step`` must be None).
        weight_bits: 8, 4 or 3 (low-bit weights with int8 activations are stored in int8
            containers, so ONNX Runtime runs its int8 kernels on them).

    The activation observer defaults to ``"moving_average"``: ranges seen early in training
    are stale later on.
    """

    observer: str = "moving_average"
    freeze_observers_step: int | None = None
    learn_ranges: bool = False

    def _check_weight_bits(self) -> None:
        self._check_low_bits()

    def __post_init__(self):
        super().__post_init__()
        self._require(
            self.freeze_observers_step is None
            or (_is_int(self.freeze_observers_step) and self.freeze_observers_step >= 0),
            "freeze_observers_step", "None or an integer >= 0",
        )
        self._require(isinstance(self.learn_ranges, bool), "learn_ranges", "True or False")
        self._require(
            not (self.learn_ranges and self.freeze_observers_step is not None),
            "learn_ranges",
            "False with a frozen quantizer (freeze_observers_step="
            f"{self.freeze_observers_step}): learned ranges are trained, not frozen; set "
            "freeze_observers_step=None",
        )
        self._require(not self.learn_ranges or self.mode != "dynamic", "learn_ranges",
                      "False with mode='dynamic' (its activation ranges are measured at run time)")


@dataclass
class AdaRoundConfig(QuantizationConfig):
    """AdaRound: post-training weight quantization whose rounding is learned layer by layer.

    All :class:`QuantizationConfig` fields apply (the activation setting is the mode's:
    ``"static"`` gives W{bits}A8, ``"weight_only"`` W{bits}A16), with weights at 8, 4 or 3 bits
    per output channel (or per tensor). Each layer, in execution order, learns whether each
    weight rounds up or down so that its output on the calibration data (its input taken from
    the already-quantized layers before it) matches the float model's; the learned integers
    are baked into the weight, so export writes exactly them. Needs calibration data.

    Attributes:
        rounding: ``"adaround"`` (learned) or ``"nearest"`` (round to nearest: the baseline
            at the same bits, same artifact format).
        iterations: optimisation steps per layer.
        regularization: weight of the term that pushes each rounding to a hard 0 or 1.
        beta: the annealing of that term's exponent, from ``beta[0]`` to ``beta[1]``.
        warmup: share of the iterations without the rounding term (reconstruction only).
        learning_rate: Adam's learning rate on the rounding variables.
        batch_size: calibration samples per step.
        seed: the order in which calibration samples are drawn.

    Example:
        >>> sk.quantize(model, AdaRoundConfig(weight_bits=4), calibration=x_train[:256])  # W4A8
    """

    rounding: str = "adaround"
    iterations: int = 1000
    regularization: float = 0.01
    beta: tuple = (20.0, 2.0)
    warmup: float = 0.2
    learning_rate: float = 1e-2
    batch_size: int = 32
    seed: int = 0

    def _check_weight_bits(self) -> None:
        self._check_low_bits()

    def __post_init__(self):
        super().__post_init__()
        self._require(self.rounding in ("adaround", "nearest"), "rounding",
                      "'adaround' or 'nearest'")
        self._require(self.mode != "dynamic", "mode",
                      "'static' (W{bits}A8) or 'weight_only' (W{bits}A16) for AdaRound")
        self._require(self.group_size is None, "group_size",
                      "None (AdaRound learns per-channel or per-tensor grids)")
        self._require(_is_int(self.iterations) and self.iterations >= 1, "iterations",
                      "an integer >= 1")
        self._require(isinstance(self.regularization, (int, float)) and self.regularization >= 0,
                      "regularization", "a number >= 0")
        self.beta = tuple(self.beta) if isinstance(self.beta, (list, tuple)) else self.beta
        self._require(
            isinstance(self.beta, tuple) and len(self.beta) == 2
            and all(isinstance(b, (int, float)) and b > 0 for b in self.beta),
            "beta", "two positive numbers (start, end), e.g. (20, 2)",
        )
        self._require(isinstance(self.warmup, (int, float)) and 0 <= self.warmup < 1, "warmup",
                      "a number in [0, 1)")
        self._require(isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0,
                      "learning_rate", "a number > 0")
        self._require(_is_int(self.batch_size) and self.batch_size >= 1, "batch_size",
                      "an integer >= 1")
        self._require(_is_int(self.seed), "seed", "an integer")
