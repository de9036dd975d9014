"""``slimkit optimize <recipe.yaml>``: a recipe whose ``search:`` section runs ``sk.optimize``.

The file is a ``slimkit run`` recipe (``task: digits`` or ``model`` / ``data`` factories,
``seed``, ``baseline``) whose stages are replaced by one ``search`` section; its
``techniques`` are written as recipe stages (``technique`` + ``config``) and validated by
the same code, so a contributed technique with knobs works here too::

    task: digits
    search:
      objective: size            # or latency
      max_drop: 0.005            # metric lost at most (relative: true -> a fraction)
      time_budget_s: 300
      techniques:
        - {technique: magnitude-pruning, config: {schedule: 0.5}}
        - {technique: weight-clustering, config: {clusters: 16, preserve_sparsity: true}}
        - {technique: quantization, config: {per_channel: false}}

``export: {dynamo: false}`` measures candidates with the TorchScript exporter (much faster
on small models). Outputs (in ``--out``): ``report.md``, ``result.json``, ``pareto.png``,
``sensitivity.json`` / ``.png``, ``model.onnx`` (the best candidate), ``checkpoint.json``
(a rerun in the same folder resumes) and ``stages.yaml`` (the result as recipe stages).

Example:
    >>> result = run_optimize_recipe("optimize-digits.yaml", "runs/optimize")
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console

from slimkit.recipes import shipped_path, shipped_yaml
from slimkit.recipes.recipe import RecipeError, parse_recipe
from slimkit.recipes.tasks import build_task, load_weights

SEARCH_FIELDS = {
    "objective": str, "max_drop": (int, float), "relative": bool, "metric": str,
    "time_budget_s": (int, float), "max_candidates": int, "seed": int, "groups": (str, dict),
    "levels": dict, "batch_size": int, "threads": int, "latency_runs": int,
    "calibration_batches": int, "uniform": bool, "sensitivity_eval": bool,
}


def examples() -> list[str]:
    """Names of the optimize recipes shipped with slimkit."""
    return list(shipped_yaml("slimkit.search", "recipes"))


def example_path(name: str) -> Path:
    """The path of the shipped optimize recipe ``name``."""
    return shipped_path("slimkit.search", "recipes", name, "optimize recipe")


def load_optimize_recipe(path: str | Path) -> tuple[Any, dict]:
    """Validate the file: ``(Recipe with the techniques as stages, search options)``;
    every problem in one :class:`RecipeError`."""
    path = Path(path)
    source = str(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RecipeError(source, [("", "no such file")]) from None
    except yaml.YAMLError as e:
        raise RecipeError(source, [("", f"not valid YAML: {e}")]) from None
    if not isinstance(data, dict):
        raise RecipeError(source, [("", "a recipe is a mapping of fields")])
    data = copy.deepcopy(data)
    problems: list[tuple[str, str]] = []
    search = data.pop("search", None)
    if "stages" in data:
        problems.append(("stages", "an optimize recipe has a search section instead of "
                         "stages (the search picks the per-layer settings)"))
        data.pop("stages")
    if not isinstance(search, dict):
        problems.append(("search", "a mapping with max_drop and techniques is required"))
        search = {}
    techniques = search.pop("techniques", None)
    if not isinstance(techniques, list) or not techniques:
        problems.append(("search.techniques", "a list of {technique, config} is required"))
        techniques = []
    stages = []
    for i, t in enumerate(techniques):
        if not isinstance(t, dict) or "technique" not in t:
            problems.append((f"search.techniques[{i}]", "a mapping with technique: NAME and "
                             "an optional config"))
            continue
        unknown = sorted(set(t) - {"technique", "config"})
        if unknown:
            problems.append((f"search.techniques[{i}]", f"unknown field(s) {unknown}; "
                             "accepted: technique, config"))
        stages.append({"name": f"t{i}", "technique": t["technique"],
                       "config": t.get("config") or {}, "calibration_batches": 4})
    options = {}
    for key, value in search.items():
        if key not in SEARCH_FIELDS:
            problems.append((f"search.{key}", "unknown field; accepted: techniques, "
                             + ", ".join(sorted(SEARCH_FIELDS))))
        elif value is not None and (isinstance(value, bool) and SEARCH_FIELDS[key] is not bool
                                    or not isinstance(value, SEARCH_FIELDS[key])):
            problems.append((f"search.{key}", f"wrong type {type(value).__name__}"))
        else:
            options[key] = value
    if "max_drop" not in options:
        problems.append(("search.max_drop", "required: the metric lost at most"))
    if not stages:
        raise RecipeError(source, problems)
    data["stages"] = stages
    try:
        recipe = parse_recipe(data, source=source, default_name=path.stem)
    except RecipeError as e:
        problems += [(loc.replace("stages[", "search.techniques["), msg)
                     for loc, msg in e.problems]
        recipe = None
    if problems:
        raise RecipeError(source, problems)
    return recipe, options


def run_optimize_recipe(path: str | Path, out: str | Path | None = None, *,
                        console: Console | None = None, progress: bool = True):
    """Train (or load) the recipe's baseline, run ``sk.optimize``, write the outputs."""
    from slimkit.export import export_onnx
    from slimkit.search.optimizer import optimize

    console = console or Console()
    recipe, options = load_optimize_recipe(path)
    folder = Path(out) if out is not None else Path("runs") / recipe.name
    folder.mkdir(parents=True, exist_ok=True)
    task = build_task(recipe)
    torch.manual_seed(recipe.seed)
    model = task.make_model()
    if task.checkpoint:
        load_weights(model, task.checkpoint)
    if recipe.baseline is not None:
        _train(model, task, recipe.baseline, folder, recipe.seed, console)
    configs = [s.build_config(task.steps_per_epoch()) for s in recipe.stages]
    n_cal = int(options.pop("calibration_batches", 4))
    calibration = [b[0] if isinstance(b, (tuple, list)) else b
                   for _, b in zip(range(n_cal), task.train_loader)]
    options.setdefault("seed", recipe.seed)
    dynamo = recipe.export.dynamo
    result = optimize(model.eval(), task.eval_fn, techniques=configs,
                      example_inputs=task.example_inputs, calibration=calibration,
                      checkpoint=folder / "checkpoint.json", progress=progress,
                      export_options={"dynamo": dynamo}, **options)
    result.write_report(folder)
    export_onnx(result.model, folder / "model.onnx", example_inputs=task.example_inputs,
                compact=True, dynamo=dynamo)
    stages_yaml = [{"name": f"{s['technique']}", "technique": s["technique"],
                    "targets": s["targets"], "config": _plain(s["config"])}
                   for s in result.best["stages"]]
    (folder / "stages.yaml").write_text(yaml.safe_dump({"stages": stages_yaml},
                                                       sort_keys=False))
    console.print(result.table())
    console.print(f"best: {result.best['label']}")
    console.print(f"wrote {folder / 'report.md'}, {folder / 'model.onnx'}")
    return result


def _train(model, task, spec, folder: Path, seed: int, console: Console) -> None:
    """The baseline: Adam at ``spec.lr`` for ``spec.epochs`` (or steps); cached in the
    output folder so a rerun (a resumed search) starts from the same weights."""
    cached = folder / "baseline.pt"
    if cached.exists():
        model.load_state_dict(torch.load(cached, weights_only=True))
        return
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    per_epoch = task.steps_per_epoch() or 1
    total = spec.steps if spec.steps else (spec.epochs or 0) * per_epoch
    step = 0
    model.train()
    console.print(f"baseline: {total} steps, Adam lr {spec.lr:g}")
    while step < total:
        for batch in task.train_loader:
            x, y = batch
            loss = task.loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step >= total:
                break
    model.eval()
    torch.save(model.state_dict(), cached)


def _plain(config_dict: dict) -> dict:
    """A config's ``to_dict`` as recipe YAML fields (nested configs as ``{type: ...}``)."""
    def conv(v):
        if isinstance(v, dict) and "_type" in v and "_data" in v:
            return {"type": v["_type"], **{k: conv(x) for k, x in v["_data"].items()}}
        if isinstance(v, dict) and set(v) == {"_tuple"}:
            return [conv(x) for x in v["_tuple"]]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, list):
            return [conv(x) for x in v]
        return v
    return {k: conv(v) for k, v in config_dict["_data"].items()}
