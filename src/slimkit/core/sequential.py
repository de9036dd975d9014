"""Sequential calibration: compress a model one repeated block at a time.

Calibration-heavy methods (GPTQ, AWQ, SparseGPT, Wanda, SmoothQuant) need statistics of the
inputs of every layer, measured on a model whose earlier blocks are already compressed.
:func:`run_sequential` captures what the first block receives for every calibration batch
(hidden states and keyword arguments such as the attention mask or rotary embeddings) without
running the rest of the model, then walks the blocks in order: a callback gathers statistics
(usually with :class:`LinearInputStats`) and compresses the block, and the engine runs the
compressed block to make the next block's inputs. Peak memory is the model plus one block's
activations for the calibration set, kept on CPU in the model's dtype.

This module is shared code: it knows transformer conventions (blocks in an ``nn.ModuleList``,
hidden states as the first argument, caches to switch off) but no technique.

Example:
    >>> def on_block(name, block, inputs):
    ...     with LinearInputStats(block) as stats:
    ...         for args, kwargs in inputs:
    ...             block(*args, **kwargs)
    ...     print(name, {k: h.shape for k, h in stats.hessian.items()})
    >>> run_sequential(model, batches, on_block)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "BlockInputs",
    "LinearInputStats",
    "block_outputs",
    "capture_block_inputs",
    "find_blocks",
    "run_sequential",
]

# Keyword arguments through which transformers blocks read or grow a KV cache. Calibration
# feeds every block its captured inputs several times, so a cache must never be passed on.
_CACHE_KWARGS = ("past_key_value", "past_key_values", "cache", "layer_past")


class _StopForward(Exception):
    """Raised by the capture hook to end the model's forward at the first block."""


# -- finding blocks ---------------------------------------------------------------------------


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The repeated blocks of ``model``: the largest ``nn.ModuleList`` of same-type modules.

    "Largest" counts parameters, so a decoder stack wins over a list of small heads.
    Returns ``[(qualified name, block)]`` in execution order (the list's order).

    Example:
        >>> [name for name, _ in find_blocks(llama)]
        ['model.layers.0', 'model.layers.1']
    """
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        kinds = {type(child) for child in module}
        if len(kinds) != 1:
            continue
        size = _param_count(module)
        if size > 0 and (best is None or size > best[0]):
            best = (size, name, module)
    if best is None:
        raise ValueError(
            f"found no repeated blocks in {type(model).__name__}: sequential calibration needs "
            "an nn.ModuleList of same-type modules holding parameters (e.g. decoder layers); "
            "pass blocks=[(name, module), ...] explicitly"
        )
    _, prefix, blocks = best
    return [(f"{prefix}.{i}" if prefix else str(i), block) for i, block in enumerate(blocks)]


# -- moving nested inputs ---------------------------------------------------------------------


def _move(value: Any, device: torch.device | None = None, dtype: torch.dtype | None = None) -> Any:
    """Move every tensor in a nested structure; float tensors also take ``dtype``."""
    if isinstance(value, torch.Tensor):
        if dtype is not None and value.is_floating_point():
            return value.to(device=device, dtype=dtype)
        return value.to(device=device) if device is not None else value
    if isinstance(value, tuple):
        return tuple(_move(v, device, dtype) for v in value)
    if isinstance(value, list):
        return [_move(v, device, dtype) for v in value]
    if isinstance(value, dict):
        return {k: _move(v, device, dtype) for k, v in value.items()}
    return value


def _detach_cache(kwargs: dict) -> dict:
    out = dict(kwargs)
    for key in _CACHE_KWARGS:
        if key in out:
            out[key] = None
    if "use_cache" in out:
        out["use_cache"] = False
    return out


class BlockInputs(Sequence):
    """The captured inputs of one block: one ``(args, kwargs)`` per calibration batch.

    Stored on CPU; indexing or iterating yields them moved to ``device`` (the block's), so
    ``for args, kwargs in inputs: block(*args, **kwargs)`` works on any device.
    """

    def __init__(self, items: list[tuple[tuple, dict]], device: torch.device | None = None):
        self.items = items
        self.device = device

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return BlockInputs(self.items[i], self.device)
        args, kwargs = self.items[i]
        if self.device is None or self.device.type == "cpu":
            return args, kwargs
        return _move(args, self.device), _move(kwargs, self.device)

    def __iter__(self) -> Iterator[tuple[tuple, dict]]:
        for i in range(len(self.items)):
            yield self[i]

    @property
    def tokens(self) -> int:
        """Rows of hidden states over all batches (batch x sequence for a transformer)."""
        n = 0
        for args, kwargs in self.items:
            h = _hidden(args, kwargs)
            n += h.numel() // h.shape[-1]
        return n

    def advance_(self, block: nn.Module) -> None:
        """Replace every batch's hidden states by ``block``'s output on them, in place.

        One batch at a time, so only one batch of extra activations is alive: the next
        block's inputs take the memory of this block's.
        """
        dtype = _dtype_of(block)
        with torch.no_grad():
            for i in range(len(self.items)):
                args, kwargs = self[i]
                out = _first_output(block(*args, **kwargs)).detach().to("cpu", dtype)
                self.items[i] = _replace_hidden(*self.items[i], out)

    def with_hidden(self, hidden: list[torch.Tensor]) -> BlockInputs:
        """The same inputs with the hidden states of every batch replaced."""
        items = [_replace_hidden(args, kwargs, h) for (args, kwargs), h in zip(self.items, hidden)]
        return BlockInputs(items, self.device)


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    raise ValueError(
        "a block was called without positional arguments or a 'hidden_states' keyword; "
        f"cannot tell its hidden states apart (keywords: {sorted(kwargs)})"
    )


def _replace_hidden(args: tuple, kwargs: dict, h: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (h, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": h}


def _first_output(out: Any) -> torch.Tensor:
    # Older transformers blocks return (hidden_states, attn_weights, ...); newer ones a tensor.
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    raise TypeError(f"cannot find the hidden states in a block output of type {type(out).__name__}")


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _dtype_of(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


# -- capture and run --------------------------------------------------------------------------


def _call_model(model: nn.Module, batch: Any, device: torch.device) -> None:
    batch = _move(batch, device)
    if isinstance(batch, dict):
        params = inspect.signature(model.forward).parameters
        if "use_cache" in params and "use_cache" not in batch:
            batch = {**batch, "use_cache": False}
        model(**batch)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    else:
        model(batch)


def capture_block_inputs(model: nn.Module, batches: Sequence, block: nn.Module) -> BlockInputs:
    """Run ``model`` on every batch up to ``block`` and return what ``block`` received.

    ``batches``: dicts of tensors (``model(**batch)``), tensors (``model(x)``) or tuples
    (``model(*batch)``). The forward stops at ``block`` (nothing after it runs). Inputs are
    kept on CPU, floating tensors in the model's dtype.

    Example:
        >>> inputs = capture_block_inputs(model, batches, model.model.layers[0])
        >>> inputs.tokens                      # 128 x 512 = 65536
    """
    if not batches:
        raise ValueError("calibration needs at least one batch; got an empty list")
    device, dtype = _device_of(model), _dtype_of(model)
    captured: list[tuple[tuple, dict]] = []

    def hook(module, args, kwargs):
        args = _move(tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args),
                     torch.device("cpu"), dtype)
        kwargs = _move(_detach_cache(kwargs), torch.device("cpu"), dtype)
        if captured:
            kwargs = _share_equal(kwargs, captured[0][1])
        captured.append((args, kwargs))
        raise _StopForward

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                before = len(captured)
                try:
                    _call_model(model, batch, device)
                except _StopForward:
                    pass
                except Exception as e:
                    raise ValueError(
                        f"calibration batch {i} was rejected by {type(model).__name__}: "
                        f"{type(e).__name__}: {e}"
                    ) from e
                if len(captured) == before:
                    raise ValueError(
                        f"calibration batch {i}: {type(model).__name__} finished its forward "
                        "without calling the first block; is the block part of this model?"
                    )
    finally:
        handle.remove()
    return BlockInputs(captured, device)


def _share_equal(value: Any, first: Any) -> Any:
    """``value`` with every tensor equal to the first batch's counterpart replaced by it.

    Attention masks and rotary embeddings are usually the same for every batch (a 512-token
    causal mask is 1 MB): keeping one copy saves that much per calibration batch.
    """
    if isinstance(value, torch.Tensor):
        if (isinstance(first, torch.Tensor) and first.shape == value.shape
                and first.dtype == value.dtype and torch.equal(first, value)):
            return first
        return value
    if isinstance(value, tuple) and isinstance(first, tuple) and len(value) == len(first):
        return tuple(_share_equal(v, f) for v, f in zip(value, first))
    if isinstance(value, dict) and isinstance(first, dict):
        return {k: _share_equal(v, first.get(k)) for k, v in value.items()}
    return value


def block_outputs(block: nn.Module, inputs: BlockInputs) -> list[torch.Tensor]:
    """Run ``block`` on each captured input; the hidden-state outputs, on CPU, per batch.

    Example:
        >>> ref = block_outputs(block, inputs)      # before compressing, to measure the error
    """
    outs = []
    dtype = _dtype_of(block)
    with torch.no_grad():
        for args, kwargs in inputs:
            outs.append(_first_output(block(*args, **kwargs)).detach().to("cpu", dtype))
    return outs


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), transient=False)


def run_sequential(
    model: nn.Module,
    batches: Sequence,
    on_block: Callable[[str, nn.Module, BlockInputs], None],
    *,
    blocks: list[tuple[str, nn.Module]] | None = None,
    progress: bool = True,
    propagate: str = "compressed",
) -> None:
    """Calibrate ``model`` block by block (see the module docstring).

    ``on_block(name, block, inputs)`` is called once per block with its captured inputs
    (a :class:`BlockInputs`); it gathers statistics and compresses the block in place.
    ``propagate="compressed"`` feeds the next block the compressed block's outputs (what the
    deployed model computes), ``"original"`` the outputs of the block before ``on_block``.
    Runs under ``torch.no_grad()`` in eval mode; restores every module's train/eval mode and
    removes its hooks, also on error.

    Example:
        >>> run_sequential(model, batches, lambda name, block, inputs: compress(block, inputs))
    """
    if propagate not in ("compressed", "original"):
        raise ValueError(f"propagate must be 'compressed' or 'original', got {propagate!r}")
    blocks = find_blocks(model) if blocks is None else list(blocks)
    if not blocks:
        raise ValueError(f"no blocks to calibrate in {type(model).__name__}")
    modes = {m: m.training for m in model.modules()}
    model.eval()
    bar = _progress(progress)
    try:
        with torch.no_grad():
            inputs = capture_block_inputs(model, batches, blocks[0][1])
            if bar is not None:
                bar.start()
                task = bar.add_task("calibrating", total=len(blocks))
            for i, (name, block) in enumerate(blocks):
                if bar is not None:
                    bar.update(task, description=f"calibrating {name}")
                inputs.device = _device_of(block)
                original = block_outputs(block, inputs) if propagate == "original" else None
                on_block(name, block, inputs)
                if i + 1 < len(blocks):
                    if original is not None:
                        inputs = inputs.with_hidden(original)
                    else:
                        inputs.advance_(block)
                if bar is not None:
                    bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
        for m, mode in modes.items():
            m.training = mode


# -- per-layer input statistics ---------------------------------------------------------------


class LinearInputStats:
    """Statistics of the inputs of every ``nn.Linear`` of ``block`` while it runs.

    Use as a context manager around forward passes of ``block``. Per layer (name relative to
    ``block``), over all rows ``x`` of its input flattened to ``(-1, in_features)``:

    - ``hessian[name]``: ``2/n * X^T X`` (in x in, float64), for GPTQ / SparseGPT;
    - ``abs_mean[name]``: mean ``|x|`` per input channel, for AWQ;
    - ``abs_max[name]``: max ``|x|`` per input channel, for SmoothQuant;
    - ``sq_norm[name]``: sum ``x^2`` per input channel, for Wanda (``sqrt`` gives ``||X_j||``);
    - ``samples[name]``: rows seen; ``inputs[name]`` (``keep=N``): up to ``N`` rows, evenly
      taken from every batch, for searches that replay a layer.

    Layers that receive the same tensor (q/k/v projections) share one computation. Each
    batch's product is formed in the input dtype and accumulated in float64.

    Example:
        >>> with LinearInputStats(block, abs_mean=True) as stats:
        ...     for args, kwargs in inputs: block(*args, **kwargs)
        >>> stats.hessian["self_attn.q_proj"].shape      # (576, 576)
    """

    def __init__(self, block: nn.Module, layers: Sequence[str] | None = None, *,
                 hessian: bool = True, abs_mean: bool = False, abs_max: bool = False,
                 sq_norm: bool = False, keep: int = 0, keep_per_batch: int | None = None):
        modules = dict(block.named_modules())
        if layers is None:
            layers = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
        missing = [n for n in layers if n not in modules]
        if missing:
            raise ValueError(f"no module(s) {missing} in {type(block).__name__}")
        self.block = block
        self.layers = list(layers)
        self.want = {"hessian": hessian, "abs_mean": abs_mean, "abs_max": abs_max,
                     "sq_norm": sq_norm}
        self.keep = int(keep)
        self.keep_per_batch = keep_per_batch
        self.hessian: dict[str, torch.Tensor] = {}
        self.abs_mean: dict[str, torch.Tensor] = {}
        self.abs_max: dict[str, torch.Tensor] = {}
        self.sq_norm: dict[str, torch.Tensor] = {}
        self.samples: dict[str, int] = {}
        self.inputs: dict[str, torch.Tensor] = {}
        self._sums: dict[str, dict[str, torch.Tensor]] = {n: {} for n in self.layers}
        self._kept: dict[str, list[torch.Tensor]] = {n: [] for n in self.layers}
        self._handles: list = []
        self._cache: tuple[int, dict] | None = None   # (id of last input, its statistics)

    def _batch_stats(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # q/k/v (and gate/up) receive the very same tensor: compute its statistics once.
        if self._cache is not None and self._cache[0] is x:
            return self._cache[1]
        x2 = x.detach().reshape(-1, x.shape[-1])
        out: dict[str, torch.Tensor] = {"n": torch.tensor(x2.shape[0])}
        if self.want["hessian"]:
            xf = x2.float() if x2.dtype in (torch.float16, torch.bfloat16) else x2
            out["xtx"] = (xf.T @ xf).double()
        if self.want["abs_mean"]:
            out["abs_sum"] = x2.abs().sum(0, dtype=torch.float64)
        if self.want["abs_max"]:
            out["abs_max"] = x2.abs().amax(0).double()
        if self.want["sq_norm"]:
            out["sq"] = x2.double().pow(2).sum(0)
        out["rows"] = x2
        self._cache = (x, out)
        return out

    def _hook(self, name: str):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["input"]
            s = self._batch_stats(x)
            acc = self._sums[name]
            for key, v in s.items():
                if key == "rows":
                    continue
                if key == "abs_max":
                    acc[key] = v if key not in acc else torch.maximum(acc[key], v)
                else:
                    acc[key] = v.clone() if key not in acc else acc[key] + v
            if self.keep:
                rows = s["rows"]
                per = self.keep_per_batch or self.keep
                step = max(1, rows.shape[0] // per)
                self._kept[name].append(rows[::step][:per].to("cpu", copy=True))
        return hook

    def __enter__(self) -> LinearInputStats:
        modules = dict(self.block.named_modules())
        for name in self.layers:
            self._handles.append(
                modules[name].register_forward_pre_hook(self._hook(name), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._cache = None
        self._finish()

    def _finish(self) -> None:
        for name, acc in self._sums.items():
            if not acc:
                continue
            n = int(acc["n"])
            self.samples[name] = n
            if "xtx" in acc:
                self.hessian[name] = acc["xtx"] * (2.0 / n)
            if "abs_sum" in acc:
                self.abs_mean[name] = acc["abs_sum"] / n
            if "abs_max" in acc:
                self.abs_max[name] = acc["abs_max"]
            if "sq" in acc:
                self.sq_norm[name] = acc["sq"]
            if self._kept[name]:
                rows = torch.cat(self._kept[name])
                step = max(1, rows.shape[0] // self.keep)
                self.inputs[name] = rows[::step][: self.keep]
        self._sums = {n: {} for n in self.layers}
        self._kept = {n: [] for n in self.layers}
