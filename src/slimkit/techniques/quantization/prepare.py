"""Prepare a model for quantization: pick the layers, fold BN, attach fake-quant and observers.

Which layers each mode quantizes, and why the others stay float:
- every mode treats Hugging Face's Conv1D (GPT-2: a Linear storing its weight (in, out)) as
  a Linear, its scales computed on the transposed weight;
- static: Conv1d, Conv2d, Linear (ORT runs them as QLinearConv / QGemm / QLinearMatMul);
  ConvTranspose weights are stored int8 but the layer runs in float (ORT 1.32 has no int8
  ConvTranspose kernel on CPU: its own quantizer leaves DequantizeLinear -> ConvTranspose too);
- dynamic: Linear (ORT runs MatMulInteger with activations quantized at run time) and LSTM
  (input and recurrent weights per gate row; ORT runs DynamicQuantizeLSTM, see lstm_export);
- both also store Embedding tables as int8 (weight-only: a lookup has no matmul to speed up);
- weight_only: Linear, Conv, ConvTranspose, Embedding (any weight read through DequantizeLinear).
Everything else that owns weights stays fp32, listed in one warning.

Example:
    >>> layers = select_layers(model, QuantizationConfig(), targets=None, ignore=["fc2"])
    >>> prepare(model, QuantizationConfig(), layers)
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
import torch.nn as nn

from slimkit.core.parametrize import expand_tied, get_module, raw_tensor, register
from slimkit.core.records import group_id
from slimkit.core.selection import (
    _owns_unknown_weight,
    input_axis,
    module_type,
    select_weights,
    weight_names,
)
from slimkit.techniques.quantization.activation import ActivationQuantizer, DynamicQuantizer, attach
from slimkit.techniques.quantization.adaround import AdaRoundWeightFakeQuant
from slimkit.techniques.quantization.bias_correction import (
    add_zero_biases,
    correct_bias_bn,
    warn_skipped,
)
from slimkit.techniques.quantization.config import AdaRoundConfig, QATConfig, QuantizationConfig
from slimkit.techniques.quantization.equalization import equalize, find_chains, warn_left
from slimkit.techniques.quantization.fake_quant import WeightFakeQuant
from slimkit.techniques.quantization.graph import analyze, fold_batchnorm
from slimkit.techniques.quantization.lsq import LearnedActivationQuantizer, LearnedWeightFakeQuant

_CONV = (nn.Conv1d, nn.Conv2d)
# Weight-only in every mode: a lookup (no matmul to speed up) and ConvTranspose (no int8
# kernel in ORT): int8 storage, float arithmetic, no activation quantizers.
_WEIGHT_ONLY = (nn.Embedding, nn.modules.conv._ConvTransposeNd)
# Embeddings are lookups: in every mode their table is stored int8 and read through
# DequantizeLinear (as ORT's own dynamic quantizer does with Gather).
SUPPORTED = {
    "static": (nn.Linear, *_CONV, nn.Embedding, nn.modules.conv._ConvTransposeNd),
    "dynamic": (nn.Linear, nn.Embedding),
    "weight_only": (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding),
}
_ACCEPTED = {
    "static": "Linear, Conv1d, Conv2d, HF Conv1D (Embedding, ConvTranspose weight-only)",
    "dynamic": "Linear, HF Conv1D, LSTM (Embedding weight-only)",
    "weight_only": "Linear, Conv1d/2d/3d, ConvTranspose, Embedding, HF Conv1D",
}


def _why_not(module: nn.Module, mode: str) -> str:
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return "no int8 ConvTranspose kernel in ONNX Runtime: use mode='weight_only'"
    if isinstance(module, nn.LSTM) and mode == "dynamic":
        return ("an LSTM with proj_size has no ONNX LSTM form (ONNX Runtime's "
                "DynamicQuantizeLSTM takes plain LSTMs)")
    if isinstance(module, nn.RNNBase):
        if mode == "dynamic":
            return ("ONNX Runtime has an int8 kernel for LSTM only (DynamicQuantizeLSTM), "
                    "none for GRU or RNN")
        return ("recurrent weights have no static or weight-only int8 ONNX Runtime path: "
                "use mode='dynamic' for LSTM (ONNX Runtime's DynamicQuantizeLSTM)")
    if isinstance(module, nn.MultiheadAttention):
        return "fused attention projections: its out_proj Linear is quantized"
    if isinstance(module, nn.modules.conv._ConvNd) and mode == "dynamic":
        return "dynamic int8 covers Linear only: use mode='static' for convolutions"
    return f"no {mode} int8 path for {module_type(module).__name__}"


def select_layers(model: nn.Module, config: QuantizationConfig, targets, ignore) -> list:
    """The ``(module, 'weight')`` pairs to quantize; warns once about what stays float."""
    supported = SUPPORTED[config.mode]
    skipped: list[str] = []

    def names_for(name: str, module: nn.Module) -> list[str]:
        names = weight_names(module)
        if not names:
            if _owns_unknown_weight(module):
                skipped.append(f"{name or '(the model itself)'} ({module_type(module).__name__}: weights slimkit does "
                               "not know; declare them with sk.register_weights)")
            return []
        if isinstance(module, supported):
            return ["weight"]
        # LSTM (dynamic: every layer's and direction's input and recurrent weights) and HF
        # Conv1D (a Linear storing its weight (in, out)) take the fixed grid only.
        lstm = config.mode == "dynamic" and _dynamic_lstm(module)
        if lstm or _in_out_linear(module):
            if isinstance(config, AdaRoundConfig) or getattr(config, "learn_ranges", False):
                kind = "LSTM" if lstm else f"{module_type(module).__name__}: weight stored (in, out)"
                skipped.append(f"{name} ({kind}; AdaRound and learned ranges take Linear and "
                               "Conv weights only)")
                return []
            return names if lstm else ["weight"]
        skipped.append(f"{name or '(the model itself)'} ({module_type(module).__name__}: "
                       f"{_why_not(module, config.mode)})")
        return []

    try:
        # One warning for everything that stays float: the selection's own warning about
        # unknown layers is folded into ours.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            layers = select_weights(model, targets, ignore, names_for=names_for,
                                    technique=f"{config.mode} quantization",
                                    supported=sorted(c.__name__ for c in supported) + (
                                        ["Conv1D", "LSTM"] if config.mode == "dynamic"
                                        else ["Conv1D"]))
        for w in caught:
            if "whose weights it does not know" not in str(w.message):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    except ValueError as e:
        raise ValueError(
            f"{type(config).__name__}(mode={config.mode!r}) found no quantizable layer in "
            f"{type(model).__name__}: it quantizes {_ACCEPTED[config.mode]} ({e})"
        ) from None
    if skipped:
        warnings.warn(
            f"slimkit: {len(skipped)} layer(s) stay fp32 under {config.mode} quantization: "
            + "; ".join(skipped),
            stacklevel=3,
        )
    return layers


def prepare(model: nn.Module, config: QuantizationConfig, layers: list, *,
            weights: bool = True, activations: bool = True) -> None:
    """Attach weight fake-quant and activation quantizers to ``layers`` (in place).

    ``weights=False`` attaches only the activation quantizers (a model stripped after
    quantization: its weights are already baked on the grid); ``activations=False`` only the
    weight fake-quant (export of such a stripped model puts it back on the copy).
    """
    qat = isinstance(config, QATConfig)
    names = list(dict.fromkeys(m for m, _ in layers))
    for name, tname in layers:
        t = raw_tensor(get_module(model, name), tname)
        if not torch.is_floating_point(t):
            raise ValueError(f"{name}.{tname} is {t.dtype}; quantization needs a float weight")

    # Layers that get activation quantizers; the others store int8 weights only. An LSTM
    # quantizes its activations inside ORT's kernel (DynamicQuantizeLSTM): none attached.
    active = [n for n in names
              if config.mode == "weight_only" or not isinstance(get_module(model, n),
                                                                (*_WEIGHT_ONLY, nn.RNNBase))]
    info = None
    bn_stats = {}
    if config.mode == "static" and activations:
        info = analyze(model, set(active))
        if config.fold_bn and info.bn_after:
            if config.bias_correction == "bn":
                bn_stats = _bn_output_stats(model, info.bn_after)
            for conv, bn in info.bn_after.items():
                fold_batchnorm(model, conv, bn)
            info = analyze(model, set(active))
        if config.equalize:
            # After folding (a BatchNorm between two layers would stop the chain), before the
            # weights get their grids. On a fresh model being rebuilt for sk.load this only
            # repeats the ReLU6 -> ReLU replacement: the loaded weights overwrite the rest.
            result = equalize(model, set(active))
            warn_left(result)
            for a, s in result.scales.items():
                if a in bn_stats:
                    bn_stats[a] = (bn_stats[a][0] / s, bn_stats[a][1] / s)
            info = analyze(model, set(active))
        if config.bias_correction is not None and weights:
            add_zero_biases(model, active)

    group = group_id(model, "quant")
    freeze = getattr(config, "freeze_observers_step", None)
    for sites in expand_tied(model, layers) if weights else []:
        mname, tname = sites[0]
        module = get_module(model, mname)
        cfg = config.for_layer(mname, module)
        w = raw_tensor(module, tname)
        axis = input_axis(module, tname) if w.dim() == 2 else 1
        group_size = cfg.group_size if w.dim() == 2 else None
        inputs = w.shape[axis] if w.dim() == 2 else None
        if (cfg.per_channel and group_size is None
                and not _overridden(config, mname, module, "per_channel")
                and _shared_per_tensor(module, tname)):
            cfg = dataclasses.replace(cfg, per_channel=False, overrides={})
        if group_size is not None and inputs % group_size:
            raise ValueError(
                f"{mname}.{tname} has {inputs} inputs, not a multiple of group_size="
                f"{group_size} (QuantizationConfig.group_size); pick a divisor or override "
                f"this layer with overrides={{{mname!r}: {{'group_size': None}}}}"
            )
        p = _weight_fake_quant(config, cfg, group_size, freeze, group, w, axis)
        register(model, sites, p)
    if config.mode == "static" and activations and weights and config.bias_correction == "bn":
        warn_skipped(correct_bias_bn(model, find_chains(model, set(active))[0], bn_stats))

    act_cls = LearnedActivationQuantizer if getattr(config, "learn_ranges", False) \
        else ActivationQuantizer
    for mname in active if activations else []:
        module = get_module(model, mname)
        cfg = config.for_layer(mname, module)
        if config.mode == "dynamic":
            attach(module, DynamicQuantizer(), None)
        elif config.mode == "static":
            shared = info.input_from.get(mname)
            in_q = None if shared else act_cls(cfg, qat=qat, freeze_step=freeze, group=group)
            relu = config.fuse_relu and mname in info.fused_relu
            cap = info.relu_cap.get(mname) if relu else None
            attach(module, in_q, act_cls(cfg, qat=qat, relu_first=relu, relu_cap=cap,
                                         freeze_step=freeze, group=group))
            # The producer's quantized output reaches this layer on its grid already; export
            # re-quantizes it with the producer's parameters so ORT sees Q/DQ on the input.
            object.__setattr__(module, "_sk_input_from", shared)
    if config.mode == "static" and activations:
        for owner in sorted(info.block_outputs):
            attach(get_module(model, owner), None,
                   act_cls(config, qat=qat, freeze_step=freeze, group=group))


def _dynamic_lstm(module: nn.Module) -> bool:
    """An ``nn.LSTM`` that dynamic int8 covers (exported as ONNX LSTM, run by ORT's
    DynamicQuantizeLSTM): no projections (ONNX LSTM has none)."""
    return isinstance(module, nn.LSTM) and not getattr(module, "proj_size", 0)


def _in_out_linear(module: nn.Module) -> bool:
    """A layer computing ``x @ W (+ b)`` with a 2-D ``weight`` stored ``(in, out)`` (Hugging
    Face's Conv1D, or a type registered with ``input_axis=0``): quantized like a Linear."""
    w = getattr(module, "weight", None)
    return (isinstance(w, torch.Tensor) and w.dim() == 2 and "weight" in weight_names(module)
            and input_axis(module, "weight") == 0)


def _overridden(config, name: str, module, field: str) -> bool:
    """Whether a per-layer override of ``config`` sets ``field`` for layer ``name``."""
    from slimkit.core.selection import matches

    return any(field in fields and matches(name, module, pattern)
               for pattern, fields in config.overrides.items())


def _shared_per_tensor(module: nn.Module, tname: str) -> bool:
    """Whether the weight entering the quant stage shares its values across the whole tensor,
    so that one scale per tensor keeps them (one integer per shared value) where one per
    channel would split each shared value into up to one integer per channel.

    True for a weight under a per-tensor value-sharing stage (a clustering codebook: a
    parametrization reporting ``used_values()`` with ``per_channel`` False). A weight baked
    on a per-tensor grid (a stripped model re-quantized for export, a packed file replayed)
    is recognised by :class:`WeightFakeQuant` itself.
    """
    stages = getattr(getattr(module, "parametrizations", None), tname, None)
    return any(callable(getattr(p, "used_values", None)) and getattr(p, "per_channel", True)
               is False for p in stages or [])


def _weight_fake_quant(config, cfg, group_size, freeze, group, w, axis: int = 1):
    """The weight fake-quant the config asks for: fixed grid, learned step size or AdaRound's
    (a fixed grid that records whether its rounding was learned). ``axis``: the weight's
    input axis (0 only for (in, out) weights, which take the fixed grid; see select_layers)."""
    args = (cfg.weight_bits, cfg.per_channel, group_size, cfg.narrow_range)
    if axis == 0:
        return WeightFakeQuant(*args, freeze_step=freeze, group=group, input_axis=0)
    if getattr(config, "learn_ranges", False):
        with torch.no_grad():
            return LearnedWeightFakeQuant(*args, init=w.detach().clone(), freeze_step=freeze,
                                          group=group)
    if isinstance(config, AdaRoundConfig):
        return AdaRoundWeightFakeQuant(*args, group=group)
    return WeightFakeQuant(*args, freeze_step=freeze, group=group)


def _bn_output_stats(model, bn_after: dict) -> dict:
    """``{conv: (mean, std)}`` of each BatchNorm's output per channel (its beta and |gamma|),
    read before the BatchNorm is folded: what data-free bias correction needs."""
    stats = {}
    for conv, bn_name in bn_after.items():
        bn = get_module(model, bn_name)
        if bn.weight is None or bn.bias is None:
            continue
        stats[conv] = (bn.bias.detach().clone(), bn.weight.detach().abs().clone())
    return stats
