"""N:M sparsity: in every group of M consecutive input weights, at most N are non-zero.

Groups run along the input dimension, the one sparse matrix units reduce over:
- a 2-D weight ``(out, in)`` (Linear, MatMul, RNN, attention projections): M consecutive
  entries of a row; a weight stored ``(in, out)`` (Hugging Face's Conv1D in GPT-2, or a layer
  registered with ``input_axis=0``): M consecutive entries of a column;
- a convolution weight ``(out, in, *kernel)``: M consecutive input channels at the same
  kernel position, i.e. the weight laid out channels-last ``(out, *kernel, in)`` as the
  implicit GEMM of a sparse tensor core sees it.
A weight whose input dimension is not a multiple of M (a depthwise conv, a 3-channel stem)
is skipped with a warning: no hardware accelerates a padded group, so N:M there would cost
accuracy for nothing.

Example:
    >>> sk.prune(model, sk.MagnitudePruningConfig(pattern="2:4"), ignore=["classifier"])
    >>> sk.strip(model)
    >>> check_sparsity(model, "2:4").ok
    True
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_pattern(pattern) -> tuple[int, int] | None:
    """``"2:4"`` -> ``(2, 4)``; None unless it is ``"N:M"`` with integers ``0 < N < M``."""
    if not isinstance(pattern, str):
        return None
    match = _PATTERN.match(pattern)
    if not match:
        return None
    n, m = int(match.group(1)), int(match.group(2))
    return (n, m) if 0 < n < m else None


def final_sparsity(schedule) -> float:
    """The sparsity a schedule ends at (its value at ``end_step``, or at ``begin_step`` if open)."""
    end = getattr(schedule, "end_step", -1)
    begin = getattr(schedule, "begin_step", 0)
    return float(schedule.sparsity(end if end >= 0 else begin))


def input_axis_groups(shape, m: int, input_axis: int = 1) -> bool:
    """True if a weight of ``shape`` can be cut into groups of ``m`` along its input axis."""
    return len(shape) >= 2 and shape[input_axis] % m == 0


def _grouped(w: torch.Tensor, m: int) -> torch.Tensor:
    # (out, in, *k) -> (out, *k, in) -> (groups, m): M consecutive input channels per row.
    if w.dim() > 2:
        w = w.movedim(1, -1)
    return w.reshape(-1, m)


def _ungrouped(g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if len(shape) > 2:
        channels_last = (shape[0], *shape[2:], shape[1])
        return g.reshape(channels_last).movedim(-1, 1)
    return g.reshape(shape)


def nm_keep_mask(w: torch.Tensor, n: int, m: int, fraction: float = 1.0,
                 input_axis: int = 1) -> torch.Tensor:
    """A boolean mask keeping the N largest ``|w|`` of every group of M, for ``fraction`` of
    the groups: the groups whose pruning removes the least magnitude go first. Ties break
    by position (a stable sort), so the mask is the same on every run. ``input_axis=0``: a
    2-D weight stored ``(in, out)`` (HF Conv1D), grouped along its axis 0.
    """
    if input_axis == 0 and w.dim() == 2:
        return nm_keep_mask(w.t(), n, m, fraction).t()
    groups = _grouped(w.detach().abs().float(), m)
    order = torch.argsort(groups, dim=1, descending=True, stable=True)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, order[:, :n], True)
    n_groups = groups.shape[0]
    n_pruned = int(round(min(max(fraction, 0.0), 1.0) * n_groups))
    if n_pruned < n_groups:
        cost = (groups * ~keep).sum(1)
        spared = torch.argsort(cost, stable=True)[n_pruned:]
        keep[spared] = True
    return _ungrouped(keep, w.shape)


def nm_applies(module: nn.Module) -> bool:
    """False for layers whose weight is not a matrix product over its dim 1: embeddings are
    lookups, and transposed convolutions store ``(in, out, *kernel)``."""
    from slimkit.core.selection import module_type

    cls = module_type(module)
    return not issubclass(cls, nn.Embedding | nn.EmbeddingBag | nn.modules.conv._ConvTransposeNd)


def nm_layers(model: nn.Module, layers: list, m: int) -> list:
    """The layers N:M pruning can handle; warns once, naming the others and why."""
    from slimkit.core.parametrize import get_module, raw_tensor
    from slimkit.core.selection import input_axis, module_type

    kept, skipped = [], []
    for mname, tname in layers:
        module = get_module(model, mname)
        t = raw_tensor(module, tname)
        axis = input_axis(module, tname) if t.dim() == 2 else 1
        if not nm_applies(module):
            skipped.append(f"{mname}.{tname} ({module_type(module).__name__})")
        elif not input_axis_groups(t.shape, m, axis):
            dim = t.shape[axis] if t.dim() >= 2 else "none"
            skipped.append(f"{mname}.{tname} (input dim {dim})")
        else:
            kept.append((mname, tname))
    if skipped:
        warnings.warn(
            f"slimkit: N:M pruning with M={m} skipped {len(skipped)} weight(s) whose input "
            f"dimension is not a multiple of {m} or that are not matrix products: "
            f"{', '.join(skipped)}; they stay dense",
            stacklevel=6,
        )
    if not kept:
        raise ValueError(
            f"no selected weight has an input dimension divisible by M={m} "
            "(MagnitudePruningConfig.pattern); pick other targets or a smaller M"
        )
    return kept


# -- checking ---------------------------------------------------------------------------------

@dataclass
class WeightPatternCheck:
    """One weight: ``status`` is ``"ok"``, ``"violated"`` or ``"skipped"`` (see ``reason``)."""

    name: str
    shape: tuple
    groups: int
    violating_groups: int
    sparsity: float
    status: str
    reason: str = ""


@dataclass
class SparsityCheck:
    """What :func:`check_sparsity` found. ``ok``: at least one weight was checked and every
    checked weight satisfies the pattern."""

    pattern: str
    weights: list[WeightPatternCheck] = field(default_factory=list)

    @property
    def checked(self) -> list[WeightPatternCheck]:
        return [w for w in self.weights if w.status != "skipped"]

    @property
    def ok(self) -> bool:
        return bool(self.checked) and all(w.status == "ok" for w in self.checked)

    def table(self):
        """A rich table, one row per weight."""
        from rich.table import Table

        table = Table(title=f"{self.pattern} sparsity check", title_justify="left")
        for col in ("weight", "shape", "groups", "violating", "sparsity", "status"):
            table.add_column(col, justify="right" if col in ("groups", "violating") else "left")
        for w in self.weights:
            status = w.status if not w.reason else f"{w.status} ({w.reason})"
            table.add_row(w.name, "x".join(map(str, w.shape)), str(w.groups),
                          str(w.violating_groups), f"{w.sparsity:.3f}", status)
        return table


def check_weight(name: str, w, n: int, m: int, input_axis: int = 1) -> WeightPatternCheck:
    """Check one weight (tensor or array) laid out ``(out, in, *kernel)`` (or ``in`` on
    ``input_axis``)."""
    t = w.detach() if isinstance(w, torch.Tensor) else torch.from_numpy(np.array(w))
    t = t.cpu()
    shape = tuple(t.shape)
    sparsity = float((t == 0).float().mean()) if t.numel() else 0.0
    if t.dim() < 2:
        return WeightPatternCheck(name, shape, 0, 0, sparsity, "skipped", "not a matrix")
    if input_axis != 1:
        t = t.movedim(input_axis, 1)
    if t.shape[1] % m:
        return WeightPatternCheck(name, shape, 0, 0, sparsity, "skipped",
                                  f"input dim {t.shape[1]} not a multiple of {m}")
    nonzero = (_grouped(t, m) != 0).sum(1)
    bad = int((nonzero > n).sum())
    return WeightPatternCheck(name, shape, int(nonzero.numel()), bad, sparsity,
                              "ok" if bad == 0 else "violated")


def check_sparsity(path_or_model, pattern: str = "2:4") -> SparsityCheck:
    """Check every weight of an ONNX file or a torch model against an N:M pattern.

    Torch models: every weight slimkit can prune (Linear, Conv, attention, RNN...), as the
    model computes with it (masks applied). ONNX files: the weight of every Conv, Gemm and MatMul,
    read along its input axis (``Gemm`` with ``transB=0`` and ``MatMul`` store ``(in, out)``),
    also when it is quantized: behind DequantizeLinear (int8 / int4, blocked), ``Cast * scale``
    or a codebook, and the integer weights of MatMulInteger, QLinearConv, QLinearMatMul,
    QGemm and MatMulNBits (a weight is zero where its code equals its zero point).

    Example:
        >>> report = check_sparsity("model.onnx", "2:4")
        >>> report.ok, [w.name for w in report.weights if w.status == "violated"]
        (True, [])
    """
    nm = parse_pattern(pattern)
    if nm is None:
        raise ValueError(f"pattern must be 'N:M' with integers 0 < N < M, e.g. '2:4', got {pattern!r}")
    n, m = nm
    report = SparsityCheck(pattern=f"{n}:{m}")
    if isinstance(path_or_model, nn.Module):
        from slimkit.core.selection import input_axis, weight_names

        for mname, module in path_or_model.named_modules():
            if ".parametrizations." in f".{mname}.":
                continue
            for tname in weight_names(module):
                if not nm_applies(module):
                    continue
                full = f"{mname}.{tname}" if mname else tname
                w = getattr(module, tname)
                axis = input_axis(module, tname) if w.dim() == 2 else 1
                report.weights.append(check_weight(full, w, n, m, input_axis=axis))
        return report
    if not isinstance(path_or_model, (str, os.PathLike)):
        raise TypeError(
            f"check_sparsity takes an nn.Module or a path to an .onnx file, got "
            f"{type(path_or_model).__name__}"
        )
    for name, array, axis in _onnx_weights(Path(path_or_model)):
        report.weights.append(check_weight(name, array, n, m, input_axis=axis))
    return report


def _onnx_weights(path: Path):
    import onnx

    from slimkit.metrics.matmul_weights import matmul_weights

    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist; expected an .onnx file")
    try:
        model = onnx.load(str(path))
    except Exception as e:
        raise ValueError(f"{str(path)!r} is not a readable ONNX file: {e}") from e
    # Through DequantizeLinear / Cast * scale / codebooks, and the integer weights of
    # MatMulInteger, QLinearConv, QLinearMatMul, QGemm and MatMulNBits (zero points removed).
    yield from matmul_weights(model)
