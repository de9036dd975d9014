"""The "weight-only" technique: selection, prepare, calibration, export notes.

Example:
    >>> sk.quantize(model, WeightOnlyConfig(bits=4, group_size=64, algorithm="hqq"))
    >>> [row[0] for row in weight_only_layers(model)][:2]
    ['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.k_proj']
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from slimkit.authoring import (
    Technique,
    expand_tied,
    get_module,
    layer_config,
    register_parametrization,
    select_weights,
)
from slimkit.core.sequential import find_blocks
from slimkit.techniques.weight_only.calibrate import calibrate_model, quant_of
from slimkit.techniques.weight_only.config import WeightOnlyConfig
from slimkit.techniques.weight_only.grid import check_group_size
from slimkit.techniques.weight_only.hqq import hqq_optimize
from slimkit.techniques.weight_only.parametrization import QUANT_STAGE, WeightOnlyQuant
from slimkit.techniques.weight_only.rtn import rtn

NAME = "weight-only"


def weight_only_layers(model: nn.Module) -> list[tuple]:
    """Every weight-only quantized tensor of ``model``, for exporters.

    Returns ``[(module_name, tensor_name, codes, scales, zeros, bits, group_size)]``, one row
    per site (a tied embedding and head give two rows sharing the same tensors): ``codes``
    uint8 ``[out, in]`` in ``[0, 2**bits - 1]``, ``scales`` and ``zeros`` float32
    ``[out, n_groups]`` (``n_groups = ceil(in / group_size)``, 1 when ``group_size`` is None),
    weight ``= (codes - zeros) * scales``. ``zeros`` are integer-valued unless the
    parametrization says ``integer_zeros=False`` (HQQ asymmetric); for an ``nn.Linear``,
    ``out`` is ``out_features``; for an ``nn.Embedding``, rows are tokens.

    Example:
        >>> name, tensor, codes, scales, zeros, bits, gs = weight_only_layers(model)[0]
        >>> w = (codes.float() - zeros.repeat_interleave(gs, 1)) * scales.repeat_interleave(gs, 1)
    """
    rows = []
    for mname, module in model.named_modules(remove_duplicate=False):
        p = quant_of(module)
        if p is not None:
            rows.append((mname, "weight", p.codes, p.scales, p.zeros, p.bits, p.group_size))
    return rows


def _head_names(model: nn.Module) -> set[str]:
    """Names of the output head(s): a Hugging Face model's output embeddings, and any Linear
    whose weight is an Embedding's table (tied)."""
    names: set[str] = set()
    by_id = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            head = get_out()
        if isinstance(head, nn.Module) and id(head) in by_id:
            names.add(by_id[id(head)])
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for n, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, nn.Linear) and id(m.weight) in tables:
            names.add(n)
    return names


def _in_features(w: torch.Tensor) -> int:
    return w.shape[1]


def count_tokens(batches) -> int:
    """Tokens in calibration batches: ``input_ids`` (or the first tensor) of each dict, the
    elements of integer tensors, the rows of float tensors ``[..., features]``."""
    total = 0
    for b in batches:
        t = b
        if isinstance(b, dict):
            t = b.get("input_ids", next((v for v in b.values() if isinstance(v, torch.Tensor)),
                                        None))
        elif isinstance(b, (tuple, list)):
            t = b[0] if b else None
        if not isinstance(t, torch.Tensor):
            continue
        total += t.numel() if not t.is_floating_point() else t.numel() // max(1, t.shape[-1])
    return total


class WeightOnlyTechnique(Technique):
    """Weight-only integer quantization (see :class:`WeightOnlyConfig`)."""

    name = NAME
    config_cls = WeightOnlyConfig
    family = "quantization"
    description = "block-wise int2/3/4/8 weights (RTN, HQQ, GPTQ, AWQ) for MatMulNBits"
    stage = QUANT_STAGE

    # -- selection -------------------------------------------------------------------------
    def select(self, model, config, targets, ignore):
        layers = select_weights(model, targets, ignore, technique=self.name)
        heads = _head_names(model)
        chosen, skipped = [], []
        for mname, tname in layers:
            module = get_module(model, mname)
            if tname != "weight":
                skipped.append(f"{mname}.{tname}")
            elif isinstance(module, nn.Embedding):
                if config.quantize_embedding:
                    chosen.append((mname, tname))
            elif isinstance(module, nn.Linear):
                if mname not in heads or config.quantize_lm_head:
                    chosen.append((mname, tname))
            else:
                skipped.append(f"{mname} ({type(module).__name__})")
        if skipped:
            warnings.warn(f"weight-only quantization covers nn.Linear (and nn.Embedding); "
                          f"left alone: {', '.join(skipped)}", stacklevel=3)
        if not any(isinstance(get_module(model, m), nn.Linear) for m, _ in chosen):
            raise ValueError(
                f"{type(model).__name__} has no nn.Linear layer to quantize with the selection "
                f"targets={targets!r}, ignore={ignore!r} (weight-only quantization needs one)")
        _warn_ties(model, chosen)
        for mname, tname in chosen:
            module = get_module(model, mname)
            cfg = layer_config(config, mname, module)
            check_group_size(_in_features(getattr(module, tname)), cfg.group_size,
                             mname or "model", cfg.allow_partial_group)
        return chosen

    # -- preparing -------------------------------------------------------------------------
    def prepare(self, model, config, layers):
        # Validate every layer before touching any, so a bad layer leaves the model unchanged.
        for mname, tname in layers:
            module = get_module(model, mname)
            cfg = layer_config(config, mname, module)
            check_group_size(_in_features(getattr(module, tname)), cfg.group_size,
                             mname or "model", cfg.allow_partial_group)
        in_blocks = _block_prefixes(model) if config.needs_data else []
        for sites in expand_tied(model, layers):
            mname, tname = sites[0]
            module = get_module(model, mname)
            cfg = layer_config(config, mname, module)    # per-layer bits / group_size
            w = getattr(module, tname).detach()
            if config.algorithm == "hqq":
                codes, scales, zeros = hqq_optimize(
                    w, cfg.bits, cfg.group_size, config.symmetric,
                    iterations=config.hqq_iterations, p=config.hqq_p)
            else:
                codes, scales, zeros = rtn(w, cfg.bits, cfg.group_size, config.symmetric)
            p = WeightOnlyQuant(codes.to(w.device), scales.to(w.device), zeros.to(w.device),
                                bits=cfg.bits, group_size=cfg.group_size,
                                algorithm=config.algorithm, integer_zeros=config.integer_zeros)
            if config.needs_data and not any(m.startswith(b) for m, _ in sites for b in in_blocks):
                # Outside the repeated blocks GPTQ / AWQ never run: round-to-nearest is final.
                p.calibrated.fill_(1)
            register_parametrization(model, sites, p)

    def apply(self, model, config, *, targets=None, ignore=None, example_inputs=None,
              calibration=None, **options):
        # Refuse missing or too little data before preparing anything.
        if config.needs_data:
            calibration = self._check_data(config, calibration)    # a list: read once
        return super().apply(model, config, targets=targets, ignore=ignore,
                             example_inputs=example_inputs, calibration=calibration, **options)

    def knobs(self, config):
        return {"bits": [8, 4]}

    # -- calibration -----------------------------------------------------------------------
    def needs_calibration(self, config) -> bool:
        return config.needs_data

    def _check_data(self, config, data) -> list:
        if data is None:
            raise ValueError(
                f"algorithm {config.algorithm!r} needs calibration data: pass calibration= a "
                f"list of batches with at least {config.calibration_tokens} tokens "
                "(WeightOnlyConfig.algorithm)")
        batches = list(data)
        tokens = count_tokens(batches)
        if tokens < config.calibration_tokens:
            raise ValueError(
                f"calibration data has {tokens} tokens in {len(batches)} batches; "
                f"{config.algorithm} needs at least {config.calibration_tokens} "
                "(WeightOnlyConfig.calibration_tokens)")
        return batches

    def calibrate(self, model, config, data, *, progress: bool = True, **options) -> None:
        if options:
            raise TypeError(f"unexpected keyword argument(s) {sorted(options)} for {self.name}")
        if not config.needs_data:
            raise ValueError(
                f"algorithm {config.algorithm!r} takes no calibration data (only gptq and awq "
                "do); drop calibration= (WeightOnlyConfig.algorithm)")
        batches = self._check_data(config, data)
        calibrate_model(model, config, batches, progress=progress)

    # -- strip, save, export ---------------------------------------------------------------
    def check_step(self, model, record) -> str | None:
        pending = [m for m, _ in record.get("layers", [])
                   if (p := quant_of(get_module(model, m))) is not None
                   and p.algorithm in ("gptq", "awq") and not int(p.calibrated)]
        if pending:
            return (f"weight-only {record['config']['_data']['algorithm']} was never calibrated "
                    f"for {len(pending)} layer(s) (e.g. {pending[0]}): they hold round-to-nearest "
                    "codes; pass calibration= to sk.quantize")
        return None

    def pre_export(self, model, ctx) -> None:
        # The MatMulNBits writer (onnx.py) notes what it needs (codes, baked weights, kernel
        # level) under ctx.notes["weight-only"]; the accessor's rows go beside them.
        from slimkit.techniques.weight_only import onnx as onnx_hooks

        onnx_hooks.pre_export(model, ctx)
        ctx.notes.setdefault(self.name, {})["rows"] = weight_only_layers(model)

    def post_export(self, proto, ctx):
        from slimkit.techniques.weight_only import onnx as onnx_hooks

        return onnx_hooks.post_export(proto, ctx)


def _block_prefixes(model: nn.Module) -> list[str]:
    try:
        return [f"{name}." for name, _ in find_blocks(model)]
    except ValueError:
        return []


def _warn_ties(model: nn.Module, chosen: list) -> None:
    # A tied embedding and head are one tensor: quantizing either quantizes both.
    for group in expand_tied(model, chosen):
        extra = [m for m, t in group if (m, t) not in chosen]
        if extra:
            picked = [m for m, t in group if (m, t) in chosen]
            warnings.warn(
                f"{', '.join(picked)} shares its weight with {', '.join(extra)}: both are "
                "quantized (one parametrization on the tied tensor)", stacklevel=4)
