"""The ``sparsegpt`` and ``wanda`` techniques: one-shot pruning from calibration data.

``prepare`` puts the pruning folder's own :class:`PruningMask` (all ones) on every selected
``nn.Linear`` inside the model's repeated blocks, with a schedule that never refreshes the
mask; ``calibrate`` walks the blocks with :func:`slimkit.core.sequential.run_sequential`:
per block, one pass gathers the layers' input statistics (Hessians for SparseGPT, squared
input norms for Wanda) with the block still dense, then every layer is pruned (SparseGPT also
rewrites the kept weights), and the engine feeds the pruned block's outputs to the next
block. Masks, ``sk.strip``, the N:M checker, clustering and quantization on top all work as
for magnitude pruning.

Example:
    >>> sk.prune(model, SparseGPTConfig(0.5), calibration=batches)
    >>> sk.prune(model, WandaConfig(pattern="2:4"), calibration=batches)
    >>> sk.check_sparsity(sk.strip(model), "2:4").ok
    True
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from slimkit.core.parametrize import expand_tied, get_module, raw_tensor
from slimkit.core.parametrize import register as register_parametrization
from slimkit.core.records import group_id
from slimkit.core.selection import module_type, select_weights
from slimkit.core.sequential import LinearInputStats, find_blocks, run_sequential
from slimkit.core.stages import register_stage
from slimkit.core.technique import Technique
from slimkit.techniques.pruning.config import MagnitudePruningConfig
from slimkit.techniques.pruning.mask import PruningMask
from slimkit.techniques.pruning.nm import nm_layers
from slimkit.techniques.pruning.oneshot.config import (
    OneShotPruningConfig,
    OneShotSparsity,
    SparseGPTConfig,
    WandaConfig,
)
from slimkit.techniques.pruning.oneshot.solver import sparsegpt_prune, wanda_keep


def model_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The repeated blocks to calibrate one at a time; the whole model as one block when it
    has none (a small MLP / CNN: its activations fit anyway)."""
    try:
        blocks = find_blocks(model)
    except ValueError:
        return [("", model)]
    # A prepared model's ParametrizationList is a ModuleList holding a parameter: in a model
    # without real blocks (a CNN) find_blocks would pick one; it is not a block.
    if any(".parametrizations." in f".{name}." for name, _ in blocks):
        return [("", model)]
    return blocks


def _in_block(name: str, prefixes: list[str]) -> bool:
    return any(p == "" or name == p or name.startswith(p + ".") for p in prefixes)


def count_tokens(batches) -> int:
    """Rows the layers will see: ``input_ids`` elements of dict batches, rows of tensors."""
    total = 0
    for b in batches:
        t = b
        if isinstance(b, dict):
            t = b.get("input_ids", next((v for v in b.values() if isinstance(v, torch.Tensor)),
                                        None))
        elif isinstance(b, (tuple, list)):
            t = b[0] if b else None
        if isinstance(t, torch.Tensor):
            total += t.numel() if not t.is_floating_point() else (t.shape[0] if t.dim() else 1)
    return total


def as_batches(data, batch_size: int = 32) -> list:
    """Calibration data as a list of batches: a tensor is split into rows of ``batch_size``."""
    if data is None:
        return []
    if isinstance(data, torch.Tensor):
        return list(torch.split(data, batch_size)) if data.dim() else []
    if isinstance(data, dict):
        return [data]
    if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise TypeError("calibration must be a list of batches (dicts of tensors, tensors) or a "
                        f"tensor of inputs, got {type(data).__name__}")
    return list(data)


def mask_of(module: nn.Module) -> PruningMask | None:
    """The module's :class:`PruningMask` on ``weight``, or None."""
    plist = getattr(getattr(module, "parametrizations", None), "weight", None)
    if plist is None:
        return None
    return next((p for p in plist if isinstance(p, PruningMask)), None)


class OneShotPruning(Technique):
    """Base of SparseGPT and Wanda: selection, masks, block-by-block calibration."""

    family = "pruning"
    stage = register_stage("mask", 100)
    needs: dict = {}

    # -- selection -------------------------------------------------------------------------
    def select(self, model, config, targets, ignore):
        layers = select_weights(model, targets, ignore, technique=self.name)
        prefixes = [name for name, _ in model_blocks(model)]
        chosen, skipped = [], []
        for mname, tname in layers:
            module = get_module(model, mname)
            if tname != "weight" or not issubclass(module_type(module), nn.Linear):
                skipped.append(f"{mname}.{tname} ({module_type(module).__name__}: {self.name} "
                               "prunes nn.Linear layers)")
            elif not _in_block(mname, prefixes):
                skipped.append(f"{mname} (outside the repeated blocks "
                               f"{prefixes[0]}..{prefixes[-1]}, calibrated one at a time)")
            else:
                chosen.append((mname, tname))
        if not chosen:
            raise ValueError(
                f"{self.name} found no nn.Linear inside the repeated blocks of "
                f"{type(model).__name__} with targets={targets!r}, ignore={ignore!r}")
        if config.nm is not None:
            chosen = nm_layers(model, chosen, config.nm[1])
        if skipped:
            warnings.warn(f"slimkit: {self.name} leaves {len(skipped)} weight(s) dense: "
                          + "; ".join(skipped), stacklevel=4)
        return chosen

    def knobs(self, config):
        return {} if config.nm is not None else {"sparsity": [0.3, 0.5, 0.6, 0.7]}

    # -- preparing -------------------------------------------------------------------------
    def prepare(self, model, config, layers):
        for mname, tname in layers:
            t = raw_tensor(get_module(model, mname), tname)
            if not torch.is_floating_point(t):
                raise ValueError(f"{mname}.{tname} is {t.dtype}; {self.name} needs a float weight")
        group = group_id(model, "prune")
        for sites in expand_tied(model, layers):
            mname, tname = sites[0]
            module = get_module(model, mname)
            target = config.layer_sparsity(mname, module)
            # The mask's own config: the one-shot schedule (never refreshed by sk.Scheduler)
            # and the pattern, so stats, strip and the N:M checker read it as usual.
            mask_cfg = MagnitudePruningConfig(OneShotSparsity(target), pattern=config.pattern) \
                if config.pattern is not None and target > 0 else \
                MagnitudePruningConfig(OneShotSparsity(target))
            register_parametrization(model, sites, PruningMask(raw_tensor(module, tname),
                                                               mask_cfg, group))

    def apply(self, model, config, *, targets=None, ignore=None, example_inputs=None,
              calibration=None, **options):
        if calibration is not None:
            self._check_data(config, calibration)
        return super().apply(model, config, targets=targets, ignore=ignore,
                             example_inputs=example_inputs, calibration=calibration, **options)

    # -- calibration -----------------------------------------------------------------------
    def needs_calibration(self, config) -> bool:
        return True

    def _check_data(self, config: OneShotPruningConfig, data) -> list:
        cls = type(config).__name__
        batches = as_batches(data)
        if not batches:
            raise ValueError(f"{self.name} needs calibration data: pass calibration= a list of "
                             f"batches with at least {config.calibration_tokens} tokens "
                             f"({cls}.calibration_tokens)")
        tokens = count_tokens(batches)
        if tokens < config.calibration_tokens:
            raise ValueError(
                f"calibration data has {tokens} tokens in {len(batches)} batch(es); {self.name} "
                f"needs at least {config.calibration_tokens} ({cls}.calibration_tokens)")
        return batches

    def calibrate(self, model, config, data, *, progress: bool = True, **options) -> None:
        if options:
            raise TypeError(f"unexpected keyword argument(s) {sorted(options)} for {self.name}")
        batches = self._check_data(config, data)
        layers = {m for rec in _records(model, self.name) for m, _ in rec["layers"]}
        blocks = model_blocks(model)

        def on_block(name, block, inputs):
            prefix = f"{name}." if name else ""
            rel = {m[len(prefix):]: m for m in sorted(layers) if m.startswith(prefix)}
            if rel:
                self._prune_block(block, rel, inputs, config)

        run_sequential(model, batches, on_block, blocks=blocks, progress=progress)

    def _prune_block(self, block: nn.Module, rel: dict, inputs, config) -> None:
        with LinearInputStats(block, layers=list(rel), **self.needs) as stats:
            for args, kwargs in inputs:
                block(*args, **kwargs)
        idle = [full for short, full in rel.items() if not stats.samples.get(short, 0)]
        if idle:
            # E.g. MultiheadAttention's out_proj: its weight is read without calling it.
            warnings.warn(f"slimkit: {self.name} leaves {len(idle)} layer(s) dense that never "
                          f"ran during calibration: {', '.join(idle)}", stacklevel=2)
        rel = {short: full for short, full in rel.items() if full not in idle}
        for short, full in rel.items():
            seen = stats.samples[short]
            if seen < config.calibration_tokens:
                raise ValueError(
                    f"{full} saw {seen} input rows during calibration; {self.name} needs at "
                    f"least {config.calibration_tokens} ({type(config).__name__}."
                    "calibration_tokens)")
        for short, full in rel.items():
            module = block.get_submodule(short)
            p = mask_of(module)
            original = module.parametrizations["weight"].original
            target = config.layer_sparsity(full, module)
            w, keep = self.prune_layer(original.detach(), stats, short, full, target, config)
            with torch.no_grad():
                p.mask.copy_(keep.to(p.mask.dtype))
                original.copy_(w.to(original.dtype))
                original.masked_fill_(~keep, 0.0)

    def prune_layer(self, w, stats, short, full, sparsity, config):
        """``(new weight, keep mask)`` of one layer from the block's statistics."""
        raise NotImplementedError

    # -- strip, save, export ---------------------------------------------------------------
    def check_step(self, model, record) -> str | None:
        pending = []
        for mname, _ in record.get("layers", []):
            p = mask_of(get_module(model, mname))
            if p is not None and p.config.schedule.target > 0 and bool((p.mask != 0).all()):
                pending.append(mname)
        targeted = [m for m, _ in record.get("layers", [])
                    if (p := mask_of(get_module(model, m))) is not None
                    and p.config.schedule.target > 0]
        # Some layers may stay dense by design (never called during calibration); all of
        # them dense means calibration never ran.
        if pending and len(pending) == len(targeted):
            return (f"{self.name} was never calibrated for {len(pending)} layer(s) (e.g. "
                    f"{pending[0]}): they are still dense; pass calibration= to sk.prune")
        return None

    def cli_commands(self):
        return []


def _records(model, name):
    from slimkit.core.records import records

    return [r for r in records(model) if r["technique"] == name and not r.get("stripped")]


class SparseGPT(OneShotPruning):
    """SparseGPT: Hessian-based one-shot pruning with weight reconstruction."""

    name = "sparsegpt"
    config_cls = SparseGPTConfig
    description = "One-shot pruning from the layer Hessian, kept weights updated (SparseGPT)."
    needs = {"hessian": True}

    def prune_layer(self, w, stats, short, full, sparsity, config):
        return sparsegpt_prune(w, stats.hessian[short], sparsity, nm=config.nm,
                               damp=config.damp, block=config.block, name=full)

    def conformance_entries(self):
        from slimkit.techniques.pruning.oneshot.conformance import sparsegpt_entries

        return sparsegpt_entries()


class Wanda(OneShotPruning):
    """Wanda: prune by |weight| x input norm per output row, no update."""

    name = "wanda"
    config_cls = WandaConfig
    description = "One-shot pruning by |weight| x input-activation norm per row (Wanda)."
    needs = {"hessian": False, "sq_norm": True}

    def prune_layer(self, w, stats, short, full, sparsity, config):
        keep = wanda_keep(w, stats.sq_norm[short], sparsity, nm=config.nm)
        return w * keep, keep

    def conformance_entries(self):
        from slimkit.techniques.pruning.oneshot.conformance import wanda_entries

        return wanda_entries()
