"""The ``smoothquant`` technique: SmoothQuant W8A8 of a transformer, calibrated block by block.

``prepare`` gives every selected ``nn.Linear`` the quantization folder's int8 weight
fake-quant (per output channel) and a static per-tensor uint8 input quantizer (its
``ActivationQuantizer``). ``calibrate`` walks the repeated blocks with
:func:`slimkit.core.sequential.run_sequential`; per block, with float weights, it measures
``max |x|`` per input channel of every layer, folds the smoothing scales into the producers
(:mod:`.smoothquant_scales`; ``alpha="search"`` picks alpha per group), verifies the block's
float output did not change, then calibrates the block's input ranges with int8 weights, so
the next block is fed the W8A8 block's outputs. Export runs the layers as ONNX Runtime's
int8 MatMulInteger (:mod:`.smoothquant_export`).

Example:
    >>> sk.quantize(model, SmoothQuantConfig(alpha=0.5), calibration=batches)
    >>> sk.export_onnx(model, "w8a8.onnx", example_inputs=ids)
"""

from __future__ import annotations

import contextlib
import math
import warnings

import torch
import torch.nn as nn

from slimkit.core.batch import batch_inputs, call_model
from slimkit.core.parametrize import expand_tied, get_module, raw_tensor
from slimkit.core.parametrize import register as register_parametrization
from slimkit.core.records import group_id, records
from slimkit.core.selection import module_type, select_weights
from slimkit.core.sequential import (
    LinearInputStats,
    block_outputs,
    find_blocks,
    run_sequential,
)
from slimkit.core.technique import Technique
from slimkit.techniques.quantization.activation import INPUT, ActivationQuantizer, attach
from slimkit.techniques.quantization.config import QuantizationConfig
from slimkit.techniques.quantization.fake_quant import QUANT_STAGE, WeightFakeQuant
from slimkit.techniques.quantization.smoothquant_config import SmoothQuantConfig
from slimkit.techniques.quantization.smoothquant_export import (
    post_export,
    pre_export,
    weight_fake_quant,
)
from slimkit.techniques.quantization.smoothquant_scales import (
    find_groups,
    fold,
    restore,
    search_alpha,
    smooth_scales,
)

NAME = "smoothquant"


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    try:
        blocks = find_blocks(model)
    except ValueError:
        return [("", model)]
    # A prepared model's ParametrizationList is a ModuleList holding a parameter: in a model
    # without real blocks (a CNN) find_blocks would pick one; it is not a block.
    if any(".parametrizations." in f".{name}." for name, _ in blocks):
        return [("", model)]
    return blocks


def _count_tokens(batches) -> int:
    total = 0
    for b in batches:
        t = b.get("input_ids", next(iter(b.values()), None)) if isinstance(b, dict) else (
            b[0] if isinstance(b, (tuple, list)) and b else b)
        if isinstance(t, torch.Tensor):
            total += t.numel() if not t.is_floating_point() else (t.shape[0] if t.dim() else 1)
    return total


def _as_batches(data) -> list:
    if data is None:
        return []
    if isinstance(data, torch.Tensor):
        return list(torch.split(data, 32)) if data.dim() else []
    if isinstance(data, dict):
        return [data]
    return list(data)


def _weight_quant(module: nn.Module) -> WeightFakeQuant | None:
    plist = getattr(getattr(module, "parametrizations", None), "weight", None)
    return None if plist is None else next(
        (p for p in plist if isinstance(p, WeightFakeQuant)), None)


def _identity(w):
    return w


@contextlib.contextmanager
def float_weights(modules):
    """Let the weight fake-quant of ``modules`` pass float weights through (statistics and the
    fold check need the float function)."""
    ps = [p for p in (_weight_quant(m) for m in modules) if p is not None]
    for p in ps:
        p.forward = _identity   # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        for p in ps:
            del p.forward


def smoothing_report(model: nn.Module) -> dict[str, float | None]:
    """``{layer: alpha used}`` after calibration (None: the layer was not smoothed)."""
    return {n: getattr(m._modules[INPUT], "sk_alpha", None)
            for n, m in model.named_modules() if isinstance(m._modules.get(INPUT),
                                                           ActivationQuantizer)}


class SmoothQuant(Technique):
    """SmoothQuant W8A8 (see :class:`SmoothQuantConfig`)."""

    name = NAME
    config_cls = SmoothQuantConfig
    family = "quantization"
    stage = QUANT_STAGE
    description = "W8A8 with activation outliers smoothed into the weights (SmoothQuant)."

    # -- selection -------------------------------------------------------------------------
    def select(self, model, config, targets, ignore):
        layers = select_weights(model, targets, ignore, technique=self.name)
        tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        chosen, skipped = [], []
        for mname, tname in layers:
            module = get_module(model, mname)
            if tname != "weight" or not issubclass(module_type(module), nn.Linear):
                skipped.append(f"{mname}.{tname} ({module_type(module).__name__}: W8A8 covers "
                               "nn.Linear)")
            elif id(raw_tensor(module, "weight")) in tables:
                skipped.append(f"{mname} (its weight is an embedding table: tied weights "
                               "cannot take smoothing scales)")
            else:
                chosen.append((mname, tname))
        if not chosen:
            raise ValueError(f"smoothquant found no nn.Linear to quantize in "
                             f"{type(model).__name__} (targets={targets!r}, ignore={ignore!r})")
        if skipped:
            warnings.warn(f"slimkit: smoothquant leaves {len(skipped)} weight(s) float: "
                          + "; ".join(skipped), stacklevel=4)
        return chosen

    # -- preparing -------------------------------------------------------------------------
    @staticmethod
    def _act_config(config: SmoothQuantConfig) -> QuantizationConfig:
        return QuantizationConfig(mode="static", observer=config.observer,
                                  percentile=config.percentile)

    def prepare(self, model, config, layers, *, weights: bool = True):
        for mname, _ in layers:
            t = raw_tensor(get_module(model, mname), "weight")
            if not torch.is_floating_point(t):
                raise ValueError(f"{mname}.weight is {t.dtype}; smoothquant needs a float weight")
        group = group_id(model, "quant")
        qcfg = self._act_config(config)
        for sites in expand_tied(model, layers) if weights else []:
            register_parametrization(model, sites, weight_fake_quant(group))
        for mname, _ in layers:
            attach(get_module(model, mname), ActivationQuantizer(qcfg, group=group), None)

    def replay(self, model, config, layers, record):
        self.prepare(model, config, layers, weights=not record.get("stripped"))

    def apply(self, model, config, *, targets=None, ignore=None, example_inputs=None,
              calibration=None, **options):
        if calibration is not None:
            self._check_data(config, calibration)
        return super().apply(model, config, targets=targets, ignore=ignore,
                             example_inputs=example_inputs, calibration=calibration, **options)

    # -- calibration -----------------------------------------------------------------------
    def needs_calibration(self, config) -> bool:
        return True

    def _check_data(self, config, data) -> list:
        batches = _as_batches(data)
        if not batches:
            raise ValueError(f"smoothquant needs calibration data: pass calibration= a list of "
                             f"batches with at least {config.calibration_tokens} tokens "
                             "(SmoothQuantConfig.calibration_tokens)")
        tokens = _count_tokens(batches)
        if tokens < config.calibration_tokens:
            raise ValueError(
                f"calibration data has {tokens} tokens in {len(batches)} batch(es); smoothquant "
                f"needs at least {config.calibration_tokens} (SmoothQuantConfig."
                "calibration_tokens)")
        return batches

    def calibrate(self, model, config, data, *, progress: bool = True, **options) -> None:
        if options:
            raise TypeError(f"unexpected keyword argument(s) {sorted(options)} for {self.name}")
        batches = self._check_data(config, data)
        names = sorted({m for r in records(model) if r["technique"] == self.name
                        for m, _ in r["layers"]})
        unsmoothed: list[str] = []

        def on_block(bname, block, inputs):
            prefix = f"{bname}." if bname else ""
            rel = [n[len(prefix):] for n in names if n.startswith(prefix)]
            if not rel:
                return
            if config.smooths:
                unsmoothed.extend(prefix + n for n in self._smooth_block(block, rel, inputs,
                                                                          config))
            self._observe(block, rel, inputs)

        run_sequential(model, batches, on_block, blocks=_blocks(model), progress=progress)
        rest = [n for n in names if not bool(get_module(model, n)._modules[INPUT].calibrated)]
        if rest:
            # Layers outside the repeated blocks (an untied LM head): one pass of the model.
            self._observe(model, rest, None, batches=batches)
        if unsmoothed:
            warnings.warn(
                f"slimkit: smoothquant could not fold smoothing scales for {len(unsmoothed)} "
                f"layer(s), quantized without smoothing: {', '.join(unsmoothed)}", stacklevel=3)
        idle = [n for n in names if not bool(get_module(model, n)._modules[INPUT].calibrated)]
        if idle:
            warnings.warn(f"slimkit: smoothquant: {len(idle)} layer(s) never ran during "
                          f"calibration: {', '.join(idle)}", stacklevel=3)

    def _smooth_block(self, block, rel: list[str], inputs, config) -> list[str]:
        """Fold smoothing scales into the block; returns the layers left unsmoothed."""
        modules = [block.get_submodule(n) for n in rel]
        search = config.alpha == "search"
        skipped = []
        with float_weights(modules):
            ref = block_outputs(block, inputs[:1])
            keep = config.search_rows if search else 0
            with LinearInputStats(block, layers=rel, hessian=False, abs_max=True, keep=keep,
                                  keep_per_batch=math.ceil(keep / len(inputs)) if keep else None
                                  ) as stats:
                for args, kwargs in inputs:
                    block(*args, **kwargs)
            args0, kwargs0 = inputs[0]
            for g in find_groups(block, rel, args0, kwargs0):
                if g["producer"] is None:
                    skipped.extend(f"{n} (no norm or Linear produces its input)"
                                   for n in g["layers"])
                    continue
                weights = [block.get_submodule(n).parametrizations["weight"].original
                           for n in g["layers"]]
                first = g["layers"][0]
                if search:
                    alpha, s = search_alpha(stats.inputs[first], stats.abs_max[first], weights,
                                            config.alpha_grid)
                else:
                    alpha = float(config.alpha)
                    s = smooth_scales(stats.abs_max[first], weights, alpha)
                undo = fold(block, g, s)
                out = block_outputs(block, inputs[:1])
                if not all(_close(o, r) for o, r in zip(out, ref)):
                    restore(undo)
                    skipped.extend(f"{n} ({g['producer']}'s output is also used elsewhere)"
                                   for n in g["layers"])
                    continue
                for n in g["layers"]:
                    block.get_submodule(n)._modules[INPUT].sk_alpha = alpha
        return skipped

    @staticmethod
    def _observe(owner: nn.Module, rel: list[str], inputs, batches=None) -> None:
        quants = [owner.get_submodule(n)._modules[INPUT] for n in rel]
        for q in quants:
            q.start_calibration()
        try:
            with torch.no_grad():
                if batches is None:
                    for args, kwargs in inputs:
                        owner(*args, **kwargs)
                else:
                    for b in batches:
                        call_model(owner, batch_inputs(b))
        finally:
            for q in quants:
                q.finish_calibration()

    # -- strip, save, export ---------------------------------------------------------------
    def survives_strip(self, record) -> bool:
        return True

    def check_step(self, model, record) -> str | None:
        idle = [m for m, _ in record.get("layers", [])
                if not bool(getattr(get_module(model, m)._modules.get(INPUT), "calibrated",
                                    True))]
        if idle:
            return (f"smoothquant was never calibrated for {len(idle)} layer(s) (e.g. {idle[0]}):"
                    " pass calibration= to sk.quantize")
        return None

    def pre_export(self, model, ctx) -> None:
        layers, stripped = [], []
        for rec in records(model):
            if rec["technique"] == self.name:
                names = [m for m, _ in rec["layers"]]
                layers += names
                if rec.get("stripped"):
                    stripped += names
        pre_export(model, ctx, layers, stripped)

    def post_export(self, proto, ctx):
        return post_export(proto, ctx)

    def conformance_entries(self):
        from slimkit.techniques.quantization.smoothquant_conformance import ENTRIES

        return ENTRIES


def _close(out: torch.Tensor, ref: torch.Tensor) -> bool:
    # Smoothing is exact in real arithmetic; float32 rounding stays far below this bound,
    # while a producer whose output also feeds a residual changes the block's output by O(1).
    return float((out - ref).abs().max()) <= 1e-3 * float(ref.abs().max()) + 1e-5


TECHNIQUE = SmoothQuant()
