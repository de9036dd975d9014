"""Measurements the search relies on: the user's metric (checked), the output-error proxy,
the stored size of a weight, multiply-accumulates per layer, and the ORT artifact.

Example:
    >>> metric = call_metric(eval_fn, predict)            # a float, or a clear SearchError
    >>> ref = reference_outputs(model, batches); output_error(model_c, batches, ref)
    0.0031
"""

from __future__ import annotations

import math
import tempfile
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from slimkit.core.batch import batch_inputs, call_model, flatten_outputs
from slimkit.search.space import SearchError


def call_metric(eval_fn: Callable, predict: Callable, key: str | None = None) -> float:
    """``eval_fn(predict)`` as one float: a number, or the ``key`` entry of a dict (the only
    entry when ``key`` is None). Anything else, or an exception, is a :class:`SearchError`."""
    try:
        value = eval_fn(predict)
    except SearchError:
        raise
    except Exception as e:
        raise SearchError(f"eval_fn raised {type(e).__name__}: {e}") from e
    return as_metric(value, key)


def as_metric(value, key: str | None = None) -> float:
    if isinstance(value, Mapping):
        if key is None:
            if len(value) != 1:
                raise SearchError(f"eval_fn returned a dict with keys {sorted(value)}; pass "
                                  "metric=<key> to say which one the budget is on")
            key = next(iter(value))
        if key not in value:
            raise SearchError(f"eval_fn returned keys {sorted(value)}, not the metric {key!r}")
        value = value[key]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SearchError(f"eval_fn must return a number (or a dict of numbers), got "
                          f"{type(value).__name__}: {value!r}")
    if not math.isfinite(value):
        raise SearchError(f"eval_fn returned {value!r}; the search needs a finite number")
    return float(value)


def torch_predict(model: nn.Module) -> Callable:
    """``predict(*tensors)`` running ``model`` in eval mode without gradients."""
    def predict(*tensors):
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                return model(*tensors)
        finally:
            model.train(was)
    return predict


def as_batches(data) -> list:
    """Calibration data as a list of model inputs (a tensor is one batch)."""
    if data is None:
        return []
    if isinstance(data, (torch.Tensor, Mapping)):
        return [data]
    if isinstance(data, tuple):
        return [data]
    return [batch_inputs(b) for b in data]


def reference_outputs(model: nn.Module, batches: list) -> list[list[torch.Tensor]]:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return [[t.detach().float() for t in flatten_outputs(call_model(model, b))]
                    for b in batches]
    finally:
        model.train(was)


def output_error(model: nn.Module, batches: list, reference) -> float:
    """Relative squared error of ``model``'s outputs against ``reference``:
    ``sum |y - y_ref|^2 / sum |y_ref|^2`` over every output of every batch."""
    num = den = 0.0
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b, ref in zip(batches, reference):
                outs = [t.float() for t in flatten_outputs(call_model(model, b))]
                for o, r in zip(outs, ref):
                    num += float((o - r).pow(2).sum())
                    den += float(r.pow(2).sum())
    finally:
        model.train(was)
    return num / den if den > 0 else num


def stored_bytes(weight: torch.Tensor) -> int:
    """An estimate of a weight's zipped size in the artifact: rows with at most 256 distinct
    values are stored as uint8 indices plus a codebook per row (int8 codes, cluster indices),
    others as float32; zlib level 9 of that."""
    a = weight.detach().float().cpu().reshape(weight.shape[0] if weight.ndim else 1, -1).numpy()
    s = np.sort(a, axis=1)
    distinct = (np.diff(s, axis=1) != 0).sum(axis=1) + 1 if a.shape[1] > 1 else np.ones(len(a))
    if distinct.max() <= 256:
        codes = np.empty(a.shape, dtype=np.uint8)
        books = []
        for i, row in enumerate(a):
            u, inv = np.unique(row, return_inverse=True)
            codes[i] = inv
            books.append(u.astype(np.float32))
        data = codes.tobytes() + b"".join(b.tobytes() for b in books)
    else:
        data = a.astype(np.float32).tobytes()
    return len(zlib.compress(data, 9))


def layer_macs(model: nn.Module, inputs, names: list[str]) -> dict[str, float]:
    """Multiply-accumulates of each named layer for one call on ``inputs`` (weight values
    times output positions per output channel; 0 for a layer without a weight)."""
    modules = dict(model.named_modules())
    counts = dict.fromkeys(names, 0.0)
    hooks = []
    for n in names:
        def hook(mod, args, out, n=n):
            w = getattr(mod, "weight", None)
            outs = flatten_outputs(out)
            if isinstance(w, torch.Tensor) and outs and w.ndim >= 1 and w.shape[0]:
                counts[n] += w.numel() * outs[0].numel() / max(1, w.shape[0])
        hooks.append(modules[n].register_forward_hook(hook))
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            call_model(model, inputs)
            model.train(was)
    finally:
        for h in hooks:
            h.remove()
    return counts


def latency_warmup(runs: int) -> int:
    """Untimed calls before ``runs`` timed ones: a fifth of them, 2 to 10 (ORT's first
    calls allocate; beyond a few they only cost time: 10 warm-up calls of MiniLM at batch
    32 x 128 take ~20 s here, as long as the 10 timed ones)."""
    return min(10, max(2, runs // 5))


def measure_artifact(model: nn.Module, example_inputs, eval_fn, *, metric: str | None,
                     objective: str, batch_size: int | None, threads: int,
                     latency_runs: int, export_options: dict | None = None) -> dict:
    """Export ``model`` (a copy is stripped; compact storage), then measure the ONNX file in
    ONNX Runtime: the metric from ``eval_fn``, raw and zipped size, and (for the latency
    objective) the median latency at ``batch_size``."""
    from slimkit.export import export_onnx
    from slimkit.metrics import report

    box: dict = {}

    def wrapped(predict):
        try:
            box["value"] = call_metric(eval_fn, predict, metric)
        except SearchError as e:
            box["error"] = e
        return 0.0

    start = time.perf_counter()
    opts = {"compact": True, **(export_options or {})}
    with tempfile.TemporaryDirectory(prefix="slimkit-search-") as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", example_inputs=example_inputs,
                           **opts)
        runs = latency_runs if objective == "latency" else 0
        rep = report(path, example_inputs, eval_fn=wrapped, batch_size=batch_size,
                     threads=threads, latency_runs=runs, warmup=latency_warmup(runs),
                     memory=False)
    if "error" in box:
        raise box["error"]
    return {
        "metric": box["value"],
        "raw_bytes": int(rep.raw_bytes),
        "zipped_bytes": int(rep.zipped_bytes),
        "latency_ms": (rep.latency or {}).get("p50_ms"),
        "seconds": time.perf_counter() - start,
    }
