"""Checks that a channel pruning computes what it claims, run on the dry-run copy.

Torch-Pruning maps each removed channel to every tensor it touches; where its mapping is wrong
(a ``permute`` before a ``reshape`` feeding the classifier, a tied weight it does not know is
tied) the pruned model still runs, with every shape fitting, and computes something else. So
after pruning the copy:

- **function**: the pruned model must compute what the original computes with the removed
  channels silenced (their producing rows, biases and BatchNorm affine zeroed, so they output
  exact zeros). A wrong mapping keeps the wrong consumer columns and the outputs differ; the
  error names the first layer whose output differs. Models where a removed channel reaches a
  layer that mixes channels by statistics (LayerNorm, attention) cannot be checked this way
  and are not;
- **ties**: weights shared by several modules (``head.weight = embed.weight``) must stay one
  tensor: after pruning they must have one shape and one value, and are tied again.

Example:
    >>> plan = removed_channels(pruner, groups)        # before group.prune()
    >>> check_function(original, pruned_copy, inputs, plan)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from slimkit.core.batch import call_model, flatten_outputs

_WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd)
_NORM = nn.modules.batchnorm._BatchNorm


@dataclass
class Plan:
    """What one pruning step removes, gathered from Torch-Pruning's groups before pruning.

    ``removed``: module name -> output channels removed (Linear / Conv rows, BatchNorm
    features); ``unverifiable``: modules in a group that zeroing cannot stand in for;
    ``roots``: module name -> the root layers of the groups that touched it.
    """

    removed: dict[str, set[int]] = field(default_factory=dict)
    unverifiable: set[str] = field(default_factory=set)
    roots: dict[str, set[str]] = field(default_factory=dict)


def removed_channels(pruner, groups) -> Plan:
    """The :class:`Plan` of Torch-Pruning ``groups`` (call before ``group.prune()``)."""
    plan = Plan()
    names = pruner.DG._module2name
    for group in groups:
        root = names.get(group[0].dep.target.module, "?")
        for dep, idxs in group:
            module = dep.target.module
            if not isinstance(module, nn.Module):
                continue   # Torch-Pruning's own op nodes (cat, reshape, add): no weights
            name = names.get(module, "?")
            plan.roots.setdefault(name, set()).add(root)
            plain = {int(getattr(i, "idx", i)) for i in idxs}
            producer = (isinstance(module, _WEIGHTED)
                        and pruner.DG.is_out_channel_pruning_fn(dep.handler))
            if producer or (isinstance(module, _NORM) and module.affine):
                plan.removed.setdefault(name, set()).update(plain)
            elif not isinstance(module, _WEIGHTED) and (
                    isinstance(module, _NORM) or any(True for _ in module.parameters(False))):
                plan.unverifiable.add(name)
    return plan


def check_function(original: nn.Module, pruned: nn.Module, inputs, plan: Plan) -> None:
    """Refuse, naming the first diverging layer, when ``pruned`` does not compute what
    ``original`` computes with the removed channels silenced."""
    if plan.unverifiable or not plan.removed:
        return
    reference = silenced(original, plan.removed)
    ref_trace, ref_out = _traced(reference, inputs)
    got_trace, got_out = _traced(pruned, inputs)
    if any(a.shape != b.shape for a, b in zip(ref_out, got_out)):
        return   # the output layer itself lost channels (keep_output_layer=False)
    if all(_close(a, b) for a, b in zip(ref_out, got_out)):
        return
    first = next((name for name, out in got_trace.items()
                  if name in ref_trace and ref_trace[name].shape == out.shape
                  and not _close(ref_trace[name], out)), None)
    worst = max(float((a - b).abs().max()) for a, b in zip(ref_out, got_out)
                if a.shape == b.shape)
    where = f"; the first layer whose output differs is {first!r}" if first else ""
    raise ValueError(
        f"channel pruning would change what {type(original).__name__} computes: the pruned "
        f"model differs from the original with the removed channels zeroed (max abs diff "
        f"{worst:.3g}){where}. Torch-Pruning mis-mapped channels there (a permute or "
        f"reshape before that layer does this); leave the layers feeding it whole "
        f"(ChannelPruningConfig.ignore)"
    )


def silenced(model: nn.Module, removed: dict[str, set[int]]) -> nn.Module:
    """A copy of ``model`` whose removed channels output exact zeros."""
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        for name, idxs in removed.items():
            module = ref.get_submodule(name)
            idx = torch.tensor(sorted(idxs), dtype=torch.long)
            if isinstance(module, nn.modules.conv._ConvTransposeNd):
                module.weight[:, idx] = 0   # stored (in, out / groups, ...)
            else:
                module.weight[idx] = 0
            if module.bias is not None:
                module.bias[idx] = 0
    return ref


def tie_groups(model: nn.Module) -> list[list[tuple[str, str]]]:
    """Every parameter held by more than one module, as ``[(module name, attribute), ...]``."""
    seen: dict[int, list[tuple[str, str]]] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for pname, p in module._parameters.items():
            if p is not None:
                seen.setdefault(id(p), []).append((mname, pname))
    return [sites for sites in seen.values() if len({m for m, _ in sites}) > 1]


def check_ties(pruned: nn.Module, ties, plan: Plan) -> None:
    """Refuse when pruning gave the sites of one tied weight different shapes or values."""
    for sites in ties:
        tensors = [getattr(pruned.get_submodule(m), p) for m, p in sites]
        if all(t.shape == tensors[0].shape and torch.equal(t, tensors[0]) for t in tensors):
            continue
        names = [f"{m}.{p}" if m else p for m, p in sites]
        shapes = ", ".join(f"{n} {list(t.shape)}" for n, t in zip(names, tensors))
        roots = sorted({r for m, _ in sites for r in plan.roots.get(m, ())})
        hint = f"ignore=[{', '.join(repr(r) for r in roots)}]" if roots else "ignore=[...]"
        raise ValueError(
            f"channel pruning would untie {' and '.join(names)}, which share one weight "
            f"(after pruning: {shapes}); leave the layers whose channels reach them whole "
            f"(ChannelPruningConfig({hint}))"
        )


def retie(model: nn.Module, ties) -> None:
    """Make every site of each tied weight hold the first site's (pruned) Parameter again."""
    for (m0, p0), *rest in ties:
        shared = getattr(model.get_submodule(m0), p0)
        for m, p in rest:
            model.get_submodule(m)._parameters[p] = shared


def _traced(model: nn.Module, inputs):
    """Each leaf module's (first tensor) output by name, and the model's outputs."""
    outs: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(_m, _i, out):
            tensors = flatten_outputs(out)
            if tensors and name not in outs:
                outs[name] = tensors[0].detach()
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if n and not any(True for _ in m.children())]
    training = model.training
    try:
        with torch.no_grad():
            result = flatten_outputs(call_model(model.eval(), inputs))
    finally:
        for h in handles:
            h.remove()
        model.train(training)
    return outs, result


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    # Removing a zero term only reorders float sums: agreement to ~1e-6 of the scale.
    if a.shape != b.shape:
        return False
    scale = max(1.0, float(a.abs().max())) if a.numel() else 1.0
    return bool(torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5 * scale))
