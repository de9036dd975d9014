"""Stacked parametrizations: register in stage order, find tied weights, strip.

Weight techniques are ``torch.nn.utils.parametrize`` parametrizations stacked in stage order
(:mod:`slimkit.core.stages`; the built-in techniques use mask 100, cluster 200 and quant 300).
:func:`register` inserts a new parametrization at its stage's place whatever order techniques
are applied in, and gives every
module that shares the same ``Parameter`` (tied weights) the same parametrization object, so
the tie survives both training and :func:`strip`.

Example:
    >>> register(model, [("fc", "weight")], MyMask(model.fc.weight))
    >>> strip(model)          # plain weights again, masked entries exactly zero
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from slimkit.core.stages import stage_order
from slimkit.core.state import SlimState


class SlimParametrization(SlimState, nn.Module):
    """Base of slimkit's parametrizations.

    ``stage`` (a registered stage name, see :mod:`slimkit.core.stages`) places it in the
    stack. A parametrization with a ``step`` buffer is advanced by :class:`slimkit.Scheduler`;
    ``group`` ties together the parametrizations created by one call (e.g. global pruning
    ranks them jointly). Statistics, sync rules and ``on_step`` come from :class:`SlimState`.
    """

    stage: str = ""
    # False for a parametrization that fixed what it does from the weight it saw when it was
    # prepared (clustering's assignment to centroids): a lower stage added under it later
    # would be undone by it, so register() refuses that order instead of losing it.
    accepts_lower_stages: bool = True

    def __init__(self, group: str = ""):
        super().__init__()
        self.group = group


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` ('' is the model itself)."""
    return model.get_submodule(name) if name else model


def raw_tensor(module: nn.Module, tensor_name: str) -> torch.Tensor:
    """The tensor before any parametrization: the ``original`` if parametrized."""
    if parametrize.is_parametrized(module, tensor_name):
        return module.parametrizations[tensor_name].original
    return getattr(module, tensor_name)


def tensor_sites(model: nn.Module) -> dict[int, list[tuple[str, str]]]:
    """Map ``id(tensor)`` of every raw weight/buffer to all ``(module_name, tensor_name)`` using it."""
    sites: dict[int, list[tuple[str, str]]] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        if ".parametrizations." in f".{mname}.":
            continue
        names = list(module._parameters)
        if parametrize.is_parametrized(module):
            names += list(module.parametrizations)
        for tname in names:
            t = raw_tensor(module, tname)
            if t is not None:
                sites.setdefault(id(t), []).append((mname, tname))
    return sites


def expand_tied(model: nn.Module, layers: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Group ``layers`` so that every site sharing a tensor is in one group.

    A site that shares its tensor with a layer outside the selection is added to the group:
    a tied weight must be transformed identically everywhere it is used.
    """
    sites = tensor_sites(model)
    groups: dict[int, list[tuple[str, str]]] = {}
    for mname, tname in layers:
        t = raw_tensor(get_module(model, mname), tname)
        group = groups.setdefault(id(t), [])
        for site in sites.get(id(t), [(mname, tname)]):
            if site not in group:
                group.append(site)
    return list(groups.values())


def _refresh_rnn_weights(module: nn.Module, args, output) -> None:
    # RNN modules cache their weights in `_flat_weights`. With a parametrization those are
    # autograd non-leaves after a forward pass, and copy.deepcopy refuses non-leaf tensors.
    # Re-reading them without grad leaves leaves there; the next forward re-reads them anyway
    # because a parametrized weight is a new tensor on every access.
    with torch.no_grad():
        module._init_flat_weights()


def _own_class(module: nn.Module) -> None:
    """Give a parametrized module a class of its own before its parametrizations change.

    torch gives each parametrized module a generated class holding one property per tensor,
    and ``copy.deepcopy`` shares that class between the original and the copy; adding or
    removing a parametrization then edits the class of both (stripping a copy would break
    the original). A private copy of the class keeps every instance independent.
    """
    if not parametrize.is_parametrized(module):
        return
    cls = type(module)
    module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))


def _watch_rnn(module: nn.Module) -> None:
    if isinstance(module, nn.RNNBase) and _refresh_rnn_weights not in module._forward_hooks.values():
        module.register_forward_hook(_refresh_rnn_weights)
        _refresh_rnn_weights(module, (), None)


def register(model: nn.Module, sites: list[tuple[str, str]], p: SlimParametrization) -> None:
    """Register ``p`` on every site (module name, tensor name) at the place its stage dictates.

    Every site is checked before any is changed, so a refused site leaves the model as it was.
    """
    order = stage_order(p.stage)
    for mname, tname in sites:
        _check_slot(get_module(model, mname), mname, tname, p, order)
    for mname, tname in sites:
        module = get_module(model, mname)
        _own_class(module)
        _watch_rnn(module)
        if not parametrize.is_parametrized(module, tname):
            # unsafe=True skips torch's trial forward (one full pass over the weight per
            # site: 2 s on BERT-base); the conformance kit checks shapes and dtypes instead.
            parametrize.register_parametrization(module, tname, p, unsafe=True)
            continue
        plist = module.parametrizations[tname]
        pos = sum(1 for q in plist if _order_of(q, mname, tname) < order)
        if pos == len(plist):
            parametrize.register_parametrization(module, tname, p, unsafe=True)
        else:
            plist.insert(pos, p)


def _check_slot(module: nn.Module, mname: str, tname: str, p: SlimParametrization,
                order: float) -> None:
    """Refuse a second parametrization of one stage, or one that would go under a
    parametrization that cannot take a lower stage after it was prepared."""
    if not parametrize.is_parametrized(module, tname):
        return
    plist = module.parametrizations[tname]
    stages = [_order_of(q, mname, tname) for q in plist]
    if order in stages:
        raise ValueError(
            f"{mname or 'model'}.{tname} already has a {p.stage} parametrization "
            f"({type(plist[stages.index(order)]).__name__}); strip it or use a fresh model"
        )
    pos = sum(1 for s in stages if s < order)
    above = [q for q in list(plist)[pos:]
             if isinstance(q, SlimParametrization) and not q.accepts_lower_stages]
    if above:
        raise ValueError(
            f"{mname or 'model'}.{tname} already has a {above[0].stage} parametrization "
            f"({type(above[0]).__name__}) computed from the weight as it was; a {p.stage} "
            f"stage added under it now would be undone. Apply the techniques in stage "
            f"order instead ({' -> '.join(_stage_names(p.stage, above[0].stage))}), "
            f"e.g. prune, then cluster with preserve_sparsity=True"
        )


def _stage_names(*names: str) -> list[str]:
    return sorted(names, key=stage_order)


def _order_of(q: nn.Module, mname: str, tname: str) -> float:
    # A parametrization that is not slimkit's (torch's weight_norm, orthogonal, ...) is part
    # of how the model defines its weight: slimkit's stages all run after it.
    if not isinstance(q, SlimParametrization):
        return float("-inf")
    return stage_order(q.stage)


def slim_parametrizations(model: nn.Module) -> Iterator[tuple[str, str, int, SlimParametrization]]:
    """Yield ``(module_name, tensor_name, index, p)`` for every slimkit parametrization.

    A parametrization shared by tied sites is yielded once per site.
    """
    for mname, module in model.named_modules(remove_duplicate=False):
        if not parametrize.is_parametrized(module):
            continue
        for tname, plist in module.parametrizations.items():
            for i, p in enumerate(plist):
                if isinstance(p, SlimParametrization):
                    yield mname, tname, i, p


def input_of(module: nn.Module, tensor_name: str, index: int) -> torch.Tensor:
    """What parametrization number ``index`` of ``module.<tensor_name>`` receives."""
    plist = module.parametrizations[tensor_name]
    x = plist.original
    for i in range(index):
        x = plist[i](x)
    return x


def strip(model: nn.Module) -> nn.Module:
    """Bake every parametrization into plain weights, in place; returns ``model``.

    The result is an ordinary module (it saves with ``torch.save``), with the same outputs.
    Tied weights stay tied: the shared tensor is overwritten in place.

    Example:
        >>> sk.prune(model, sk.MagnitudePruningConfig(0.8))
        >>> sk.strip(model)
        >>> float((model.fc.weight == 0).float().mean())   # 0.8
    """
    _warn_unfinished(model)
    for mname, tname, index, p in list(slim_parametrizations(model)):
        if index == 0 and hasattr(p, "before_strip"):
            p.before_strip(get_module(model, mname).parametrizations[tname].original)
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            _own_class(module)
            for tname in list(module.parametrizations):
                parametrize.remove_parametrizations(module, tname, leave_parametrized=True)
        for key, hook in list(module._forward_hooks.items()):
            if hook is _refresh_rnn_weights:
                del module._forward_hooks[key]
        if isinstance(module, nn.RNNBase):
            module._init_flat_weights()
    if hasattr(model, "_slimkit_records"):
        # Records whose technique's state outlives stripping (a structural change of shapes,
        # activation quantizers that stay as modules) describe the stripped model too: keep
        # them, marked, so it still saves, loads into a fresh model and exports the same way.
        from slimkit.core.registry import get_technique

        kept = []
        for r in model._slimkit_records:
            if get_technique(r["technique"]).survives_strip(r):
                kept.append({**r, "stripped": True})
        if kept:
            object.__setattr__(model, "_slimkit_records", kept)
        else:
            del model._slimkit_records
    return model


def _warn_unfinished(model: nn.Module) -> None:
    """Warn about techniques whose schedule has not reached its target (they say so)."""
    import warnings

    from slimkit.core.registry import get_technique

    for rec in getattr(model, "_slimkit_records", []):
        message = get_technique(rec["technique"]).check_step(model, rec)
        if message:
            warnings.warn(message, stacklevel=3)


def strip_innermost(model: nn.Module, module_name: str, tensor_name: str) -> None:
    """Bake only the first parametrization of one tensor (e.g. a finished pruning mask).

    Only the innermost one can be baked exactly: ``original <- p0(original)``; later stages
    keep running on top of it.
    """
    module = get_module(model, module_name)
    if not parametrize.is_parametrized(module, tensor_name):
        raise ValueError(f"{module_name or 'model'}.{tensor_name} has no parametrization")
    plist = module.parametrizations[tensor_name]
    if len(plist) == 1:
        _own_class(module)
        parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
        return
    with torch.no_grad():
        plist.original.copy_(plist[0](plist.original))
    del plist[0]
