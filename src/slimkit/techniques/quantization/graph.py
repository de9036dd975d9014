"""What the model's dataflow says about quantization: BN to fold, ReLUs to fuse, shared inputs,
residual sums and concatenations that can stay int8.

The graph comes from ``torch.fx`` with the quantized layers as leaves. A model fx cannot trace
(data-dependent control flow, ...) still quantizes correctly, only without these
refinements: every layer then quantizes its own input and its raw output.

Example:
    >>> info = analyze(model, {"conv1", "conv2", "fc1", "fc2"})
    >>> info.fused_relu, info.input_from        # ({'conv1', ...}, {'fc1': 'conv2', ...})
    >>> info.relu_cap, info.block_outputs       # ({'conv3': 6.0}, {'layer1.0', 'mix'})
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from slimkit.core.parametrize import get_module


@dataclass
class GraphInfo:
    traced: bool = False
    fused_relu: set = field(default_factory=set)
    # fused layers whose activation is a capped ReLU (ReLU6, Hardtanh(0, cap)): name -> cap
    relu_cap: dict = field(default_factory=dict)
    # consumer layer -> producer layer whose quantized output reaches it unchanged in grid
    input_from: dict = field(default_factory=dict)
    bn_after: dict = field(default_factory=dict)  # conv name -> BatchNorm name
    # modules whose output is a residual sum (optionally ReLU'd) of quantized tensors: their
    # output gets a quantizer, so ORT runs the sum as QLinearAdd and the next layers read int8
    block_outputs: set = field(default_factory=set)


_RELU_FUNCS = {F.relu, torch.relu, torch.relu_}
# Ops that keep every value on the quantization grid of their input (they select, move or
# clamp at zero), so a quantized tensor stays quantized through them.
_GRID_FUNCS = _RELU_FUNCS | {torch.flatten, torch.reshape, F.max_pool1d, F.max_pool2d,
                             F.adaptive_max_pool2d}
_GRID_METHODS = {"relu", "flatten", "view", "reshape", "contiguous"}
_GRID_MODULES = (nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Identity,
                 nn.AdaptiveMaxPool2d)


class _Tracer(torch.fx.Tracer):
    def __init__(self, leaves: set[str]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)


def trace(model: nn.Module, leaves: set[str]):
    """The fx graph of ``model`` with ``leaves`` as opaque calls, or None if untraceable."""
    leaves = set(leaves) | {n for n, m in model.named_modules()
                            if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    try:
        return _Tracer(leaves).trace(model)
    except Exception:  # any tracing failure only costs the refinements
        return None


def _module_of(model, node):
    return get_module(model, node.target) if node.op == "call_module" else None


def _is_relu(model, node) -> bool:
    if node.op == "call_function":
        return node.target in _RELU_FUNCS
    if node.op == "call_method":
        return node.target == "relu"
    return isinstance(_module_of(model, node), nn.ReLU)


def _relu_cap(model, node) -> float | None:
    """The cap of a capped ReLU (``ReLU6``, ``Hardtanh(0, cap)``, ``F.relu6``), else None."""
    if node.op == "call_function" and node.target is F.relu6:
        return 6.0
    m = _module_of(model, node)
    if isinstance(m, nn.Hardtanh) and m.min_val == 0.0 and m.max_val > 0.0:
        return float(m.max_val)
    return None


def _is_cat(node) -> bool:
    return node.op == "call_function" and node.target in (torch.cat, torch.concat,
                                                          torch.concatenate)


def _keeps_grid(model, node) -> bool:
    if node.op == "call_function":
        return node.target in _GRID_FUNCS or getattr(node.target, "__name__", "") in (
            "_max_pool1d", "_max_pool2d", "max_pool2d", "max_pool1d")
    if node.op == "call_method":
        return node.target in _GRID_METHODS
    m = _module_of(model, node)
    return isinstance(m, _GRID_MODULES) and not isinstance(m, nn.Dropout)


def _is_add(node) -> bool:
    if node.op == "call_function":
        return node.target in (operator.add, torch.add)
    return node.op == "call_method" and node.target == "add"


def _stack(node) -> list[str]:
    # fx records the modules a node was traced in; "name@2" marks a module's second call.
    return [k.split("@")[0] for k in node.meta.get("nn_module_stack", {})]


def _owner(node) -> str | None:
    """The innermost module whose output is exactly ``node`` (no user inside it)."""
    own = node.target if node.op == "call_module" else None
    for path in reversed(_stack(node)):
        if path == own:
            continue
        if node.users and all(path not in _stack(u) for u in node.users):
            return path
        return None
    return None


def analyze(model: nn.Module, layers: set[str]) -> GraphInfo:
    """Find fusable ReLUs, inputs that already carry a quantized output, residual sums, BNs."""
    graph = trace(model, layers)
    info = GraphInfo(traced=graph is not None)
    if graph is None:
        return info
    produced = {}  # fx node -> name of the module whose output quantizer covers it

    def capped_again(node) -> bool:
        # The model's own ReLU6 after a layer whose quantizer already applied it: a no-op on
        # those values, so the grid survives (a ReLU6 on other tensors may leave it: 6.0).
        arg = node.args[0] if node.args else None
        cap = _relu_cap(model, node)
        return cap is not None and info.relu_cap.get(produced.get(arg)) == cap

    def source(node):
        while isinstance(node, torch.fx.Node) and node not in produced and node.args and (
            _keeps_grid(model, node) or capped_again(node)
        ):
            node = node.args[0]
        return produced.get(node) if isinstance(node, torch.fx.Node) else None

    for node in graph.nodes:
        if _is_add(node) and len(node.args) == 2:
            out = node
            if len(node.users) == 1 and _is_relu(model, next(iter(node.users))):
                out = next(iter(node.users))
            owner = _owner(out)
            if owner and owner not in layers and all(source(a) for a in node.args):
                info.block_outputs.add(owner)
                produced[out] = owner
            continue
        if _is_cat(node) and node.args and isinstance(node.args[0], (list, tuple)):
            # A concatenation of quantized tensors: its owner's output gets a quantizer and
            # ORT runs it as QLinearConcat (each input requantized to the output's scale).
            owner = _owner(node)
            parts = node.args[0]
            if owner and owner not in layers and parts and all(source(a) for a in parts):
                info.block_outputs.add(owner)
                produced[node] = owner
            continue
        if node.op != "call_module" or node.target not in layers:
            continue
        produced[node] = node.target
        users = list(node.users)
        if len(users) == 1:
            m = _module_of(model, users[0])
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and isinstance(
                get_module(model, node.target), nn.modules.conv._ConvNd
            ):
                info.bn_after[node.target] = users[0].target
            else:
                user = users[0]
                # A folded BatchNorm leaves an Identity between the conv and its ReLU.
                while isinstance(_module_of(model, user), nn.Identity) and len(user.users) == 1:
                    user = next(iter(user.users))
                if _is_relu(model, user):
                    info.fused_relu.add(node.target)
                elif _relu_cap(model, user) is not None:
                    info.fused_relu.add(node.target)
                    info.relu_cap[node.target] = _relu_cap(model, user)
        src = source(node.args[0]) if node.args else None
        if src is not None and src != node.target:
            info.input_from[node.target] = src
    return info


def fold_batchnorm(model: nn.Module, conv_name: str, bn_name: str) -> None:
    """Fold an eval-mode BatchNorm into the conv before it and replace it by ``nn.Identity``.

    ``w' = w * g / sqrt(v + eps)`` per output channel, ``b' = (b - m) * g / sqrt(v + eps) + beta``:
    the conv then computes what conv+BN computed with the running statistics, which is what
    deployment runs. A per-channel scale keeps pruned zeros zero.
    """
    conv, bn = get_module(model, conv_name), get_module(model, bn_name)
    with torch.no_grad():
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
        factor = gamma / std
        if parametrize.is_parametrized(conv, "weight"):
            w = conv.parametrizations.weight.original
        else:
            w = conv.weight
        w.mul_(factor.reshape(-1, *([1] * (w.dim() - 1))))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(std)
        new_bias = (bias - bn.running_mean) * factor + beta
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias)
        else:
            conv.bias.copy_(new_bias)
    parent_name, _, child = bn_name.rpartition(".")
    setattr(get_module(model, parent_name), child, nn.Identity())
