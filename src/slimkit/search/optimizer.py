"""``sk.optimize``: the smallest (or fastest) model that loses at most ``max_drop`` of a metric.

The search, in order (each measurement is checkpointed):

1. the fp32 artifact: its metric, zipped size and latency, measured in ONNX Runtime;
2. every uniform setting (one technique at one level on every unit), measured the same way:
   the reference a mixed setting has to beat, and points of the front;
3. the sensitivity of every unit to every combination of the techniques' levels (the
   output-error proxy by default), with each unit's stored size at that setting;
4. plans along the estimated front (a multiple-choice knapsack: estimated cost against the
   sum of the units' estimated errors), measured on the ORT artifact by bisection for the
   most compressed plan that meets the budget, then its neighbours while time allows.

The best plan is rebuilt (seeded: the same model the measurement saw) and returned with
the report of every measured candidate and their Pareto front.

Example:
    >>> result = sk.optimize(model, eval_fn, max_drop=0.005, objective="size",
    ...                      techniques=[sk.MagnitudePruningConfig(0.5), sk.QuantizationConfig()],
    ...                      example_inputs=x, calibration=x_cal, checkpoint="search.json")
    >>> result.model; print(result.table()); result.write_report("search-report")
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn
from rich.console import Console
from rich.table import Table

from slimkit.core.config import Config
from slimkit.core.io import write_text
from slimkit.search.checkpoint import Checkpoint, fingerprint, model_digest
from slimkit.search.measure import latency_warmup, layer_macs, measure_artifact
from slimkit.search.pareto import choose_plans, pareto_front
from slimkit.search.sensitivity_pass import SensitivityResult, measure_sensitivity
from slimkit.search.space import (
    OFF,
    SearchError,
    SearchSpace,
    build,
    plan_stages,
    stages_from_dicts,
    stages_to_dicts,
)

OBJECTIVES = ("size", "latency")


class BudgetError(SearchError):
    """No candidate meets the budget; ``best`` is the closest one measured (a dict)."""

    def __init__(self, message: str, best: dict | None):
        super().__init__(message)
        self.best = best


@dataclass
class OptimizeResult:
    """What :func:`slimkit.optimize` found.

    ``model``: the best candidate, prepared (not stripped: fine-tune it, ``sk.save`` it,
    ``sk.export_onnx`` it). ``stages``: its plan as ``[(config, targets)]`` (ordinary configs
    with per-layer ``overrides``; :meth:`apply` replays them on another copy). ``best``,
    ``baseline``, ``candidates``: measured rows (metric, drop, sizes, latency); ``front``:
    the Pareto front of the candidates; ``sensitivity``: the table the plans came from.
    """

    model: nn.Module | None
    stages: list
    best: dict
    baseline: dict
    candidates: list[dict]
    front: list[dict]
    sensitivity: SensitivityResult | None
    objective: str
    max_drop: float
    allowed_drop: float
    seconds: float
    notes: list[str] = field(default_factory=list)
    resumed: bool = False
    failed: list[dict] = field(default_factory=list)

    def apply(self, model: nn.Module, *, calibration=None, train_fn=None) -> nn.Module:
        """Apply the best plan to ``model`` in place (the same stages the search measured)."""
        from slimkit.search.space import apply_stages

        return apply_stages(model, self.stages, calibration=calibration, train_fn=train_fn)

    def best_uniform(self) -> dict | None:
        """The best uniform candidate (one technique at one level everywhere) that meets
        the budget, or None."""
        ok = [c for c in self.candidates if c["kind"] == "uniform" and c["meets"]]
        return min(ok, key=_rank) if ok else None

    # -- output ----------------------------------------------------------------------------
    def table(self) -> Table:
        """Every measured candidate (front members marked), sorted by the objective."""
        unit = "zipped KiB" if self.objective == "size" else "latency ms"
        t = Table(title=f"sk.optimize: {self.objective}, metric drop <= {self.allowed_drop:g}")
        for col in ("#", "kind", "setting", "metric", "drop", unit, "front", "meets"):
            t.add_column(col, justify="right" if col in ("#", "metric", "drop", unit) else "left")
        front = {c["id"] for c in self.front}
        for c in sorted(self.candidates, key=_rank):
            mark = "best" if c["id"] == self.best["id"] else ("*" if c["id"] in front else "")
            t.add_row(str(c["id"]), c["kind"], _clip(c["label"]), f"{c['metric']:.4f}",
                      f"{c['drop']:+.4f}", _fmt_cost(c["cost"], self.objective), mark,
                      "yes" if c["meets"] else "no")
        return t

    def __rich__(self) -> Table:
        return self.table()

    def to_dict(self) -> dict:
        return {
            "objective": self.objective, "max_drop": self.max_drop,
            "allowed_drop": self.allowed_drop, "seconds": self.seconds, "notes": self.notes,
            "resumed": self.resumed, "baseline": self.baseline, "best": self.best,
            "best_uniform": self.best_uniform(), "front": [c["id"] for c in self.front],
            "candidates": self.candidates, "failed": self.failed,
            "sensitivity": self.sensitivity.to_dict() if self.sensitivity else None,
        }

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            write_text(path, text)
        return text

    def plot(self, path: str | Path) -> Path:
        """The Pareto plot (PNG): objective against metric, every candidate, the front."""
        from slimkit.search.plots import pareto_plot

        return pareto_plot(self, path)

    def write_report(self, out_dir: str | Path) -> Path:
        """``report.md``, ``result.json``, ``pareto.png`` (and ``sensitivity.json`` /
        ``sensitivity.png``) in ``out_dir``; returns the report.md path."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.to_json(out / "result.json")
        self.plot(out / "pareto.png")
        if self.sensitivity is not None:
            self.sensitivity.to_json(out / "sensitivity.json")
            self.sensitivity.plot(out / "sensitivity.png")
        path = out / "report.md"
        write_text(path, _markdown(self))
        return path


def optimize(model: nn.Module, eval_fn: Callable, *, max_drop: float,
             techniques: Sequence[Config], example_inputs, objective: str = "size",
             calibration=None, levels: dict | None = None, groups=None, targets=None,
             ignore=None, metric: str | None = None, relative: bool = False,
             proxy: str = "output_error", sensitivity_eval: bool = False,
             check_fn: Callable | None = None, time_budget_s: float | None = None, train_fn: Callable | None = None,
             checkpoint: str | Path | None = None, seed: int = 0,
             batch_size: int | None = None, threads: int = 2, latency_runs: int = 50,
             max_candidates: int = 12, uniform: bool = True, max_settings: int = 256,
             confirm: int = 3,
             export_options: dict | None = None, progress: bool = True) -> OptimizeResult:
    """Search per-layer settings of ``techniques`` for the smallest (``objective="size"``:
    zipped artifact) or fastest (``"latency"``: ORT p50 at ``batch_size``) model whose metric
    is at most ``max_drop`` below the fp32 artifact's; every candidate is measured on its
    exported ONNX Runtime artifact.

    ``eval_fn(predict)`` returns the metric, higher is better (``predict`` runs the artifact;
    a dict needs ``metric=`` to name its key; for a lower-is-better figure return its
    negative, or a ratio such as ``ppl_fp32 / ppl``). ``relative=True`` reads ``max_drop`` as
    a fraction of the fp32 metric. ``techniques``: configs of registered techniques that
    declare knobs, applied in that order (prune -> cluster -> quantize); ``levels``,
    ``groups``, ``targets``, ``ignore`` as in :func:`slimkit.sensitivity`. ``calibration``
    feeds the proxy and the techniques that calibrate. ``train_fn(model)``, when given,
    fine-tunes every candidate after each technique is applied. ``check_fn`` (the same form
    as ``eval_fn``, on other data: a held-out validation set) is a final gate: the cheapest
    candidate within the budget on ``eval_fn`` that also keeps its ``check_fn`` drop within
    the budget is returned, so a candidate that passed by the luck of a small evaluation set
    is not. ``time_budget_s`` bounds the
    search (it stops measuring new candidates when the next would not fit; a budget too small
    for one candidate is an error); ``checkpoint`` (a JSON path) makes it resumable.

    With ``objective="latency"``, the ``confirm`` fastest candidates within the budget are
    measured again side by side (interleaved rounds) before one is chosen.

    Raises :class:`BudgetError` (a ``SearchError``) when no compressed candidate meets the
    budget, naming the best one reached.

    Example:
        >>> res = sk.optimize(model, lambda p: accuracy(p(x_test), y_test), max_drop=0.005,
        ...                   techniques=[sk.ClusteringConfig(16)], example_inputs=x[:8],
        ...                   calibration=x[:100])
        >>> res.best["zipped_bytes"], res.best["metric"]
    """
    start = time.perf_counter()
    _check_args(model, eval_fn, max_drop, objective, time_budget_s, max_candidates, seed)
    if example_inputs is None:
        raise SearchError("example_inputs is required: candidates are exported to ONNX and "
                          "measured in ONNX Runtime")
    deadline = start + time_budget_s if time_budget_s is not None else None
    space = SearchSpace.build(model, list(techniques), levels=levels, groups=groups,
                              targets=targets, ignore=ignore)
    n_settings = len(space.settings())
    if n_settings > max_settings:
        raise SearchError(f"{n_settings} settings per unit (the product of every technique's "
                          f"levels + off) exceeds max_settings={max_settings}; pass fewer "
                          "levels= or fewer techniques")
    if objective == "latency" and not uniform:
        raise SearchError("objective='latency' needs uniform=True: the uniform candidates "
                          "measure how much each level speeds a layer up")
    sens_eval = eval_fn if sensitivity_eval else None
    print_ = fingerprint({
        "space": space.describe(), "objective": objective, "max_drop": max_drop,
        "relative": relative, "metric": metric, "proxy": proxy, "seed": seed,
        "sensitivity_eval": sensitivity_eval, "uniform": uniform, "batch_size": batch_size,
        "train": train_fn is not None, "model": model_digest(model),
        "check": check_fn is not None, "confirm": confirm if objective == "latency" else 0,
        "max_candidates": max_candidates,
    })
    ck = Checkpoint.open(checkpoint, print_)
    console = Console(stderr=True, quiet=not progress)
    measure_kw = dict(metric=metric, objective=objective, batch_size=batch_size,
                      threads=threads, latency_runs=latency_runs, export_options=export_options)

    # 1. the fp32 artifact
    if ck.baseline is None:
        t0 = time.perf_counter()
        row = measure_artifact(model, example_inputs, eval_fn, **measure_kw)
        row.update(id=0, kind="baseline", label="fp32", plan=None, stages=[])
        ck.put_baseline(row)
        if deadline is not None and time.perf_counter() > deadline:
            raise SearchError(
                f"time_budget_s={time_budget_s:g} is too small for one candidate: measuring "
                f"the fp32 artifact alone took {time.perf_counter() - t0:.1f} s (each "
                "candidate is also built and exported); raise time_budget_s")
    baseline = dict(ck.baseline)
    m0 = baseline["metric"]
    allowed = max_drop * abs(m0) if relative else max_drop
    baseline["cost"] = _cost(baseline, objective)
    _finish_row(baseline, m0, allowed, objective)
    console.print(f"[bold]fp32[/bold]: metric {m0:.4f}, {_fmt_cost(baseline['cost'], objective)}"
                  f" {'zipped KiB' if objective == 'size' else 'ms'}")
    candidates: list[dict] = []
    failed: list[dict] = []
    notes: list[str] = []
    per_candidate = [baseline["seconds"]]

    def measure(plan: dict, kind: str, label: str, estimate=None) -> dict | None:
        key = json.dumps({k: list(v) for k, v in sorted(plan.items())})
        if key in ck.candidates:
            row = dict(ck.candidates[key])
        else:
            if deadline is not None:
                guess = sorted(per_candidate)[len(per_candidate) // 2]
                if time.perf_counter() + guess > deadline:
                    return None
            t0 = time.perf_counter()
            stages = plan_stages(space, plan)
            try:
                cand = build(model, stages, calibration=calibration, train_fn=train_fn,
                             seed=seed)
                row = measure_artifact(cand, example_inputs, eval_fn, **measure_kw)
            except SearchError:
                raise
            except Exception as e:
                # A candidate the techniques or the exporter refuse (e.g. an artifact that
                # fails ONNX Runtime validation) is reported and skipped, not fatal.
                row = {"failed": f"{type(e).__name__}: {str(e)[:400]}"}
            row.update(kind=kind, label=label, plan={k: list(v) for k, v in plan.items()},
                       stages=stages_to_dicts(stages))
            if estimate is not None:
                row["estimated_cost"], row["estimated_error"] = estimate
            row["seconds"] = time.perf_counter() - t0
            per_candidate.append(row["seconds"])
            ck.put_candidate(key, row)
        if row.get("failed"):
            if not any(f["key"] == key for f in failed):
                row.update(key=key, meets=False)
                failed.append(row)
                console.print(f"  --- {kind:<8} failed: {_clip(row['failed'], 90)}")
            return next(f for f in failed if f["key"] == key)
        if any(c["key"] == key for c in candidates):
            return next(c for c in candidates if c["key"] == key)
        row.update(key=key, id=len(candidates) + 1, cost=_cost(row, objective))
        _finish_row(row, m0, allowed, objective)
        candidates.append(row)
        console.print(f"  {row['id']:>3} {kind:<8} metric {row['metric']:.4f} "
                      f"({row['drop']:+.4f}) {_fmt_cost(row['cost'], objective):>9} "
                      f"{'ok ' if row['meets'] else 'no '} {_clip(label, 70)}")
        return row

    # 2. uniform settings
    out_of_time = False
    if uniform:
        for k, st in enumerate(space.techniques):
            for level in range(len(st.levels)):
                plan = space.uniform(k, level)
                if measure(plan, "uniform", f"{st.name}:{st.label(level)} (uniform)") is None:
                    out_of_time = True
                    break
            if out_of_time:
                break
    # 3. sensitivity (combinations of levels per unit)
    sens = None
    if not out_of_time:
        try:
            sens = measure_sensitivity(
                model, space, eval_fn=sens_eval, metric=metric, proxy=proxy,
                calibration=calibration, combinations=True, progress=progress, seed=seed,
                deadline=deadline, on_row=ck.put_sensitivity, done=ck.sensitivity)
        except TimeoutError:
            out_of_time = True
            notes.append("the time budget ran out during the sensitivity pass: only the "
                         "uniform candidates were measured")
    # 4. plans along the estimated front
    if sens is not None:
        options = _options(space, sens, baseline, candidates, model, example_inputs, objective)
        plans = _ranked_plans(options)
        _bisect(plans, measure, space, allowed, m0, max_candidates, notes)
    elif out_of_time and not notes:
        notes.append("the time budget ran out while measuring the uniform candidates")
    late = out_of_time or (deadline is not None and time.perf_counter() > deadline)
    if late and not any("time budget" in n for n in notes):
        notes.append("the time budget ended the search before every planned candidate "
                         "was measured")

    if failed:
        notes.append(f"{len(failed)} candidate(s) failed to build or export and were skipped: "
                     + "; ".join(f"{f['label']}: {f['failed'][:160]}" for f in failed[:3]))
    # 5. the answer
    meeting = [c for c in candidates if c["meets"]]
    if not meeting:
        closest = max(candidates, key=lambda c: (c["metric"], -c["cost"])) if candidates else None
        where = ((f"{len(failed)} candidate(s) failed to build or export (first: "
                  f"{failed[0]['failed'][:200]})" if failed else "no candidate was measured")
                 if closest is None else
                 f"the best reachable was {closest['label']!r}: metric {closest['metric']:.4f}, "
                 f"drop {closest['drop']:+.4f}, {_fmt_cost(closest['cost'], objective)} "
                 f"{'zipped KiB' if objective == 'size' else 'ms'}")
        raise BudgetError(
            f"no compressed candidate keeps the metric within max_drop={max_drop:g} "
            f"(allowed drop {allowed:g} from fp32 {m0:.4f}) among {len(candidates)} measured; "
            f"{where}", closest)
    meeting.sort(key=_rank)
    if objective == "latency" and confirm > 1 and len(meeting) > 1:
        # one latency measurement per candidate is noisy: the fastest few are measured again,
        # interleaved round by round, and ranked by the median of their rounds
        top = meeting[:confirm]
        _confirm_latency(top, ck, model, example_inputs, calibration, train_fn, seed,
                         measure_kw, export_options)
        # The confirmed medians come first: a candidate measured once is not compared with
        # them (on MiniLM under load the medians rose 5-10% above the first measurements,
        # and a once-measured candidate then won and was 7% slower side by side).
        meeting = sorted(top, key=_rank) + meeting[len(top):]
        notes.append(f"the {len(top)} fastest candidates within the budget were measured "
                     "again side by side (median of 5 interleaved rounds) and rank ahead of the "
                     "candidates measured once")
    if check_fn is not None:
        best = _gate(meeting, ck, check_fn, model, example_inputs, calibration, train_fn, seed,
                     measure_kw, max_drop, relative, candidates, objective)
    else:
        best = meeting[0]
    stages = stages_from_dicts(best["stages"])
    best_model = build(model, stages, calibration=calibration, train_fn=train_fn, seed=seed)
    front = pareto_front([baseline, *candidates], cost="cost", metric="metric")
    return OptimizeResult(best_model, stages, best, baseline, candidates,
                          [c for c in front if c["kind"] != "baseline"], sens, objective,
                          max_drop, allowed, time.perf_counter() - start, notes, ck.resumed,
                          failed)


# -- internals -----------------------------------------------------------------------------


def _check_args(model, eval_fn, max_drop, objective, time_budget_s, max_candidates, seed):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not callable(eval_fn):
        raise SearchError(f"eval_fn must be a function eval_fn(predict) -> float, got "
                          f"{type(eval_fn).__name__}")
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) \
            or not math.isfinite(max_drop):
        raise SearchError(f"max_drop must be a finite number (the metric lost at most), got "
                          f"{max_drop!r}")
    if objective not in OBJECTIVES:
        raise SearchError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if time_budget_s is not None and (isinstance(time_budget_s, bool) or
                                      not isinstance(time_budget_s, (int, float))
                                      or time_budget_s <= 0):
        raise SearchError(f"time_budget_s must be a number of seconds > 0 or None, got "
                          f"{time_budget_s!r}")
    if isinstance(max_candidates, bool) or not isinstance(max_candidates, int) \
            or max_candidates < 1:
        raise SearchError(f"max_candidates must be an integer >= 1, got {max_candidates!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SearchError(f"seed must be an integer, got {seed!r}")


def _cost(row: dict, objective: str) -> float:
    if objective == "size":
        return float(row["zipped_bytes"])
    if row.get("latency_ms") is None:
        raise SearchError("latency was not measured (latency_runs=0?); objective='latency' "
                          "needs latency_runs >= 1")
    return float(row["latency_ms"])


def _confirm_latency(top, ck, model, example_inputs, calibration, train_fn, seed, measure_kw,
                     export_options, rounds: int = 5) -> None:
    """Re-measure the latency of ``top`` interleaved; their ``cost`` becomes the median."""
    import tempfile

    from slimkit.export import export_onnx
    from slimkit.metrics import report

    key = "confirm:" + json.dumps(sorted(c["key"] for c in top))
    if key not in ck.candidates:
        with tempfile.TemporaryDirectory(prefix="slimkit-confirm-") as tmp:
            paths = []
            opts = {"compact": True, **(export_options or {})}
            for i, c in enumerate(top):
                built = build(model, stages_from_dicts(c["stages"]), calibration=calibration,
                              train_fn=train_fn, seed=seed)
                folder = Path(tmp) / f"c{i}"      # the same file name: the same zipped size
                folder.mkdir()
                paths.append(export_onnx(built, folder / "model.onnx",
                                         example_inputs=example_inputs, **opts))
            times = [[] for _ in top]
            for _ in range(rounds):
                for i, path in enumerate(paths):
                    rep = report(path, example_inputs, batch_size=measure_kw["batch_size"],
                                 threads=measure_kw["threads"],
                                 latency_runs=measure_kw["latency_runs"],
                                 warmup=latency_warmup(measure_kw["latency_runs"]),
                                 memory=False)
                    times[i].append(rep.latency["p50_ms"])
        ck.put_candidate(key, {"medians": [sorted(t)[len(t) // 2] for t in times]})
    for c, med in zip(top, ck.candidates[key]["medians"]):
        c["first_latency_ms"] = c["latency_ms"]
        c["latency_ms"] = c["cost"] = med
        c["confirmed"] = True


def _gate(meeting, ck, check_fn, model, example_inputs, calibration, train_fn, seed,
          measure_kw, max_drop, relative, candidates, objective) -> dict:
    """The first candidate of ``meeting`` (in the caller's order: cheapest first) that also
    meets the budget on ``check_fn``."""
    def checked(key: str, stages) -> float:
        if key not in ck.candidates:
            built = model if not stages else build(model, stages_from_dicts(stages),
                                                   calibration=calibration,
                                                   train_fn=train_fn, seed=seed)
            row = measure_artifact(built, example_inputs, check_fn, **measure_kw)
            ck.put_candidate(key, row)
        return ck.candidates[key]["metric"]

    base = checked("check:fp32", [])
    allowed = max_drop * abs(base) if relative else max_drop
    for cand in meeting:
        cand["check_metric"] = checked("check:" + cand["key"], cand["stages"])
        cand["check_drop"] = base - cand["check_metric"]
        if cand["check_drop"] <= allowed + 1e-12:
            cand["checked"] = True
            return cand
    closest = min(meeting, key=lambda c: c["check_drop"])
    raise BudgetError(
        f"none of the {len(meeting)} candidates within max_drop={max_drop:g} on eval_fn also "
        f"keeps it on check_fn (fp32 {base:.4f}); the best reachable was {closest['label']!r}: "
        f"check drop {closest['check_drop']:+.4f}, {_fmt_cost(closest['cost'], objective)} "
        f"{'zipped KiB' if objective == 'size' else 'ms'}", closest)


def _finish_row(row: dict, m0: float, allowed: float, objective: str) -> None:
    row["drop"] = m0 - row["metric"]
    # a hair of float tolerance, so a metric equal to the budget's edge meets it
    row["meets"] = row["drop"] <= allowed + 1e-12


def _rank(c: dict):
    return (c["cost"], -c["metric"], c["id"])


def _options(space, sens: SensitivityResult, baseline, candidates, model, example_inputs,
             objective) -> dict[str, list[tuple]]:
    """Per unit: ``(setting, estimated cost, estimated error)`` of every setting."""
    off = tuple([OFF] * len(space.techniques))
    options: dict[str, list[tuple]] = {}
    if objective == "size":
        fp32 = sens.baseline["bytes"]
        for unit in space.units:
            opts = [(off, float(fp32[unit.name]), 0.0)]
            for r in sens.rows:
                if r["unit"] == unit.name and not r.get("failed"):
                    opts.append((tuple(r["setting"]), float(r["bytes"]), float(r["score"])))
            options[unit.name] = opts
        return options
    # latency: a unit's share of the fp32 latency (by multiply-accumulates) times the speed-up
    # each technique's level gave when applied everywhere (the uniform candidates)
    layers = [layer for u in space.units for layer in u.layers]
    macs = layer_macs(model, example_inputs, layers)
    total = sum(macs.values()) or 1.0
    speed = {}
    for c in candidates:
        if c["kind"] == "uniform":
            s = next(iter(c["plan"].values()))
            k = next(i for i, v in enumerate(s) if v != OFF)
            speed[(k, s[k])] = c["cost"] / baseline["cost"]
    for unit in space.units:
        share = baseline["cost"] * sum(macs[n] for n in unit.layers) / total
        opts = [(off, share, 0.0)]
        for r in sens.rows:
            if r["unit"] == unit.name and not r.get("failed"):
                factor = 1.0
                for k, v in enumerate(r["setting"]):
                    if v != OFF:
                        factor *= speed.get((k, v), 1.0)
                opts.append((tuple(r["setting"]), share * factor, float(r["score"])))
        options[unit.name] = opts
    return options


def _ranked_plans(options) -> list[tuple[dict, float, float]]:
    plans = choose_plans(options)
    lookup = {u: {s: (c, e) for s, c, e in opts} for u, opts in options.items()}
    ranked = []
    for plan in plans:
        cost = sum(lookup[u][s][0] for u, s in plan.items())
        err = sum(lookup[u][s][1] for u, s in plan.items())
        ranked.append((plan, cost, err))
    ranked.sort(key=lambda t: (t[1], t[2]))
    return ranked


def _plan_label(space, plan: dict) -> str:
    parts = [f"{u}={space.label(s)}" for u, s in plan.items()]
    return "; ".join(parts)


def _bisect(plans, measure, space, allowed, m0, max_candidates, notes) -> None:
    """The most compressed plan (lowest estimated cost) that meets the budget, by bisection
    over the plans ordered by estimated cost, then its untried neighbours."""
    # plans that only switch everything off are the fp32 model: not a candidate
    off = tuple([OFF] * len(space.techniques))
    plans = [p for p in plans if any(s != off for s in p[0].values())]
    if not plans:
        return
    used = 0

    def run(i):
        nonlocal used
        used += 1
        plan, cost, err = plans[i]
        return measure(plan, "search", _plan_label(space, plan), (cost, err))

    lo, hi = 0, len(plans) - 1
    tried: dict[int, bool] = {}
    while lo <= hi and used < max_candidates:
        mid = (lo + hi) // 2
        row = run(mid)
        if row is None:
            return
        tried[mid] = row["meets"]
        if row["meets"]:
            hi = mid - 1
        else:
            lo = mid + 1
    # neighbours of the boundary: the bisection assumes the metric falls with the estimated
    # cost, which holds only roughly
    passing = [i for i, ok in tried.items() if ok]
    edge = min(passing) if passing else len(plans)
    for i in range(edge - 1, -1, -1):
        if used >= max_candidates:
            break
        if i in tried:
            continue
        row = run(i)
        if row is None:
            return
        tried[i] = row["meets"]
        if not row["meets"] and sum(1 for j in tried if j < edge and not tried[j]) >= 3:
            break


def _fmt_cost(cost: float, objective: str) -> str:
    return f"{cost / 1024:.1f}" if objective == "size" else f"{cost:.3f}"


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _markdown(res: OptimizeResult) -> str:
    unit = "zipped KiB" if res.objective == "size" else "latency ms (p50)"
    b, base = res.best, res.baseline
    lines = [
        "# sk.optimize report", "",
        f"Objective: **{res.objective}**; budget: metric at most {res.allowed_drop:g} below "
        f"the fp32 artifact ({base['metric']:.4f}). {len(res.candidates)} candidates measured "
        f"on the ONNX Runtime artifact in {res.seconds:.0f} s"
        + (" (resumed from a checkpoint)." if res.resumed else "."), "",
        "## Best", "",
        f"- setting: {b['label']}",
        f"- metric {b['metric']:.4f} (drop {b['drop']:+.4f}); {unit}: "
        f"{_fmt_cost(b['cost'], res.objective)} vs fp32 {_fmt_cost(base['cost'], res.objective)}"
        f" ({base['cost'] / b['cost']:.2f}x)",
    ]
    u = res.best_uniform()
    if u is not None:
        gain = 1 - b["cost"] / u["cost"]
        lines.append(f"- best uniform setting meeting the budget: {u['label']}, "
                     f"{_fmt_cost(u['cost'], res.objective)} ({gain:+.1%} from it)")
    lines += ["", "Stages (ordinary configs; `sk.apply(model, config, targets=targets)`):", ""]
    for s in b["stages"]:
        lines.append(f"- `{s['technique']}` on {len(s['targets'])} layer(s); overrides "
                     f"`{json.dumps(s['config']['_data'].get('overrides', {}))}`")
    lines += ["", "## Candidates", "", f"| # | kind | setting | metric | drop | {unit} | front |",
              "|---|---|---|---|---|---|---|"]
    front = {c["id"] for c in res.front}
    for c in sorted(res.candidates, key=_rank):
        mark = "best" if c["id"] == b["id"] else ("yes" if c["id"] in front else "")
        lines.append(f"| {c['id']} | {c['kind']} | {_clip(c['label'], 90)} | "
                     f"{c['metric']:.4f} | {c['drop']:+.4f} | "
                     f"{_fmt_cost(c['cost'], res.objective)} | {mark} |")
    if res.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in res.notes]
    lines += ["", "![Pareto front](pareto.png)", ""]
    if res.sensitivity is not None:
        lines += ["![Sensitivity](sensitivity.png)", ""]
    return "\n".join(lines)

