"""Which weights a technique touches: the weight-name registry and ``targets=`` / ``ignore=``.

A *layer selection* is a list of ``(module_name, tensor_name)`` pairs. It is computed once
by :func:`select_weights` and stored with the technique's record, so a saved model replays
onto exactly the same tensors.

Patterns in ``targets`` / ``ignore``:
- a class (``nn.Linear``) or a class name (``"Linear"``, ``"nn.Linear"``, ``"torch.nn.Linear"``):
  matches modules of that type or a subclass;
- a glob on qualified module names (``"encoder.*.fc1"``, ``"classifier"``);
- ``"re:<regex>"``: a regular expression fully matching a qualified module name.
Name patterns also match everything under the named module, so ``ignore=["classifier"]``
leaves the whole ``classifier`` subtree alone.

Example:
    >>> select_weights(model, targets=["Linear"], ignore=["head"])
    [('fc1', 'weight'), ('fc2', 'weight')]
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from collections.abc import Callable, Iterable, Sequence

import torch.nn as nn
from torch.nn.utils import parametrize

Pattern = str | type
WeightNames = Sequence[str] | Callable[[nn.Module], list]

_WEIGHTS: dict[type, WeightNames] = {}
# Layers whose weight is stored ``(in, out)``: the input features run along axis 0.
_INPUT_AXIS: dict[type, int] = {}
# Known layers of other libraries, matched by qualified class name so that slimkit needs
# no import of them: Hugging Face's Conv1D (GPT-2 and its family) is a Linear whose weight is
# stored transposed, ``y = x @ W + b`` with ``W`` of shape ``(in, out)``.
_KNOWN_BY_NAME: dict[str, tuple[tuple[str, ...], int]] = {
    "transformers.pytorch_utils.Conv1D": (("weight",), 0),
}

# Layers whose parameters are scales and shifts, not weights: never pruned, never warned about.
_LEFT_ALONE = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.PReLU,
)


def register_weights(module_type: type, names: WeightNames, *,
                     input_axis: int | None = None) -> None:
    """Declare which tensors of ``module_type`` are weights that techniques may transform.

    ``names`` is a list of attribute names or a function ``module -> list of names``.
    ``input_axis`` is the axis of a 2-D weight that runs over the layer's input features:
    1 for the ``(out, in)`` layout of ``nn.Linear``, 0 for a layer computing ``x @ W`` with
    ``W`` stored ``(in, out)``; N:M groups and quantization scales follow it. Default: 1, or
    what slimkit knows of the type (Hugging Face's ``Conv1D``, known without registering, is
    0, so re-registering it keeps its layout). Subclasses inherit the registration.

    Example:
        >>> class Gated(nn.Module): ...           # has self.kernel = nn.Parameter(...)
        >>> sk.register_weights(Gated, ["kernel"])
        >>> sk.prune(model, sk.MagnitudePruningConfig(0.5), targets=["Gated"])
    """
    if input_axis is None:
        known = _KNOWN_BY_NAME.get(f"{module_type.__module__}.{module_type.__qualname__}")
        input_axis = known[1] if known else 1
    if input_axis not in (0, 1):
        raise ValueError(f"input_axis must be 0 (weight stored (in, out)) or 1 (stored "
                         f"(out, in), as nn.Linear), got {input_axis!r}")
    if not isinstance(module_type, type) or not issubclass(module_type, nn.Module):
        raise TypeError(f"module_type must be an nn.Module subclass, got {module_type!r}")
    if not callable(names):
        names = tuple(names)
        if not names or not all(isinstance(n, str) for n in names):
            raise ValueError(f"names must be a non-empty list of attribute names, got {names!r}")
    _WEIGHTS[module_type] = names
    _INPUT_AXIS[module_type] = input_axis


def _registration(module: nn.Module):
    """``(names, input_axis)`` registered for the module's class (or a base), else None."""
    for cls in module_type(module).__mro__:
        if cls in _WEIGHTS:
            return _WEIGHTS[cls], _INPUT_AXIS.get(cls, 1)
        known = _KNOWN_BY_NAME.get(f"{cls.__module__}.{cls.__qualname__}")
        if known is not None:
            return known
    return None


def input_axis(module: nn.Module, name: str = "weight") -> int:
    """The axis of ``module``'s 2-D weight ``name`` that runs over its inputs (1 as in
    ``nn.Linear``; 0 for weights stored ``(in, out)`` such as Hugging Face's ``Conv1D``).

    Example:
        >>> input_axis(nn.Linear(4, 2))
        1
    """
    reg = _registration(module)
    if reg is None or name not in weight_names(module):
        return 1
    return reg[1]


def module_type(module: nn.Module) -> type:
    """The module's class as it was before any parametrization was registered."""
    return parametrize.type_before_parametrizations(module)


def weight_names(module: nn.Module) -> list[str]:
    """Names of ``module``'s own weights that techniques may transform ([] if none known)."""
    reg = _registration(module)
    if reg is None:
        return []
    names = reg[0](module) if callable(reg[0]) else reg[0]
    return [n for n in names if _get_tensor(module, n) is not None]


def _get_tensor(module: nn.Module, name: str):
    try:
        return getattr(module, name)
    except AttributeError:
        return None


def _mha_weights(m: nn.MultiheadAttention) -> list[str]:
    # out_proj is an nn.Linear child and is selected on its own.
    if m.in_proj_weight is not None:
        return ["in_proj_weight"]
    return ["q_proj_weight", "k_proj_weight", "v_proj_weight"]


def _rnn_weights(m: nn.RNNBase) -> list[str]:
    return [n for n in m._flat_weights_names if n.startswith("weight_")]


for _cls in (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding, nn.EmbeddingBag, nn.Bilinear):
    register_weights(_cls, ["weight"])
register_weights(nn.MultiheadAttention, _mha_weights)
register_weights(nn.RNNBase, _rnn_weights)


def _type_matches(module: nn.Module, pattern: Pattern) -> bool:
    cls = module_type(module)
    if isinstance(pattern, type):
        return issubclass(cls, pattern)
    name = pattern.rsplit(".", 1)[-1]
    for base in cls.__mro__:
        if base.__name__ == name and (
            "." not in pattern
            or pattern in (f"nn.{name}", f"{base.__module__}.{name}", f"torch.nn.{name}")
        ):
            return True
    return False


def _name_matches(name: str, pattern: str) -> bool:
    # A name pattern matches the module itself or any of its ancestors.
    parts = name.split(".") if name else []
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    if pattern.startswith("re:"):
        rx = re.compile(pattern[3:])
        return any(rx.fullmatch(p) for p in prefixes)
    return any(fnmatch.fnmatchcase(p, pattern) for p in prefixes)


def matches(name: str, module: nn.Module, pattern: Pattern) -> bool:
    """True if the module called ``name`` matches ``pattern`` (type, glob or ``re:``)."""
    if isinstance(pattern, type):
        return _type_matches(module, pattern)
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(
            f"a layer pattern must be a module class, a type name, a glob or 're:<regex>', "
            f"got {pattern!r}"
        )
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as e:
            raise ValueError(f"invalid regular expression in layer pattern {pattern!r}: {e}") from e
        return _name_matches(name, pattern)
    return _type_matches(module, pattern) or _name_matches(name, pattern)


def _as_list(patterns) -> list[Pattern]:
    if patterns is None:
        return []
    if isinstance(patterns, (str, type)):
        return [patterns]
    return list(patterns)


def select_weights(
    model: nn.Module,
    targets: Iterable[Pattern] | Pattern | None = None,
    ignore: Iterable[Pattern] | Pattern | None = None,
    *,
    names_for: Callable[[str, nn.Module], list[str]] | None = None,
    technique: str = "this technique",
    supported: list[str] | None = None,
) -> list[tuple[str, str]]:
    """Resolve ``targets`` / ``ignore`` to the ``(module_name, tensor_name)`` pairs to transform.

    ``names_for(name, module)`` returns the tensors of a module the technique handles
    (default: :func:`weight_names`); ``supported`` names the layer types the technique takes,
    for error messages (default: every type with registered weights). Raises ``ValueError`` when a ``targets`` entry matches no
    module, names a type without weights, or when nothing at all is selected; warns (listing
    them) about layers that own weights slimkit does not know, so they are skipped visibly.

    Example:
        >>> select_weights(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), ignore=["2"])
        [('0', 'weight')]
    """
    names_for = names_for or (lambda _n, m: weight_names(m))
    targets_l, ignore_l = _as_list(targets), _as_list(ignore)
    modules = [(n, m) for n, m in model.named_modules() if not _is_internal(n)]

    for pattern in targets_l:
        hit = [(n, m) for n, m in modules if matches(n, m, pattern)]
        if not hit:
            types = sorted({module_type(m).__name__ for _, m in modules})
            names = [n for n, _ in modules if n][:8]
            raise ValueError(
                f"targets entry {pattern!r} matches no module in {type(model).__name__}; "
                f"accepted: a module type present ({', '.join(types)}), a glob or 're:' regex "
                f"on module names (e.g. {', '.join(names)})"
            )
        if not any(names_for(n, m) for n, m in hit):
            kinds = sorted({module_type(m).__name__ for _, m in hit})
            raise ValueError(
                f"targets entry {pattern!r} selects {', '.join(kinds)}, which has no weight "
                f"{technique} can transform; supported: "
                f"{', '.join(supported or supported_types())} "
                "(declare custom layers with sk.register_weights)"
            )
    for pattern in ignore_l:
        if not any(matches(n, m, pattern) for n, m in modules):
            warnings.warn(
                f"ignore entry {pattern!r} matches no module in {type(model).__name__}",
                stacklevel=3,
            )

    selected, unknown = [], []
    for name, module in modules:
        if targets_l and not any(matches(name, module, p) for p in targets_l):
            continue
        if any(matches(name, module, p) for p in ignore_l):
            continue
        names = names_for(name, module)
        if names:
            selected.extend((name, t) for t in names)
        elif _owns_unknown_weight(module):
            unknown.append(f"{name or '(the model itself)'} ({module_type(module).__name__})")
    if unknown:
        warnings.warn(
            f"slimkit: {technique} skipped {len(unknown)} layer(s) whose weights it does not "
            f"know: {', '.join(unknown)}. Declare them with sk.register_weights(Type, [names]) "
            "to include them.",
            stacklevel=3,
        )
    if not selected:
        raise ValueError(
            f"the layer selection (targets={targets_l!r}, ignore={ignore_l!r}) matches no layer "
            f"with a weight {technique} can transform in {type(model).__name__}; "
            f"supported: {', '.join(supported or supported_types())}"
        )
    return selected


def supported_types() -> list[str]:
    """Names of the module types with registered weights."""
    return sorted({c.__name__.lstrip("_") for c in _WEIGHTS}
                  | {k.rsplit(".", 1)[-1] for k in _KNOWN_BY_NAME})


def _is_internal(name: str) -> bool:
    # Parametrization modules live under "<module>.parametrizations."; they are not layers.
    return ".parametrizations." in f".{name}." or name.startswith("parametrizations")


def _owns_unknown_weight(module: nn.Module) -> bool:
    if isinstance(module, _LEFT_ALONE):
        return False
    own = dict(module.named_parameters(recurse=False))
    if parametrize.is_parametrized(module):
        own.update({k: getattr(module, k) for k in module.parametrizations})
    return any(p is not None and p.dim() >= 2 for p in own.values())
