"""Smoothing scales: which Linear layers share an input, where ``1/s`` folds, and ``s`` itself.

A group of Linear layers reading one tensor is smoothed when the tensor's producer can absorb
``1/s`` exactly: a module with one gain per channel (RMSNorm, LayerNorm: weight and bias
divided) or a Linear (rows divided). Producers are found by tensor identity on one forward
pass of the block; a Llama MLP's ``down_proj`` reads ``act(gate) * up``, which is linear in
``up_proj``'s rows, and attention's ``o_proj`` reads a per-channel mix of ``v_proj``'s
outputs when the widths match (no grouped-query repeat). Every fold is then verified: the
block's float outputs must not change (a norm whose output also feeds a residual cannot
absorb the scales); a group that fails is restored and left unsmoothed, with a warning.

Example:
    >>> s = smooth_scales(x_absmax, [q.weight, k.weight, v.weight], alpha=0.5)
"""

from __future__ import annotations

import torch
import torch.nn as nn


def smooth_scales(x_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` over the group's weights (column max)."""
    w_absmax = torch.stack([w.detach().abs().amax(0).double() for w in weights]).amax(0)
    xa = x_absmax.double().clamp_min(1e-5)
    wa = w_absmax.clamp_min(1e-5)
    s = xa.pow(alpha) / wa.pow(1.0 - alpha)
    return s.clamp_min(1e-5).float()


def _leaf_names(block: nn.Module) -> list[str]:
    return [n for n, m in block.named_modules() if n and not list(m.children())]


def find_groups(block: nn.Module, layers: list[str], args, kwargs) -> list[dict]:
    """``[{"layers": [...], "producer": name or None, "kind": "norm" | "rows" | None}]``."""
    modules = dict(block.named_modules())
    consumer_input: dict[str, int] = {}
    produced: dict[int, str] = {}
    alive: list = []   # keeps tensors alive so that ids stay unique during the pass
    handles = []
    for name in layers:
        def pre(mod, a, name=name):
            consumer_input.setdefault(name, id(a[0]))
            alive.append(a[0])
        handles.append(modules[name].register_forward_pre_hook(pre))
    for name in set(_leaf_names(block)) | set(layers):
        def post(mod, a, out, name=name):
            if isinstance(out, torch.Tensor):
                produced.setdefault(id(out), name)
                alive.append(out)
        handles.append(modules[name].register_forward_hook(post))
    try:
        with torch.no_grad():
            block(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    by_input: dict[int, list[str]] = {}
    for name in layers:
        if name in consumer_input:
            by_input.setdefault(consumer_input[name], []).append(name)
    groups = []
    for tid, names in by_input.items():
        width = modules[names[0]].in_features
        producer, kind = produced.get(tid), None
        if producer is not None:
            pm = modules[producer]
            if isinstance(pm, nn.Linear) and pm.out_features == width:
                kind = "rows"
            elif isinstance(getattr(pm, "weight", None), torch.Tensor) and \
                    tuple(pm.weight.shape) == (width,):
                kind = "norm"
        if kind is None and len(names) == 1:
            producer, kind = _named_producer(block, names[0], width)
        groups.append({"layers": names, "producer": producer if kind else None, "kind": kind})
    return groups


def _named_producer(block: nn.Module, name: str, width: int):
    parent, _, leaf = name.rpartition(".")
    owner = block.get_submodule(parent) if parent else block
    prefix = f"{parent}." if parent else ""
    up = getattr(owner, "up_proj", None)
    if leaf == "down_proj" and isinstance(up, nn.Linear) and up.out_features == width:
        return f"{prefix}up_proj", "rows"
    v = getattr(owner, "v_proj", None)
    if leaf == "o_proj" and isinstance(v, nn.Linear) and v.out_features == width:
        return f"{prefix}v_proj", "rows"
    return None, None


def _raw_weight(m: nn.Module) -> torch.Tensor:
    plist = getattr(getattr(m, "parametrizations", None), "weight", None)
    return plist.original if plist is not None else m.weight


def fold(block: nn.Module, group: dict, s: torch.Tensor) -> list:
    """Divide the producer by ``s`` and multiply the group's weight columns by ``s``, in place.

    Returns the undo list ``[(tensor, its previous values)]`` for :func:`restore`.
    """
    undo = []
    pm = block.get_submodule(group["producer"])
    with torch.no_grad():
        if group["kind"] == "norm":
            targets = [(pm.weight, None)]
            if getattr(pm, "bias", None) is not None:
                targets.append((pm.bias, None))
            for t, _ in targets:
                undo.append((t, t.detach().clone()))
                t.div_(s.to(t.dtype))
        else:
            w = _raw_weight(pm)
            undo.append((w, w.detach().clone()))
            w.div_(s.to(w.dtype).unsqueeze(1))
            if pm.bias is not None:
                undo.append((pm.bias, pm.bias.detach().clone()))
                pm.bias.div_(s.to(pm.bias.dtype))
        for name in group["layers"]:
            w = _raw_weight(block.get_submodule(name))
            undo.append((w, w.detach().clone()))
            w.mul_(s.to(w.dtype).unsqueeze(0))
    return undo


def restore(undo: list) -> None:
    """Put back what :func:`fold` changed."""
    with torch.no_grad():
        for t, old in undo:
            t.copy_(old)


def _qdq_weight(w: torch.Tensor) -> torch.Tensor:
    # int8 symmetric per output channel, narrow range: the weight grid of the export.
    scale = w.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127.0
    return (w / scale).round().clamp(-127, 127) * scale


def _qdq_act(x: torch.Tensor) -> torch.Tensor:
    # uint8 asymmetric per tensor, over the rows given.
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zp = min(max(round(-lo / scale), 0), 255)
    return ((x / scale).round() + zp).clamp(0, 255).sub(zp) * scale


def search_alpha(x: torch.Tensor, x_absmax: torch.Tensor, weights: list[torch.Tensor],
                 grid) -> tuple[float, torch.Tensor]:
    """The alpha of ``grid`` whose smoothed W8A8 group output is closest to float on rows ``x``.

    Returns ``(alpha, s)``. The objective is ``sum ||Q(x/s) Q(W s)^T - x W^T||^2`` over the
    group's layers (``x``: sampled input rows, float).
    """
    x = x.float()
    refs = [x @ w.float().T for w in weights]
    best = None
    for alpha in grid:
        s = smooth_scales(x_absmax, weights, float(alpha))
        xq = _qdq_act(x / s)
        err = 0.0
        for w, ref in zip(weights, refs):
            err += float((xq @ _qdq_weight(w.float() * s).T - ref).pow(2).sum())
        if best is None or err < best[0]:
            best = (err, float(alpha), s)
    return best[1], best[2]
