"""The recipe runner: stages in order, a checkpoint after each, resume, artifact and report.

A run is a list of phases: phase 0 is the baseline (trained, loaded from ``model.checkpoint``,
or both), phase ``i`` is ``stages[i-1]``. Each phase

1. seeds torch, numpy and ``random`` from ``(seed, phase)``, so its data order and any random
   init repeat exactly whether the run got here directly or resumed from a checkpoint;
2. applies the technique (``sk.apply`` with the stage's config, ``targets``, ``ignore``),
   calibrates on the first ``calibration_batches`` training batches when asked, and
   fine-tunes with Adam and the task's loss, stepping ``sk.Scheduler`` after every optimizer
   step;
3. measures the model: exported to ONNX and evaluated in ONNX Runtime (``evaluate:
   artifact``, the default) or stripped and evaluated in torch (``evaluate: stripped``);
4. writes ``checkpoints/NN-name.pt`` with ``sk.save`` (the prepared model) and the runner
   state (phase index, RNG state, the rows measured so far, the recipe's fingerprint).

Started again with the same ``out_dir``, the runner loads the last checkpoint and goes on
from the next phase; the artifact is the same as an uninterrupted run's. At the end it
writes ``model.onnx``, ``report.json``, ``report.md`` and PNG plots (see
:mod:`slimkit.recipes.outputs`).

Example:
    >>> result = run_recipe(load_recipe("pcqat.yaml"), "runs/pcqat")
    >>> result.artifact, result.report["final"]["metrics"]["accuracy"]
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
import warnings
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

import slimkit as sk
from slimkit.core.io import atomic_path
from slimkit.core.selection import matches
from slimkit.recipes.outputs import write_outputs
from slimkit.recipes.recipe import Recipe, RecipeError, RecipeStage
from slimkit.recipes.tasks import Task, build_task, load_weights

STATE_FORMAT = "slimkit.recipe-run"


@dataclass
class RunResult:
    """What a run produced: the folder, the artifact, the report dict and where it resumed."""

    out_dir: Path
    artifact: Path
    report: dict
    resumed_from: int | None


@dataclass
class Phase:
    index: int
    name: str
    stage: RecipeStage | None  # None: the baseline

    @property
    def checkpoint_name(self) -> str:
        return f"{self.index:02d}-{self.name}"


def run_recipe(recipe: Recipe, out_dir: str | Path, *, max_steps: int | None = None,
               console: Console | None = None, progress: bool = True) -> RunResult:
    """Run ``recipe`` into ``out_dir`` (resuming there if it holds checkpoints of this run).

    ``max_steps`` caps the optimizer steps of every training phase (a short run for tests
    and trials); config values written in epochs ("7 epochs") shrink by the same factor, so
    schedules still finish inside the shortened phase. It is part of the run's identity: a
    folder holding a full run does not resume as a short one.
    """
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps must be None or an integer >= 1, got {max_steps!r}")
    console = console or Console()
    out = Path(out_dir)
    for folder in (out, out / "checkpoints", out / "stages"):
        folder.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(recipe, max_steps)
    phases = [Phase(0, "baseline", None)] + [
        Phase(i + 1, s.name, s) for i, s in enumerate(recipe.stages)
    ]
    done, state = _last_checkpoint(out, phases, fingerprint)
    with atomic_path(out / "recipe.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(recipe.raw, sort_keys=False))
    task = build_task(recipe)
    if done < len(phases):
        preflight(recipe, task, max_steps)   # before the first phase trains, not hours in

    history: list[dict] = []
    model = None
    resumed_from = None
    if done:
        last = phases[done - 1]
        model = sk.load(out / "checkpoints" / f"{last.checkpoint_name}.pt",
                        model=task.make_model())
        torch.set_rng_state(state["rng"])
        history = list(state["history"])
        resumed_from = done
        console.print(f"resuming [bold]{recipe.name}[/] after phase {done - 1} "
                      f"({last.name}): {len(phases) - done} of {len(phases)} phases left")

    for phase in phases[done:]:
        _seed(recipe.seed, phase.index)
        start = time.perf_counter()
        if phase.stage is None:
            model, steps = _baseline(recipe, task, max_steps, console, progress)
            config = None
        else:
            teacher = _teacher(out, phases[0], task) if phase.stage.distill is not None \
                else None
            steps, config = _stage(model, phase, task, len(phases), max_steps, console, progress,
                                   recipe.source, teacher=teacher)
        seconds = time.perf_counter() - start
        row = _measure(model, phase, recipe, task, out)
        row.update(steps=steps, seconds=seconds, config=config)
        history.append(row)
        _announce(console, phase, len(phases), row)
        extra = {"format": STATE_FORMAT, "fingerprint": fingerprint, "phase": phase.index,
                 "rng": torch.get_rng_state(), "history": history}
        sk.save(model, out / "checkpoints" / f"{phase.checkpoint_name}.pt", extra=extra)

    artifact = _final_artifact(model, recipe, task, out, phases[-1])
    report = write_outputs(out, recipe, task, history, artifact, max_steps=max_steps,
                           resumed_from=resumed_from)
    console.print(f"artifact [bold]{artifact}[/]; report.json, report.md and plots in {out}")
    return RunResult(out, artifact, report, resumed_from)


def preflight(recipe: Recipe, task: Task, max_steps: int | None = None) -> None:
    """Check the recipe against its model before anything trains.

    Runs the model on the example inputs, then applies every stage, in order, to a copy of
    the untrained model (no training, no calibration), so a target or ignore pattern that
    matches no layer, a layer a technique refuses, or an order the techniques refuse fails now
    with the stage's location (:class:`RecipeError`), not when that stage is reached.
    """
    model = task.make_model()
    try:
        with torch.no_grad():
            _call(model.eval(), task.example_inputs)
    except Exception as e:
        raise RecipeError(recipe.source, [("data.example_inputs", f"the model cannot run on "
                                           f"them: {type(e).__name__}: {e}")]) from e
    for i, stage in enumerate(recipe.stages):
        loc = f"stages[{i}]"
        _, per_epoch = _plan(stage.epochs, stage.steps, task, max_steps, loc)
        try:
            config = stage.build_config(per_epoch)
        except RecipeError as e:
            raise RecipeError(recipe.source,
                              [(f"{loc}.{where}", msg) for where, msg in e.problems]) from None
        for pattern in stage.ignore or []:
            # sk.apply only warns about these; in a recipe a mistyped ignore would silently
            # compress the layer it meant to keep.
            if not any(matches(n, m, pattern) for n, m in model.named_modules() if n):
                raise RecipeError(recipe.source, [(
                    f"{loc}.ignore", f"ignore entry {pattern!r} matches no module in "
                    f"{type(model).__name__}")])
        try:
            with warnings.catch_warnings():
                # the real run warns where it matters; the rehearsal on an untrained copy
                # would only repeat it
                warnings.simplefilter("ignore")
                sk.apply(model, config, targets=stage.targets, ignore=stage.ignore,
                         example_inputs=task.example_inputs)
        except (ValueError, TypeError) as e:
            raise RecipeError(recipe.source, [(loc, str(e))]) from e


# ---- phases -------------------------------------------------------------------------------

def _baseline(recipe: Recipe, task: Task, max_steps, console, progress) -> tuple[nn.Module, int]:
    """Phase 0: the model from its factory, its starting checkpoint, then baseline training."""
    model = task.make_model()
    if task.checkpoint is not None:
        load_weights(model, task.checkpoint)
    spec = recipe.baseline
    total = 0
    if spec is not None and (spec.epochs or spec.steps):
        total, _ = _plan(spec.epochs, spec.steps, task, max_steps, "baseline")
        _train(model, task, total, spec.lr, f"phase 0/{len(recipe.stages)} baseline",
               console, progress)
    model.eval()
    return model, total


def _teacher(out: Path, baseline: Phase, task: Task) -> nn.Module:
    """The distillation teacher: the baseline model, as its checkpoint saved it (so a resumed
    run distills from the same model)."""
    return sk.load(out / "checkpoints" / f"{baseline.checkpoint_name}.pt",
                   model=task.make_model()).eval()


def _stage(model: nn.Module, phase: Phase, task: Task, n_phases: int, max_steps, console,
           progress, source: str, teacher: nn.Module | None = None) -> tuple[int, dict]:
    stage = phase.stage
    loc = f"stages[{phase.index - 1}]"
    total, per_epoch = _plan(stage.epochs, stage.steps, task, max_steps, loc)
    try:
        config = stage.build_config(per_epoch)
    except RecipeError as e:
        raise RecipeError(source, [(f"{loc}.{where}", msg) for where, msg in e.problems]) \
            from None
    try:
        sk.apply(model, config, targets=stage.targets, ignore=stage.ignore,
                 example_inputs=task.example_inputs)
        if stage.calibration_batches:
            batches = list(islice(iter(task.train_loader), stage.calibration_batches))
            sk.calibrate(model, batches, progress=False)
    except ValueError as e:
        # Problems only the model can reveal (a selection that matches nothing, a layer the
        # technique refuses) are still the recipe's: report them with the stage's location.
        raise RecipeError(source, [(loc, str(e))]) from e
    if total:
        distill = None
        if teacher is not None:
            from slimkit.distill import Distillation, DistillationConfig

            distill = Distillation(teacher, DistillationConfig(**stage.distill), student=model)
        _train(model, task, total, stage.lr,
               f"phase {phase.index}/{n_phases - 1} {stage.name} ({stage.technique})",
               console, progress, distill=distill)
    model.eval()
    return total, config.to_dict()


def _plan(epochs, steps, task: Task, max_steps, loc: str) -> tuple[int, float | None]:
    """(optimizer steps to run, steps per epoch to convert "N epochs" config values with)."""
    per_epoch = task.steps_per_epoch()
    if epochs and per_epoch is None:
        raise RecipeError(loc, [(f"{loc}.epochs", "the training loader has no length: give "
                                 "steps instead of epochs")])
    full = steps if steps else (epochs or 0) * (per_epoch or 0)
    total = min(full, max_steps) if max_steps else full
    if per_epoch is None:
        return total, None  # "N epochs" in a config is then an error (no epoch to count)
    scale = total / full if full else 1.0
    return total, per_epoch * scale


def _train(model: nn.Module, task: Task, total: int, lr: float, description: str,
           console: Console, progress: bool, distill=None) -> None:
    """Adam on the task's loss for ``total`` steps, stepping sk.Scheduler after each one."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    try:
        scheduler = sk.Scheduler(model)
    except ValueError:  # nothing scheduled (e.g. the baseline, or post-training techniques)
        scheduler = None
    model.train()
    done = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=not progress) as bar:
        job = bar.add_task(description, total=total, loss=float("nan"))
        while done < total:
            for batch in task.train_loader:
                inputs, targets = _split(batch)
                output = _call(model, inputs)
                loss = task.loss_fn(output, targets)
                if distill is not None:
                    loss = distill(inputs, output, loss)
                if not torch.isfinite(loss):
                    raise RuntimeError(f"{description}: the loss is {loss.item()} at step "
                                       f"{done}; lower lr or check the data")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if scheduler is not None:
                    scheduler.step()
                done += 1
                bar.update(job, advance=1, loss=loss.item())
                if done >= total:
                    break
            else:
                if done == 0:
                    raise RuntimeError(f"{description}: the training loader yielded no batch")
    model.eval()


def _split(batch):
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError("each training batch must be an (inputs, targets) pair, got "
                    f"{type(batch).__name__}")


def _call(model: nn.Module, inputs):
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


# ---- measuring, checkpoints ---------------------------------------------------------------

def _measure(model: nn.Module, phase: Phase, recipe: Recipe, task: Task, out: Path) -> dict:
    """Accuracy, sizes and per-layer statistics of the model after a phase."""
    if recipe.evaluate == "artifact":
        path = out / "stages" / f"{phase.checkpoint_name}.onnx"
        sk.export_onnx(model, path, example_inputs=task.example_inputs,
                       compact=recipe.export.compact, dynamo=recipe.export.dynamo)
        rep = sk.report(path, task.example_inputs, eval_fn=task.eval_fn, latency_runs=0,
                        memory=False, name=phase.name)
        evaluated_on = "ONNX Runtime artifact"
        artifact = str(path.relative_to(out))
    else:
        rep = sk.report(model, eval_fn=task.eval_fn, name=phase.name)
        evaluated_on = "stripped torch model"
        artifact = None
    return {
        "phase": phase.index,
        "name": phase.name,
        "technique": phase.stage.technique if phase.stage else None,
        "evaluated_on": evaluated_on,
        "artifact": artifact,
        "metrics": dict(rep.metrics),
        "parameters": rep.parameters,
        "nonzero": rep.nonzero,
        "sparsity": rep.sparsity,
        "unique_values": rep.unique_values,
        "raw_bytes": rep.raw_bytes,
        "zipped_bytes": rep.zipped_bytes,
        "entropy_bound_bytes": rep.entropy_bound_bytes,
        "layers": [{"name": s.name, "params": s.params, "sparsity": s.sparsity,
                    "unique": s.unique} for s in rep.layers],
    }


def _announce(console: Console, phase: Phase, n_phases: int, row: dict) -> None:
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in row["metrics"].items())
    console.print(
        f"phase {phase.index}/{n_phases - 1} [bold]{phase.name}[/]: {row['steps']} steps in "
        f"{row['seconds']:.1f} s; {metrics}; sparsity {row['sparsity']:.3f}, "
        f"{row['unique_values']:,} unique values, zipped {row['zipped_bytes']:,} B "
        f"({row['evaluated_on']})"
    )


def _final_artifact(model: nn.Module, recipe: Recipe, task: Task, out: Path,
                    last: Phase) -> Path:
    path = out / "model.onnx"
    stage_file = out / "stages" / f"{last.checkpoint_name}.onnx"
    if recipe.evaluate == "artifact" and stage_file.exists():
        # The last phase's file is the artifact already measured: copy it, do not re-export.
        with atomic_path(path) as tmp:
            shutil.copyfile(stage_file, tmp)
        return path
    return sk.export_onnx(model, path, example_inputs=task.example_inputs,
                          compact=recipe.export.compact, dynamo=recipe.export.dynamo)


def _fingerprint(recipe: Recipe, max_steps) -> str:
    text = json.dumps({"recipe": recipe.raw, "max_steps": max_steps}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _last_checkpoint(out: Path, phases: list[Phase], fingerprint: str) -> tuple[int, dict]:
    """(number of completed phases, runner state of the last one) found in ``out``."""
    folder = out / "checkpoints"
    for phase in reversed(phases):
        path = folder / f"{phase.checkpoint_name}.pt"
        if not path.exists():
            continue
        payload = torch.load(path, map_location="cpu", weights_only=True)
        state = payload.get("extra", {}) if isinstance(payload, dict) else {}
        if state.get("format") != STATE_FORMAT or state.get("phase") != phase.index:
            raise RecipeError(str(out), [("--out", f"{path} is not a checkpoint of slimkit run")])
        if state.get("fingerprint") != fingerprint:
            raise RecipeError(str(out), [(
                "--out",
                f"{out} holds checkpoints of a different recipe or --max-steps "
                f"(fingerprint {state.get('fingerprint')}, this run {fingerprint}); "
                "use another --out or remove that folder",
            )])
        return phase.index + 1, state
    leftovers = sorted(p.name for p in folder.glob("*.pt"))
    if leftovers:
        raise RecipeError(str(out), [("--out", f"{folder} holds checkpoints that match no "
                                      f"phase of this recipe ({', '.join(leftovers)}); use "
                                      "another --out or remove that folder")])
    return 0, {}


def _seed(seed: int, phase: int) -> None:
    value = seed * 10_007 + phase
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)
