"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization"): equal weight ranges.

Two layers A -> B joined by ReLU (and ops that commute with a positive per-channel scale:
max / average pooling, flatten, dropout, a folded BatchNorm's Identity) compute the same
function after A's output channel ``i`` is divided by ``s_i`` and B's input channel ``i`` is
multiplied by it, since ``relu(x / s) = relu(x) / s`` for ``s > 0``. With
``s_i = sqrt(r1_i / r2_i)`` (``r1_i``: range of A's output channel, ``r2_i``: range of B's input
channel) both ranges become ``sqrt(r1_i * r2_i)``, so one per-tensor scale fits every channel
much better. Depthwise-separable chains (pointwise -> depthwise -> pointwise) are equalized
pair by pair, repeated until the scales settle. A ReLU6 between a pair is replaced by a ReLU
(``relu6(x / s) != relu6(x) / s``), as AIMET does; the warning says so.

Example:
    >>> result = equalize(model, {"conv1", "conv2", "fc1", "fc2"})
    >>> result.pairs       # [("conv1", "conv2"), ("conv2", "fc1"), ("fc1", "fc2")]
    >>> result.left        # {} : every layer is in a pair
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from slimkit.core.parametrize import get_module
from slimkit.techniques.quantization.graph import _is_relu, _module_of, _relu_cap, trace

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
_PASS_MODULES = (nn.Identity, nn.Dropout, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d,
                 nn.AdaptiveMaxPool2d, nn.Flatten)
_POOL_FUNCS = {F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
               F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.dropout}
_FLATTEN = {torch.flatten, torch.reshape}
_FLATTEN_METHODS = {"flatten", "view", "reshape", "contiguous"}


@dataclass
class Chain:
    """Layer ``a`` feeding layer ``b`` through ``acts`` (``None``: ReLU, a number: a capped
    ReLU's cap) and ops that keep each channel's values apart (``pooled``: a pooling on the
    way, so ``b``'s input is no longer ``a``'s output value by value)."""

    a: str
    b: str
    acts: list = field(default_factory=list)
    relu6_modules: list = field(default_factory=list)  # names of nn.ReLU6 / Hardtanh modules
    pooled: bool = False
    factor: int = 1  # b's inputs per channel of a (a conv flattened into a Linear: H * W)


@dataclass
class EqualizationResult:
    pairs: list = field(default_factory=list)  # (a, b) names, in graph order
    scales: dict = field(default_factory=dict)  # a -> the product of its output scales s
    left: dict = field(default_factory=dict)  # layer -> why it is in no pair
    relu6_replaced: list = field(default_factory=list)


def _describe(model, node) -> str:
    m = _module_of(model, node)
    if m is not None:
        return f"{node.target} ({type(m).__name__})"
    return getattr(node.target, "__name__", str(node.target))


def _channels_out(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features


def _is_depthwise(m: nn.Module) -> bool:
    return (isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1
            and m.groups == m.in_channels == m.out_channels)


def find_chains(model: nn.Module, layers: set[str]) -> tuple[list[Chain], dict[str, str], bool]:
    """Every ``a -> b`` link between ``layers``, the reason each non-link failed (by ``a``),
    and whether the model could be traced at all."""
    graph = trace(model, layers)
    if graph is None:
        return [], {}, False
    chains, failed = [], {}
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in layers:
            continue
        chain, why = _follow(model, layers, node)
        if chain is not None:
            chains.append(chain)
        else:
            failed[node.target] = why
    return chains, failed, True


def _follow(model, layers, start):
    a_mod = get_module(model, start.target)
    chain = Chain(start.target, "")
    node = start
    while True:
        users = list(node.users)
        if len(users) != 1:
            return None, (f"its output feeds {len(users)} ops" if users else "it is the output")
        user = users[0]
        if user.args and user.args[0] is not node:
            return None, f"it feeds {_describe(model, user)} as a second argument"
        if user.op == "call_module" and user.target in layers:
            b_mod = get_module(model, user.target)
            n_in = b_mod.in_channels if isinstance(b_mod, nn.modules.conv._ConvNd) else \
                b_mod.in_features
            c = _channels_out(a_mod)
            if isinstance(b_mod, nn.modules.conv._ConvNd) and b_mod.groups > 1 and \
                    not _is_depthwise(b_mod):
                return None, f"the next layer {user.target} is a grouped convolution"
            if n_in % c:
                return None, f"{user.target} has {n_in} inputs for its {c} channels"
            chain.b, chain.factor = user.target, n_in // c
            if chain.factor > 1 and not isinstance(b_mod, nn.Linear):
                return None, f"{user.target} has {n_in} inputs for its {c} channels"
            return chain, ""
        cap = _relu_cap(model, user)
        if _is_relu(model, user):
            chain.acts.append(None)
        elif cap is not None:
            if user.op != "call_module":
                return None, (f"a functional capped ReLU ({_describe(model, user)}) follows it: "
                              "use nn.ReLU6 so equalization can make it a ReLU")
            chain.acts.append(cap)
            chain.relu6_modules.append(user.target)
        elif (user.op == "call_module" and isinstance(_module_of(model, user), _PASS_MODULES)):
            if not isinstance(_module_of(model, user), (nn.Identity, nn.Dropout, nn.Flatten)):
                chain.pooled = True
        elif user.op == "call_function" and (user.target in _POOL_FUNCS
                                             or user.target in _FLATTEN):
            chain.pooled |= user.target in _POOL_FUNCS and user.target is not F.dropout
        elif user.op == "call_method" and user.target in _FLATTEN_METHODS:
            pass
        else:
            return None, f"{_describe(model, user)} follows it"
        node = user


def _out_range(w: torch.Tensor) -> torch.Tensor:
    return w.abs().reshape(w.shape[0], -1).amax(1)


def _in_range(b: nn.Module, w: torch.Tensor, channels: int, factor: int) -> torch.Tensor:
    if _is_depthwise(b):
        return w.abs().reshape(w.shape[0], -1).amax(1)
    if isinstance(b, nn.Linear):
        return w.abs().reshape(w.shape[0], channels, factor).amax(dim=(0, 2))
    return w.abs().transpose(0, 1).reshape(channels, -1).amax(1)


def _scale_in(b: nn.Module, w: torch.Tensor, s: torch.Tensor, factor: int) -> None:
    if _is_depthwise(b):
        w.mul_(s.reshape(-1, *([1] * (w.dim() - 1))))
    elif isinstance(b, nn.Linear):
        w.view(w.shape[0], -1, factor).mul_(s.reshape(1, -1, 1))
    else:
        w.mul_(s.reshape(1, -1, *([1] * (w.dim() - 2))))


def equalize(model: nn.Module, layers: set[str], *, iterations: int = 20,
             tolerance: float = 1e-4) -> EqualizationResult:
    """Equalize every foldable pair among ``layers`` in place; returns what was done.

    Call it after BatchNorms are folded (a BatchNorm between a pair stops the chain). Layers
    that already carry a parametrization are left alone (their weight is not a plain tensor).
    """
    result = EqualizationResult()
    kinds = {n for n in layers if isinstance(get_module(model, n), _LAYERS)}
    chains, failed, traced = find_chains(model, kinds)
    if not traced:
        result.left = {n: "the model cannot be traced by torch.fx" for n in sorted(kinds)}
        return result
    usable = []
    for c in chains:
        a, b = get_module(model, c.a), get_module(model, c.b)
        busy = [n for n, m in ((c.a, a), (c.b, b)) if parametrize.is_parametrized(m)]
        if busy:
            failed.setdefault(c.a, f"{busy[0]} already carries a parametrization")
            continue
        usable.append(c)
    with torch.no_grad():
        for _ in range(iterations):
            worst = 0.0
            for c in usable:
                a, b = get_module(model, c.a), get_module(model, c.b)
                channels = _channels_out(a)
                r1 = _out_range(a.weight)
                r2 = _in_range(b, b.weight, channels, c.factor)
                ok = (r1 > 0) & (r2 > 0)
                s = torch.where(ok, torch.sqrt(r1 / torch.where(ok, r2, 1.0)),
                                torch.ones_like(r1))
                a.weight.div_(s.reshape(-1, *([1] * (a.weight.dim() - 1))))
                if a.bias is not None:
                    a.bias.div_(s)
                _scale_in(b, b.weight, s, c.factor)
                prev = result.scales.get(c.a)
                result.scales[c.a] = s.clone() if prev is None else prev * s
                worst = max(worst, float((s.log().abs()).max()))
            if worst < tolerance:
                break
    for c in usable:
        result.pairs.append((c.a, c.b))
        for name in c.relu6_modules:
            if name not in result.relu6_replaced:
                parent, _, child = name.rpartition(".")
                setattr(get_module(model, parent), child, nn.ReLU())
                result.relu6_replaced.append(name)
    in_pair = {n for p in result.pairs for n in p}
    for name in sorted(kinds - in_pair):
        result.left[name] = failed.get(name, "no layer before it ends in it")
    for name in sorted(set(layers) - kinds):
        result.left[name] = f"{type(get_module(model, name)).__name__} is not Conv1d/Conv2d/Linear"
    return result


def warn_left(result: EqualizationResult) -> None:
    """One warning naming the layers equalization did not touch (and the ReLU6s it replaced)."""
    if not result.pairs:
        warnings.warn(
            "slimkit: cross-layer equalization found no foldable layer pair (conv/linear -> "
            "ReLU / ReLU6 -> conv/linear); layers left as they were: "
            + "; ".join(f"{n} ({why})" for n, why in result.left.items()),
            stacklevel=4,
        )
        return
    # The first layer's input and the last layer's output have no partner by construction;
    # only layers in no pair at all are news.
    if result.left:
        warnings.warn(
            f"slimkit: cross-layer equalization left {len(result.left)} layer(s) in no pair: "
            + "; ".join(f"{n} ({why})" for n, why in result.left.items()),
            stacklevel=4,
        )
    if result.relu6_replaced:
        warnings.warn(
            "slimkit: cross-layer equalization replaced ReLU6 by ReLU in "
            + ", ".join(result.relu6_replaced)
            + " (a cap at 6 does not commute with per-channel scaling)",
            stacklevel=4,
        )
