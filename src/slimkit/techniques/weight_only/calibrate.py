"""GPTQ and AWQ calibration of a prepared model, one block at a time.

Both run through :func:`slimkit.core.sequential.run_sequential`: each block's weight-only
layers first compute with their float weights (the parametrization passes them through) while
the block runs on its captured inputs, then get their codes, so the next block is fed the
quantized block's outputs. Layers outside the repeated blocks (an LM head, an embedding) keep
the round-to-nearest codes ``prepare`` gave them.

Example:
    >>> calibrate_model(model, WeightOnlyConfig(algorithm="gptq"), batches)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from slimkit.core.sequential import BlockInputs, LinearInputStats, block_outputs, run_sequential
from slimkit.techniques.weight_only.awq import awq_clip, awq_search
from slimkit.techniques.weight_only.config import WeightOnlyConfig
from slimkit.techniques.weight_only.gptq import gptq_quantize
from slimkit.techniques.weight_only.parametrization import WeightOnlyQuant
from slimkit.techniques.weight_only.rtn import rtn


def quant_of(module: nn.Module) -> WeightOnlyQuant | None:
    """The module's weight-only parametrization of ``weight``, or None."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for p in module.parametrizations["weight"]:
        if isinstance(p, WeightOnlyQuant):
            return p
    return None


def float_weight(module: nn.Module) -> torch.Tensor:
    """What the weight-only stage of ``module.weight`` receives (the stages below applied)."""
    plist = module.parametrizations["weight"]
    w = plist.original
    for p in plist:
        if isinstance(p, WeightOnlyQuant):
            return w.detach()
        w = p(w)
    raise ValueError("module has no weight-only parametrization")


@contextlib.contextmanager
def float_mode(quants) -> Iterator[None]:
    """Let ``quants`` compute with their float weights for the duration (calibration)."""
    quants = list(quants)
    for p in quants:
        p.passthrough = True
    try:
        yield
    finally:
        for p in quants:
            p.passthrough = False
            p.override = None


def block_quants(block: nn.Module) -> dict[str, tuple[nn.Module, WeightOnlyQuant]]:
    """``{name in block: (Linear, its WeightOnlyQuant)}`` for the block's quantized Linears."""
    out = {}
    for name, m in block.named_modules():
        if isinstance(m, nn.Linear):
            p = quant_of(m)
            if p is not None:
                out[name] = (m, p)
    return out


def calibrate_model(model: nn.Module, config: WeightOnlyConfig, batches, *,
                    progress: bool = True, blocks=None) -> None:
    """GPTQ or AWQ (``config.algorithm``) over every block of a prepared ``model``
    (or only ``blocks``, ``[(name, module)]`` as :func:`find_blocks` gives them)."""
    on_block = _gptq_block if config.algorithm == "gptq" else _awq_block
    run_sequential(model, batches, lambda name, block, inputs: on_block(block, inputs, config),
                   progress=progress, blocks=blocks)


# -- GPTQ -------------------------------------------------------------------------------------


def _gptq_block(block: nn.Module, inputs: BlockInputs, config: WeightOnlyConfig) -> None:
    quants = block_quants(block)
    if not quants:
        return
    with float_mode(p for _, p in quants.values()), \
            LinearInputStats(block, layers=list(quants)) as stats:
        for args, kwargs in inputs:
            block(*args, **kwargs)
    for name, (module, p) in quants.items():
        w = float_weight(module)
        # p.bits / p.group_size: the layer's own setting (per-layer overrides).
        codes, scales, zeros = gptq_quantize(
            w, stats.hessian[name], p.bits, p.group_size, config.symmetric,
            damp=config.damp, act_order=config.act_order, block=config.block)
        p.set_(codes, scales, zeros)
        p.calibrated.fill_(1)


# -- AWQ --------------------------------------------------------------------------------------


def _common_parent(names: list[str]) -> str:
    parts = [n.split(".") for n in names]
    prefix = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        prefix.append(level[0])
    if len(names) == 1:
        return names[0]
    return ".".join(prefix)


def _scale_groups(block: nn.Module, quants: dict, inputs: BlockInputs) -> list[dict]:
    """Groups of Linears sharing one input, each with where ``1/s`` can be folded.

    A group's input is folded into its producer when the producer's output *is* the input
    tensor (found by identity on one forward pass): a module with a per-channel ``weight``
    (RMSNorm / LayerNorm: weight and bias divided by ``s``) or a Linear (rows divided by
    ``s``). Two Llama-family patterns reach through an operation: a gated MLP's ``down_proj``
    input is ``act(gate) * up``, linear in ``up_proj``'s rows; attention's ``o_proj`` input is
    a mix of ``v_proj``'s outputs per channel when the widths match (no grouped-query repeat).
    """
    consumer_input: dict[str, int] = {}
    produced: dict[int, str] = {}
    keep: list = []   # keeps the tensors alive so that their ids stay unique during the pass
    handles = []
    modules = dict(block.named_modules())
    for name, m in modules.items():
        if isinstance(m, nn.Linear):
            def pre(mod, args, name=name):
                consumer_input.setdefault(name, id(args[0]))
                keep.append(args[0])
            handles.append(m.register_forward_pre_hook(pre))
        if name and not list(m.children()) or name in quants:
            def post(mod, args, out, name=name):
                if isinstance(out, torch.Tensor):
                    produced.setdefault(id(out), name)
                    keep.append(out)
            handles.append(m.register_forward_hook(post))
    try:
        args, kwargs = inputs[0]
        block(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    by_input: dict[int, list[str]] = {}
    for name in quants:
        if name in consumer_input:
            by_input.setdefault(consumer_input[name], []).append(name)
    # An input also read by a Linear left unquantized cannot be rescaled: that layer would
    # see x / s uncompensated.
    shared = {consumer_input[n] for n in consumer_input if n not in quants}
    groups = []
    for tid, names in by_input.items():
        producer = produced.get(tid) if tid not in shared else None
        kind = None
        if producer is not None:
            pm = modules[producer]
            width = quants[names[0]][0].in_features
            if isinstance(pm, nn.Linear) and pm.out_features == width:
                kind = "rows"
            elif isinstance(getattr(pm, "weight", None), torch.Tensor) and \
                    tuple(pm.weight.shape) == (width,):
                kind = "norm"
        if kind is None and len(names) == 1 and tid not in shared:
            parent, _, leaf = names[0].rpartition(".")
            owner = modules[parent] if parent else block
            prefix = f"{parent}." if parent else ""
            if leaf == "down_proj" and isinstance(getattr(owner, "up_proj", None), nn.Linear):
                producer, kind = f"{prefix}up_proj", "rows"
            elif leaf == "o_proj" and isinstance(getattr(owner, "v_proj", None), nn.Linear) \
                    and owner.v_proj.out_features == quants[names[0]][0].in_features:
                producer, kind = f"{prefix}v_proj", "rows"
        groups.append({"layers": names, "producer": producer if kind else None, "kind": kind})
    return groups


def _fold(block: nn.Module, producer: str, kind: str, s: torch.Tensor) -> None:
    m = block.get_submodule(producer)
    with torch.no_grad():
        if kind == "norm":
            m.weight.div_(s.to(m.weight.dtype))
            if getattr(m, "bias", None) is not None:
                m.bias.div_(s.to(m.bias.dtype))
            return
        target = m.parametrizations["weight"].original if quant_of(m) is not None else m.weight
        target.div_(s.to(target.dtype).unsqueeze(1))
        if m.bias is not None:
            m.bias.div_(s.to(m.bias.dtype))


def _awq_block(block: nn.Module, inputs: BlockInputs, config: WeightOnlyConfig) -> None:
    quants = block_quants(block)
    if not quants:
        return
    per_batch = max(1, inputs.tokens // len(inputs))
    n_search = min(len(inputs), max(1, math.ceil(config.awq_search_tokens / per_batch)))
    clip_rows = 512
    ps = [p for _, p in quants.values()]
    with float_mode(ps):
        groups = _scale_groups(block, quants, inputs)
        inspect_names = sorted({"" if config.awq_objective == "block"
                                else _common_parent(g["layers"]) for g in groups
                                if g["producer"]})
        captured: dict[str, list] = {n: [] for n in inspect_names if n}
        handles = []
        for n in captured:
            def grab(mod, args, kwargs, n=n):
                if len(captured[n]) < n_search:
                    captured[n].append((tuple(a.detach().clone() if isinstance(a, torch.Tensor)
                                              else a for a in args),
                                        {k: v.detach().clone() if isinstance(v, torch.Tensor)
                                         else v for k, v in kwargs.items()}))
            handles.append(block.get_submodule(n).register_forward_pre_hook(grab,
                                                                            with_kwargs=True))
        try:
            with LinearInputStats(block, layers=list(quants), hessian=False, abs_mean=True,
                                  keep=clip_rows,
                                  keep_per_batch=math.ceil(clip_rows / len(inputs))) as stats:
                for args, kwargs in inputs:
                    block(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
        in_scale: dict[str, torch.Tensor] = {}
        for g in groups:
            if not g["producer"]:
                continue
            where = "" if config.awq_objective == "block" else _common_parent(g["layers"])
            module = block.get_submodule(where) if where else block
            replay = BlockInputs(captured[where], inputs.device) if where else inputs[:n_search]
            ref = block_outputs(module, replay)
            layers = [quants[n] for n in g["layers"]]
            weights = [float_weight(m) for m, _ in layers]

            def evaluate(candidates, layers=layers, module=module, replay=replay, ref=ref):
                for (_, p), c in zip(layers, candidates):
                    p.override = c
                try:
                    out = block_outputs(module, replay)
                finally:
                    for _, p in layers:
                        p.override = None
                return sum(float((o - r).pow(2).mean()) for o, r in zip(out, ref))

            first = layers[0][1]    # layers sharing an input share the first one's grid search
            s, _, _ = awq_search(weights, stats.abs_mean[g["layers"][0]], evaluate, first.bits,
                                 first.group_size, config.symmetric, grid=config.awq_grid)
            with torch.no_grad():
                for m, _ in layers:
                    m.parametrizations["weight"].original.mul_(s.to(m.weight.dtype))
            _fold(block, g["producer"], g["kind"], s)
            for n in g["layers"]:
                in_scale[n] = s
    for name, (module, p) in quants.items():
        w = float_weight(module)
        clip = 1.0
        if config.awq_clip and name in stats.inputs:
            x = stats.inputs[name].float()
            if name in in_scale:
                x = x / in_scale[name]
            clip = awq_clip(w, x, p.bits, p.group_size, config.symmetric)
        p.set_(*rtn(w, p.bits, p.group_size, config.symmetric, clip))
        p.calibrated.fill_(1)
