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

    def __post_init__(self):
        self._require(self.mode in MODES, "mode", f"one of {MODES}")
        self._require(
            _is_int(self.weight_bits) and self.weight_bits in (4, 8), "weight_bits",
            "8, or 4 with mode='weight_only'",
        )
        self._require(
            self.weight_bits == 8 or self.mode == "weight_only", "weight_bits",
            f"8 with mode={self.mode!r} (4-bit weights need mode='weight_only')",
        )
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

    The activation observer defaults to ``"moving_average"``: ranges seen early in training
    are stale later on.
    """

    observer: str = "moving_average"
    freeze_observers_step: int | None = None

    def __post_init__(self):
        super().__post_init__()
        self._require(
            self.freeze_observers_step is None
            or (_is_int(self.freeze_observers_step) and self.freeze_observers_step >= 0),
            "freeze_observers_step", "None or an integer >= 0",
        )
