"""``sk.prune_channels``: remove whole channels, neurons and head dims so the model gets faster.

Torch-Pruning's dependency graph finds every tensor coupled to a channel (the BatchNorm after
a conv, the next layer's input, every branch of a residual add) and removes them together;
slimkit picks what to remove, validates the result, and records the new shapes so that
``sk.save`` / ``sk.load`` rebuild the smaller architecture on a fresh original model.

Example:
    >>> sk.prune_channels(model, sk.ChannelPruningConfig(ratio=0.5), example_inputs=x)
    >>> sk.save(model, "small.pt")
    >>> small = sk.load("small.pt", model=ResNetStyle())      # the pruned shapes, rebuilt
"""

from __future__ import annotations

import contextlib
import copy
import math
import traceback
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from slimkit.core.batch import call_model, check_inputs
from slimkit.core.config import Config
from slimkit.core.parametrize import slim_parametrizations
from slimkit.core.records import records
from slimkit.core.registry import get_technique, prepare_layers
from slimkit.core.selection import matches, module_type
from slimkit.core.technique import Technique
from slimkit.techniques.channel_pruning import verify

IMPORTANCES = ("l1", "l2", "bn_scale", "taylor")


def _fraction_ok(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v < 1.0


@dataclass
class ChannelPruningConfig(Config):
    """What :func:`prune_channels` removes.

    Attributes:
        ratio: the share of each prunable group's channels to remove, in [0, 1).
        importance: how channels are ranked: ``"l1"`` / ``"l2"`` (norm of every weight
            coupled to the channel), ``"bn_scale"`` (|gamma| of the BatchNorms) or ``"taylor"``
            (first-order Taylor |w * dL/dw|; needs ``loss_fn`` and ``batches``).
        scope: ``"layer"``: every group loses ``ratio``; ``"global"``: all groups are ranked
            together (so layers lose different shares, none more than ``max_layer_ratio``).
        overrides: module name (glob or ``re:``) -> ratio for those layers' groups.
        ignore: more layers to leave whole (type names, globs, ``re:``).
        keep_output_layer: leave the layer that produces the model's output whole (the
            classifier): its outputs are the classes.
        rounds: prune in this many steps (linearly to ``ratio``), calling the ``finetune``
            callback after each.
        round_to: keep channel counts multiples of this (e.g. 8 for SIMD-friendly widths).
            Models with ``nn.MultiheadAttention`` also round to a multiple of the head count.
        max_layer_ratio: with ``scope="global"``, the most any one group may lose.
        verify: check on a copy that the pruned model computes what the original computes
            with the removed channels zeroed, and refuse (naming the first differing layer)
            when it does not: Torch-Pruning can mis-map channels through a ``permute`` +
            ``reshape``. Turn off only for a model that applies an op with ``f(0) != 0``
            (a sigmoid) directly to pruned channels, which the check cannot stand in for.
    """

    ratio: float = 0.5
    importance: str = "l2"
    scope: str = "layer"
    overrides: dict = field(default_factory=dict)
    ignore: list = field(default_factory=list)
    keep_output_layer: bool = True
    rounds: int = 1
    round_to: int | None = None
    max_layer_ratio: float = 0.9
    verify: bool = True

    def __post_init__(self):
        self._require(_fraction_ok(self.ratio), "ratio", "a share of channels in [0, 1)")
        self._require(self.importance in IMPORTANCES, "importance",
                      " | ".join(repr(i) for i in IMPORTANCES))
        self._require(self.scope in ("layer", "global"), "scope", "'layer' or 'global'")
        self._require(
            isinstance(self.overrides, dict)
            and all(isinstance(k, str) and k for k in self.overrides),
            "overrides", "a dict of module name (glob or 're:') -> ratio in [0, 1)",
        )
        for name, r in self.overrides.items():
            if not _fraction_ok(r):
                raise ValueError(
                    f"ratio for {name!r} must be in [0, 1), got {r!r} "
                    f"(ChannelPruningConfig.overrides[{name!r}])"
                )
        if isinstance(self.ignore, (str, tuple)):
            self.ignore = [self.ignore] if isinstance(self.ignore, str) else list(self.ignore)
        self._require(isinstance(self.ignore, list) and all(isinstance(p, str) for p in self.ignore),
                      "ignore", "a list of type names, globs or 're:' patterns")
        self._require(isinstance(self.keep_output_layer, bool), "keep_output_layer", "True or False")
        self._require(isinstance(self.rounds, int) and not isinstance(self.rounds, bool)
                      and self.rounds >= 1, "rounds", "an integer >= 1")
        self._require(self.round_to is None or (isinstance(self.round_to, int)
                      and not isinstance(self.round_to, bool) and self.round_to >= 1),
                      "round_to", "None or an integer >= 1")
        self._require(isinstance(self.max_layer_ratio, (int, float))
                      and 0.0 < self.max_layer_ratio < 1.0, "max_layer_ratio", "in (0, 1)")
        self._require(isinstance(self.verify, bool), "verify", "True or False")


@dataclass
class PrunedArchitecture(Config):
    """The record of a channel-pruned architecture: what differs from the original model.

    ``shapes``: state_dict key -> new shape; ``attributes``: module name -> the changed
    size attributes (``out_channels``, ``num_features``, ``embed_dim``...). Replaying it on a
    fresh original model (``sk.load`` does) reshapes those tensors and attributes; the
    weights then load from the state_dict.
    """

    shapes: dict = field(default_factory=dict)
    attributes: dict = field(default_factory=dict)
    config: ChannelPruningConfig | None = None


# -- the public verb ----------------------------------------------------------------------------

def prune_channels(
    model: nn.Module,
    config: ChannelPruningConfig,
    example_inputs=None,
    *,
    loss_fn: Callable | None = None,
    batches: Iterable | None = None,
    finetune: Callable[[nn.Module, int], None] | None = None,
) -> nn.Module:
    """Remove channels from ``model`` in place; returns ``model``, a plain smaller module.

    ``example_inputs`` (a tensor or tuple) traces the graph. ``loss_fn(output, target)`` and
    ``batches`` (a few ``(inputs, target)`` pairs) are needed for Taylor importance.
    ``finetune(model, round_index)`` runs after each of ``config.rounds`` rounds; create the
    optimizer inside it (pruning replaces the Parameters).

    Raises ``ValueError`` naming the field for a bad ratio, missing inputs, a target that
    would remove every channel of a layer, or a model Torch-Pruning cannot trace (naming the
    operation that failed). Nothing is changed when it raises.

    Example:
        >>> cfg = sk.ChannelPruningConfig(ratio=0.5, importance="taylor", rounds=2)
        >>> sk.prune_channels(model, cfg, example_inputs=x, loss_fn=F.cross_entropy,
        ...                   batches=[(xb, yb)], finetune=lambda m, r: train(m, data, epochs=2))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(config, ChannelPruningConfig):
        raise TypeError(f"prune_channels takes a ChannelPruningConfig, got {type(config).__name__}")
    inputs = _inputs(example_inputs)
    if any(True for _ in slim_parametrizations(model)):
        applied = ", ".join(r["technique"] for r in records(model)) or "parametrizations"
        raise ValueError(
            f"prune_channels needs a plain model; this one has {applied} attached. "
            "Strip it first (sk.strip) or prune channels before other techniques"
        )
    if config.importance == "taylor":
        if loss_fn is None:
            raise ValueError("importance='taylor' needs loss_fn(output, target) "
                             "(prune_channels.loss_fn)")
        if batches is None:
            raise ValueError("importance='taylor' needs a few (inputs, target) batches "
                             "(prune_channels.batches)")
        batches = list(batches)
        if not batches:
            raise ValueError("batches is empty; give a few (inputs, target) pairs "
                             "(prune_channels.batches)")

    was_training = model.training
    with _bounded_trace(model):
        _dry_run(model, config, inputs)  # every error is raised here, on a copy

    before = _snapshot(model)
    ties = verify.tie_groups(model)
    with _bounded_trace(model):
        pruner = _pruner(model, config, inputs, _importance(config.importance), config.rounds)
    for r in range(config.rounds):
        if config.importance == "taylor":
            _accumulate_gradients(model, loss_fn, batches)
        with _bounded_trace(model):
            pruner.step()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        if finetune is not None:
            finetune(model, r)
            model.train(was_training)
    model.train(was_training)
    verify.retie(model, ties)   # Torch-Pruning gives each site its own pruned Parameter
    arch = _diff(before, _snapshot(model))
    _warn_unpruned(model, arch, config)
    arch.config = config
    prepare_layers(model, get_technique("pruned-architecture"), arch, [])
    return model


def count_macs(model: nn.Module, example_inputs) -> tuple[int, int]:
    """``(MACs, parameters)`` of one forward pass on ``example_inputs`` (Torch-Pruning's counter).

    Example:
        >>> macs, params = count_macs(model, torch.randn(1, 3, 64, 64))
    """
    import torch_pruning as tp

    training = model.training
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model.eval(), _inputs(example_inputs))
    model.train(training)
    return int(macs), int(params)


# -- helpers ------------------------------------------------------------------------------------

def _inputs(example_inputs):
    """The inputs to trace with: a tensor, a tuple of tensors, or a dict of keyword arguments
    (``model(**inputs)``, what Hugging Face models take)."""
    if example_inputs is None:
        raise ValueError("example_inputs is required to trace the model: a tensor, a tuple of "
                         "tensors or a dict of keyword arguments it takes "
                         "(prune_channels.example_inputs)")
    try:
        inputs = check_inputs(example_inputs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{e} (prune_channels.example_inputs)") from e
    return tuple(inputs) if isinstance(inputs, list) else inputs


def _call(model, inputs):
    return call_model(model, inputs)


def _importance(name: str):
    import torch_pruning as tp

    if name == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    return tp.importance.TaylorImportance()


def _accumulate_gradients(model, loss_fn, batches) -> None:
    model.zero_grad(set_to_none=True)
    model.eval()  # BatchNorm statistics must not move while we only measure gradients
    for inputs, target in batches:
        loss_fn(_call(model, inputs), target).backward()


def output_layer(model: nn.Module, example_inputs) -> str | None:
    """The name of the layer producing the model's output: the Linear/Conv whose output is
    returned as is, else the last Linear/Conv called in forward, else the last one defined.
    """
    order, outputs = [], {}
    kinds = (nn.Linear, nn.modules.conv._ConvNd)

    def hook(name):
        def record(_m, _i, out):
            order.append(name)
            if isinstance(out, torch.Tensor):
                outputs[id(out)] = name
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, kinds)]
    training = model.training
    try:
        with torch.no_grad():
            out = _call(model.eval(), example_inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(training)
    first = out if isinstance(out, torch.Tensor) else next(
        (t for t in (out.values() if isinstance(out, dict) else out)
         if isinstance(t, torch.Tensor)), None)
    if first is not None and id(first) in outputs:
        return outputs[id(first)]
    if order:
        return order[-1]
    names = [n for n, m in model.named_modules() if isinstance(m, kinds)]
    return names[-1] if names else None


def _resolve(model: nn.Module, patterns, field_name: str) -> list[nn.Module]:
    found = []
    for pattern in patterns:
        hit = [m for n, m in model.named_modules() if n and matches(n, m, pattern)]
        if not hit:
            raise ValueError(f"{pattern!r} matches no module in {type(model).__name__} "
                             f"(ChannelPruningConfig.{field_name})")
        found.extend(hit)
    return found


def _pruner(model, config: ChannelPruningConfig, inputs, importance, steps: int):
    import torch_pruning as tp

    ignored = _resolve(model, config.ignore, "ignore")
    if config.keep_output_layer:
        name = output_layer(model, inputs)
        if name is not None:
            ignored.append(model.get_submodule(name))
    ratio_dict = {}
    for pattern, r in config.overrides.items():
        for m in _resolve(model, [pattern], f"overrides[{pattern!r}]"):
            if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
                ratio_dict[m] = r
    try:
        return tp.pruner.BasePruner(
            model, inputs, importance=importance,
            global_pruning=config.scope == "global",
            pruning_ratio=config.ratio, pruning_ratio_dict=ratio_dict or None,
            max_pruning_ratio=config.max_layer_ratio if config.scope == "global" else 1.0,
            iterative_steps=steps, ignored_layers=ignored, round_to=_round_to(model, config),
        )
    except Exception as e:
        raise ValueError(
            f"Torch-Pruning could not trace {type(model).__name__}: {_where(e)}"
        ) from e


class _TraceDiverged(BaseException):
    """Torch-Pruning's index mapping produced channel indices no layer of the model has.

    A BaseException so that the ``except Exception`` handlers between the mapping and
    :func:`_bounded_trace` (Torch-Pruning's and ours) let it through unchanged.
    """


@contextlib.contextmanager
def _bounded_trace(model: nn.Module):
    """Stop Torch-Pruning when its channel-index mapping runs away.

    Torch-Pruning 1.6 maps a pruned channel through ``flatten`` by a stride inferred from the
    next layer's width; when the flattened features are concatenated with features of another
    width (``torch.cat([pool(x).flatten(1), x.mean((2, 3))], 1)``) that stride is wrong and
    each pass through the flatten multiplies the indices, until the process runs out of memory
    (17 GB). A real index never exceeds a dimension of some weight, so anything far above the
    largest one means the trace diverged: stop in milliseconds with a clear error instead.
    """
    from torch_pruning.dependency import index_mapping as im

    dims = [d for p in model.parameters() if p.dim() > 0
            for d in (p.shape[0], p.numel() // max(p.shape[0], 1))]
    limit = 8 * max(dims, default=1) + 1024
    originals = {cls: cls.__call__ for cls in (im._FlattenIndexMapping, im._ConcatIndexMapping)}

    def bounded(call):
        def wrapper(self, idxs):
            out = call(self, idxs)
            if len(out) > limit or any(i.idx > limit for i in out):
                raise _TraceDiverged
            return out
        return wrapper

    for cls, call in originals.items():
        cls.__call__ = bounded(call)
    try:
        yield
    except _TraceDiverged:
        raise ValueError(
            f"Torch-Pruning cannot trace {type(model).__name__}: its channel mapping diverges "
            "where flattened features are concatenated with features of another width (e.g. "
            "torch.cat([pool(x).flatten(1), x.mean((2, 3))], 1)), a Torch-Pruning 1.6 "
            "limitation. Leave the layers that feed the concatenation whole "
            "(ChannelPruningConfig(ignore=[...]))"
        ) from None
    finally:
        for cls, call in originals.items():
            cls.__call__ = call


_PRUNABLE = (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm,
             nn.LayerNorm, nn.GroupNorm, nn.Embedding, nn.MultiheadAttention, nn.PReLU)


def _warn_unpruned(model: nn.Module, arch: PrunedArchitecture, config) -> None:
    """Say what was left whole and why: recurrent layers and bare parameters, which
    Torch-Pruning does not prune, and a pruning that removed nothing at all."""
    changed = {k.rpartition(".")[0] for k in arch.shapes}
    left = []
    for name, m in model.named_modules():
        own = [n for n, p in m.named_parameters(recurse=False)]
        if not own or any(c == name or c.startswith(f"{name}.") for c in changed):
            continue
        if isinstance(m, nn.RNNBase):
            why = "recurrent layers are not channel-pruned"
            if any(matches(name, m, p) for p in config.ignore):
                why = "in ignore"
            left.append(f"{name or type(m).__name__} ({type(m).__name__}: {why})")
        elif not isinstance(m, _PRUNABLE):
            left.append(f"{name or type(m).__name__} ({type(m).__name__}: bare parameters "
                        f"{', '.join(own)}; Torch-Pruning prunes layers, not parameters)")
    if not arch.shapes:
        warnings.warn(
            f"prune_channels removed nothing from {type(model).__name__}: no prunable channel "
            "group was found" + (f"; left whole: {'; '.join(left)}" if left else
                                 " (every layer ignored, kept as output, or too small)"),
            stacklevel=3,
        )
    elif left:
        warnings.warn(f"prune_channels left these whole: {'; '.join(left)}", stacklevel=3)


def _round_to(model: nn.Module, config: ChannelPruningConfig) -> int | None:
    """``config.round_to``; with attention, at least a multiple of every head count, since
    ``nn.MultiheadAttention`` needs its width divisible by its heads."""
    heads = [m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    step = config.round_to or 1
    for h in heads:
        step = math.lcm(step, h)
    return step if step > 1 else None


def _where(e: BaseException) -> str:
    """The failing operation: the innermost frame of user code (not torch's own)."""
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if "/torch/" not in f.filename and "/torch_pruning/" not in f.filename]
    where = ""
    if frames:
        f = frames[-1]
        where = f" at {f.filename}:{f.lineno} in {f.name}(): `{(f.line or '').strip()}`"
    return f"{type(e).__name__}: {e}{where}"


def _plan_on_copy(work: nn.Module, config: ChannelPruningConfig, inputs, tp) -> verify.Plan:
    """Build the dependency graph of ``work`` and prune it to the final ratio in one round;
    returns what was removed (for the checks of :mod:`.verify`)."""
    pruner = _pruner(work, config, inputs, tp.importance.MagnitudeImportance(p=2), 1)
    if config.scope == "layer":
        # Torch-Pruning silently skips a group whose target keeps no channel; say so instead.
        for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                              root_module_types=pruner.root_module_types):
            ratio = config.ratio
            for dep, _ in group:
                if (dep.target.module in pruner.pruning_ratio_dict
                        and pruner.DG.is_out_channel_pruning_fn(dep.handler)):
                    ratio = pruner.get_target_pruning_ratio(dep.target.module, step=1)
            _check_keeps_a_channel(pruner, group[0].dep, 0, ratio, config)
    groups = list(pruner.step(interactive=True))
    for group in groups:
        _check_keeps_a_channel(pruner, group[0].dep, len(group[0].idxs), None, config)
    plan = verify.removed_channels(pruner, groups)
    for group in groups:
        group.prune()
    return plan


def _dry_run(model: nn.Module, config: ChannelPruningConfig, inputs) -> None:
    """Prune a copy to the final ratio and run it, so every error is raised before ``model``
    changes: removing a whole layer, an untraceable model, a pruned graph that fails to run."""
    import torch_pruning as tp

    work = copy.deepcopy(model)
    try:
        with torch.no_grad():
            _call(work.eval(), inputs)
    except Exception as e:
        raise ValueError(f"example_inputs do not fit {type(model).__name__}: {_where(e)} "
                         "(prune_channels.example_inputs)") from e
    out = _call(work, inputs)
    leaves = [t for t in (out if isinstance(out, (tuple, list)) else [out])
              if isinstance(t, torch.Tensor)]
    if not leaves or all(t.grad_fn is None for t in leaves):
        raise ValueError(
            f"Torch-Pruning cannot trace {type(model).__name__}: its output is not connected to "
            "the weights by autograd (an op such as .detach(), .item(), argmax or a numpy round "
            "trip breaks the graph)"
        )
    ties = verify.tie_groups(work)
    try:
        plan = _plan_on_copy(work, config, inputs, tp)
    except ValueError:
        raise
    except Exception as e:
        # Torch-Pruning stops on bare assertions for graphs it does not support (a stacked
        # LSTM, for one): name the model, the failing spot and the way around it.
        raise ValueError(
            f"Torch-Pruning cannot prune {type(model).__name__}: {_where(e)}. Leave the "
            "layers it cannot handle whole with ChannelPruningConfig(ignore=[...])"
        ) from e
    try:
        with torch.no_grad():
            _call(work.eval(), inputs)
    except Exception as e:
        raise ValueError(
            f"Torch-Pruning cannot handle an operation of {type(model).__name__}: after pruning "
            f"it fails with {_where(e)}. Ignore the layers around that operation "
            "(ChannelPruningConfig.ignore) or register a custom pruner with Torch-Pruning"
        ) from e
    verify.check_ties(work, ties, plan)
    if config.verify:
        verify.check_function(model, work, inputs, plan)


def _check_keeps_a_channel(pruner, dep, n_removed: int, ratio, config) -> None:
    layer = dep.target.module
    if pruner.DG.is_out_channel_pruning_fn(dep.handler):
        total = pruner.DG.get_out_channels(layer)
    else:
        total = pruner.DG.get_in_channels(layer)
    if total is None:
        return
    if ratio is not None:
        n_removed = total - int(total * (1 - ratio))
    if n_removed < total:
        return
    name = pruner.DG._module2name.get(layer, type(layer).__name__)
    overridden = [k for k in config.overrides if matches(name, layer, k)]
    where = (f"ChannelPruningConfig.overrides[{overridden[0]!r}]" if overridden
             else "ChannelPruningConfig.ratio")
    raise ValueError(
        f"the target would remove every channel of {name} ({total} channels); "
        f"lower the ratio or ignore that layer ({where})"
    )


# -- recording and rebuilding the architecture -------------------------------------------------

def _simple(v) -> bool:
    if isinstance(v, (bool, int, float, str)) or v is None:
        return True
    return isinstance(v, (tuple, list)) and all(isinstance(x, int) for x in v)


def _snapshot(model: nn.Module) -> dict:
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    attrs = {
        name: {k: v for k, v in vars(m).items()
               if not k.startswith("__") and k != "training" and _simple(v)}
        for name, m in model.named_modules()
    }
    return {"shapes": shapes, "attributes": attrs}


def _diff(before: dict, after: dict) -> PrunedArchitecture:
    shapes = {k: s for k, s in after["shapes"].items() if before["shapes"].get(k) != s}
    attributes = {}
    for name, attrs in after["attributes"].items():
        old = before["attributes"].get(name, {})
        changed = {k: v for k, v in attrs.items() if old.get(k) != v}
        if changed:
            attributes[name] = changed
    return PrunedArchitecture(shapes=shapes, attributes=attributes)


def _reshape(model: nn.Module, arch: PrunedArchitecture, layers) -> None:
    if isinstance(arch, ChannelPruningConfig):
        raise ValueError("channel pruning needs example inputs to trace the model: call "
                         "sk.prune_channels(model, config, example_inputs=x) instead of sk.apply")
    for name, attrs in arch.attributes.items():
        module = _module(model, name)
        for k, v in attrs.items():
            setattr(module, k, tuple(v) if isinstance(getattr(module, k, None), tuple) else v)
    for key, shape in arch.shapes.items():
        mname, _, tname = key.rpartition(".")
        module = _module(model, mname)
        if tname in module._parameters and module._parameters[tname] is not None:
            old = module._parameters[tname]
            if list(old.shape) != list(shape):
                module._parameters[tname] = nn.Parameter(
                    old.new_zeros(shape), requires_grad=old.requires_grad)
        elif tname in module._buffers and module._buffers[tname] is not None:
            old = module._buffers[tname]
            if list(old.shape) != list(shape):
                module._buffers[tname] = old.new_zeros(shape)
        else:
            raise ValueError(f"the recorded architecture names {key!r}, which "
                             f"{type(model).__name__} does not have; load into the original "
                             "model class")


def _module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        raise ValueError(f"the recorded architecture names module {name!r}, which "
                         f"{module_type(model).__name__} does not have; load into the original "
                         "model class") from None


class PrunedArchitectureTechnique(Technique):
    """The ``pruned-architecture`` record: the shapes channel pruning left, rebuilt by
    ``sk.load`` on a fresh model (structural: it survives ``sk.strip``)."""

    name = "pruned-architecture"
    config_cls = PrunedArchitecture
    # A record, not something a user applies: no family verb takes it.
    family = "other"
    structural = True
    description = "The shapes left by channel pruning; rebuilt on a fresh model by sk.load."

    def select(self, model, config, targets, ignore):
        # Channel pruning reshapes modules instead of parametrizing weights: no layer list.
        return []

    def prepare(self, model, config, layers):
        _reshape(model, config, layers)


def _apply(model, config: ChannelPruningConfig, *, targets=None, ignore=None,
           example_inputs=None) -> nn.Module:
    """``sk.apply`` of a ChannelPruningConfig (recipes use it): magnitude or BN-scale
    importance, one call; Taylor importance and fine-tune rounds need sk.prune_channels."""
    if example_inputs is None:
        raise ValueError("channel pruning needs example inputs to trace the model: call "
                         "sk.apply(model, config, example_inputs=x) or "
                         "sk.prune_channels(model, config, example_inputs=x)")
    if targets:
        raise ValueError("channel pruning prunes every prunable layer; choose what stays "
                         "whole with ignore= (ChannelPruningConfig.ignore), not targets=")
    if ignore:
        config = copy.deepcopy(config)
        config.ignore = list(config.ignore) + list(
            [ignore] if isinstance(ignore, str) else ignore)
    if config.importance == "taylor":
        raise ValueError("importance='taylor' needs a loss and batches: call "
                         "sk.prune_channels(model, config, example_inputs=x, loss_fn=..., "
                         "batches=...) (ChannelPruningConfig.importance)")
    return prune_channels(model, config, example_inputs=example_inputs)


class ChannelPruning(Technique):
    """The ``channel-pruning`` technique: removes channels (a structural change)."""

    name = "channel-pruning"
    config_cls = ChannelPruningConfig
    family = "pruning"
    description = "Remove channels / neurons with Torch-Pruning (sk.prune_channels)."

    def select(self, model, config, targets, ignore):
        return []

    def prepare(self, model, config, layers):
        _reshape(model, config, layers)

    def uses_example_inputs(self, config):
        return True

    def apply(self, model, config, *, targets=None, ignore=None, example_inputs=None,
              calibration=None, **options):
        if calibration is not None or options:
            raise ValueError("channel pruning takes example_inputs, not calibration data "
                             "(sk.prune_channels(model, config, example_inputs=x))")
        return _apply(model, config, targets=targets, ignore=ignore,
                      example_inputs=example_inputs)

    def conformance_entries(self):
        from slimkit.techniques.channel_pruning.conformance import ENTRIES

        return ENTRIES


TECHNIQUE = ChannelPruning()
ARCHITECTURE_TECHNIQUE = PrunedArchitectureTechnique()
