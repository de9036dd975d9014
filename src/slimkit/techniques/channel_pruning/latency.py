"""``prune_for_latency``: per-layer channel ratios chosen from latencies measured in ONNX Runtime.

Uniform ratios remove as much from a cheap layer as from an expensive one. This policy
measures instead: for every prunable group (a conv or linear and everything coupled to its
channels) and every candidate ratio, it prunes that group alone on a copy, exports it and
times it in ONNX Runtime on this machine against the dense model. Assuming the savings add
up, it then picks, greedily, the (group, ratio) steps that save the most milliseconds per
unit of importance removed (L2 importance, normalized per group) until the predicted
speedup reaches the target. The choice is tried on a copy; when it falls short, the savings
are rescaled by measured / predicted and the choice is made again (at most 3 tries). The
chosen ratios are applied with :func:`prune_channels` and the result is timed again: the
report gives predicted and measured speedup side by side, and every try.

Example:
    >>> model, rep = prune_for_latency(model, torch.randn(32, 3, 64, 64), target_speedup=2.0)
    >>> rep["predicted_speedup"], rep["measured_speedup"]
    (2.04, 1.93)
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from slimkit.techniques.channel_pruning.channels import (
    ChannelPruningConfig,
    _bounded_trace,
    _inputs,
    _pruner,
    count_macs,
    prune_channels,
)


def prune_for_latency(
    model: nn.Module,
    example_inputs,
    target_speedup: float = 2.0,
    *,
    ratios=(0.25, 0.5, 0.75),
    ignore=(),
    threads: int = 2,
    runs: int = 20,
) -> tuple[nn.Module, dict]:
    """Prune ``model`` in place until ONNX Runtime predicts ``target_speedup``; returns
    ``(model, report)``.

    ``example_inputs`` is what latency is measured on: give a batch of the size you deploy
    with. ``ratios`` are the candidate shares of channels per group; ``runs`` the timed runs
    per measurement (medians of interleaved runs, so background load hits both sides alike).
    The report holds the per-group ratios, the dense and pruned milliseconds, predicted and
    measured speedups, the MAC reduction and each (group, ratio)'s measured share of time saved.
    """
    if not isinstance(target_speedup, (int, float)) or target_speedup <= 1.0:
        raise ValueError(f"target_speedup must be a number > 1, got {target_speedup!r} "
                         "(prune_for_latency.target_speedup)")
    ratios = sorted(set(ratios))
    if not ratios or not all(0.0 < r < 1.0 for r in ratios):
        raise ValueError(f"ratios must be shares in (0, 1), got {ratios!r} (prune_for_latency.ratios)")
    inputs = _inputs(example_inputs)
    groups = _groups(model, inputs, list(ignore))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        dense = _export(model, inputs, folder / "dense.onnx")
        # (group, ratio) -> share of the dense time saved when only that group is pruned,
        # measured against the dense model in the same interleaved run: shares stay
        # comparable when the machine's load drifts between runs.
        saved = {}
        for gi, (name, _imp) in enumerate(groups):
            paths = {"dense": dense}
            for r in ratios:
                candidate = copy.deepcopy(model)
                _prune_only(candidate, inputs, {name: r}, ignore)
                paths[r] = _export(candidate, inputs, folder / f"g{gi}-{r}.onnx")
            ms = _median_ms(paths, inputs, runs, threads)
            best = 0.0
            for r in ratios:
                # more pruning never costs time; a dip means timing noise, not a real effect
                best = max(best, 1.0 - ms[r] / ms["dense"])
                saved[name, r] = best
        choice, predicted_share, attempts = _calibrated_choice(
            model, inputs, groups, ratios, saved, target_speedup, ignore, dense, folder,
            runs, threads)
        macs0, _ = count_macs(model, inputs)
        if choice:
            _prune_only(model, inputs, choice, ignore)
        pruned = _export(model, inputs, folder / "pruned.onnx")
        measured = _median_ms({"dense": dense, "pruned": pruned}, inputs, runs, threads)
    macs1, _ = count_macs(model, inputs)
    report = {
        "target_speedup": float(target_speedup),
        "ratios": choice,
        "dense_ms": measured["dense"],
        "pruned_ms": measured["pruned"],
        "predicted_speedup": 1.0 / predicted_share,
        "measured_speedup": measured["dense"] / measured["pruned"],
        "mac_reduction": macs0 / macs1,
        "attempts": attempts,
        "group_savings": {f"{g}@{r}": s for (g, r), s in saved.items()},
    }
    if report["measured_speedup"] < target_speedup:
        warnings.warn(
            f"prune_for_latency: measured {report['measured_speedup']:.2f}x, short of the "
            f"target {target_speedup}x (predicted {report['predicted_speedup']:.2f}x); allow "
            "larger ratios (prune_for_latency.ratios) or time more runs on a quieter machine",
            stacklevel=2,
        )
    return model, report


def _groups(model: nn.Module, inputs, ignore: list) -> list[tuple[str, torch.Tensor]]:
    """Prunable groups as (root layer name, per-channel L2 importance normalized to mean 1)."""
    import torch_pruning as tp

    work = copy.deepcopy(model)
    out = []
    with _bounded_trace(work):
        pruner = _pruner(work, ChannelPruningConfig(0.0, ignore=list(ignore)), inputs,
                         tp.importance.MagnitudeImportance(p=2), 1)
        for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                              root_module_types=pruner.root_module_types):
            imp = pruner.estimate_importance(group)
            if imp is None:
                continue
            name = pruner.DG._module2name[group[0].dep.target.module]
            out.append((name, imp.detach().float().cpu()))
    if not out:
        raise ValueError(f"{type(model).__name__} has no prunable channel group")
    return out


def _prune_only(model: nn.Module, inputs, ratios: dict, ignore) -> None:
    prune_channels(model, ChannelPruningConfig(0.0, overrides=dict(ratios), ignore=list(ignore)),
                   example_inputs=inputs)


def _calibrated_choice(model, inputs, groups, ratios, saved, target, ignore, dense, folder,
                       runs, threads, max_attempts: int = 3):
    """Choose, try the choice on a copy, and when it falls short rescale the per-group savings
    by measured / predicted and choose again: savings measured one group at a time do not
    simply add up (a smaller layer also speeds up its neighbours' memory traffic, or not)."""
    attempts = []
    for attempt in range(max_attempts):
        choice, share = _choose(groups, ratios, saved, target)
        if not choice:
            break
        candidate = copy.deepcopy(model)
        _prune_only(candidate, inputs, choice, ignore)
        path = _export(candidate, inputs, folder / f"try{attempt}.onnx")
        ms = _median_ms({"dense": dense, "try": path}, inputs, runs, threads)
        measured = ms["dense"] / ms["try"]
        attempts.append({"ratios": dict(choice), "predicted_speedup": 1.0 / share,
                         "measured_speedup": measured})
        maxed = all(r == ratios[-1] for r in choice.values()) and len(choice) == len(groups)
        if measured >= 0.97 * target or maxed:
            break
        scale = (1.0 - 1.0 / measured) / max(1.0 - share, 1e-6)
        for key in saved:
            saved[key] *= max(scale, 0.05)
    return choice, share, attempts


def _removed_importance(imp: torch.Tensor, ratio: float) -> float:
    n = len(imp)
    k = n - int(n * (1 - ratio))
    return float(torch.sort(imp).values[:k].sum())


def _choose(groups, ratios, saved, target):
    """Greedy: raise one group's ratio at a time, best time saved per importance removed.

    Returns the chosen ``{group: ratio}`` and the predicted share of the dense time left.
    """
    level = {name: 0 for name, _ in groups}  # index into [0] + ratios
    steps = [0.0, *ratios]
    imp = dict(groups)
    goal = 1.0 / target

    def gain(name, lvl):
        r = steps[lvl]
        return 0.0 if r == 0 else saved[name, r]

    predicted = 1.0
    while predicted > goal:
        best, best_score = None, None
        for name in level:
            lvl = level[name]
            if lvl + 1 >= len(steps):
                continue
            d_ms = gain(name, lvl + 1) - gain(name, lvl)
            if d_ms <= 0:
                continue
            d_imp = (_removed_importance(imp[name], steps[lvl + 1])
                     - _removed_importance(imp[name], steps[lvl]))
            score = d_ms / max(d_imp, 1e-9)
            if best_score is None or score > best_score:
                best, best_score = name, score
        if best is None:
            break
        level[best] += 1
        predicted = 1.0 - sum(gain(n, lvl) for n, lvl in level.items())
    choice = {n: steps[lvl] for n, lvl in level.items() if lvl > 0}
    # savings measured one group at a time can add up past the whole model under noise
    return choice, max(predicted, 0.05)


def _export(model: nn.Module, inputs, path: Path) -> Path:
    # The TorchScript exporter is several times faster to run than dynamo, and these files
    # are only timed, never shipped; validation is skipped for the same reason.
    from slimkit.export import export_onnx

    return export_onnx(model, path, example_inputs=inputs, dynamo=False, validate=False)


def _median_ms(paths: dict, inputs, runs: int, threads: int) -> dict:
    arrays = inputs if isinstance(inputs, tuple) else (inputs,)
    return interleaved_ms(paths, [a.numpy() for a in arrays], runs, threads=threads)


def interleaved_ms(paths: dict, arrays: list, runs: int, *, warmup: int = 3,
                   threads: int = 2) -> dict:
    """Median milliseconds per call of each ONNX file, timing one call of each in turn.

    Interleaving makes background load hit every file alike. Intra-op spinning is off:
    otherwise the thread pool of the session that just ran keeps spinning on the cores while
    the next one runs (measured: a 2 ms model timed at 21 ms when interleaved with spinning).

    Example:
        >>> ms = interleaved_ms({"dense": "a.onnx", "pruned": "b.onnx"}, [x], runs=30)
        >>> ms["dense"] / ms["pruned"]       # the speedup
    """
    import onnxruntime as ort

    sessions, feeds = {}, {}
    for k, path in paths.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions[k] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feeds[k] = {i.name: a for i, a in zip(sessions[k].get_inputs(), arrays)}
    for _ in range(warmup):
        for k, sess in sessions.items():
            sess.run(None, feeds[k])
    times = {k: [] for k in sessions}
    for _ in range(runs):
        for k, sess in sessions.items():
            t0 = time.perf_counter()
            sess.run(None, feeds[k])
            times[k].append(time.perf_counter() - t0)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}
