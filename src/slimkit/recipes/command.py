"""``slimkit run``: what the command does, kept here so that ``slimkit.cli`` stays thin.

Example:
    >>> run_command(None, example="pcqat", out="runs/pcqat", max_steps=20)
    >>> run_command("my-recipe.yaml", check=True)          # validate and print the plan only
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from slimkit.recipes import example_path, examples, load_recipe, run_recipe
from slimkit.recipes.recipe import Recipe, RecipeError
from slimkit.recipes.runner import preflight
from slimkit.recipes.tasks import build_task


def run_command(recipe_path: str | None, example: str | None = None, out: str | None = None,
                max_steps: int | None = None, check: bool = False,
                console: Console | None = None):
    """Load, validate and run (or with ``check``, only print) a recipe.

    Raises :class:`RecipeError` for a bad recipe or bad options (the CLI's exit code 2).
    """
    console = console or Console()
    if (recipe_path is None) == (example is None):
        raise RecipeError("slimkit run", [("", "give a recipe file or --example NAME (one of "
                                           f"{', '.join(examples())}), not both or neither")])
    if example is not None:
        try:
            recipe_path = example_path(example)
        except ValueError as e:
            raise RecipeError("slimkit run", [("--example", str(e))]) from None
    recipe = load_recipe(recipe_path)
    console.print(plan_table(recipe))
    if check:
        # Against the model too: patterns that match no layer, stages the model refuses.
        preflight(recipe, build_task(recipe), max_steps)
        console.print(f"{recipe.source}: valid")
        return None
    folder = Path(out) if out is not None else Path("runs") / recipe.name
    return run_recipe(recipe, folder, max_steps=max_steps, console=console)


def plan_table(recipe: Recipe) -> Table:
    """The phases a recipe will run, one row each."""
    table = Table(title=f"recipe {recipe.name} ({recipe.source})", title_justify="left")
    for col in ("phase", "stage", "technique", "training", "config"):
        table.add_column(col, overflow="fold")
    if recipe.baseline is not None:
        b = recipe.baseline
        length = f"{b.epochs} epochs" if b.epochs else f"{b.steps or 0} steps"
        training = f"{length}, Adam lr {b.lr:g}"
    else:
        training = "none"
    start = recipe.task or recipe.model.factory
    if recipe.model.checkpoint:
        start += f" from {recipe.model.checkpoint}"
    table.add_row("0", "baseline", "-", training, start)
    for i, s in enumerate(recipe.stages, start=1):
        if s.trains:
            length = f"{s.epochs} epochs" if s.epochs else f"{s.steps} steps"
            training = f"{length}, Adam lr {s.lr:g}"
        else:
            training = "none"
        if s.calibration_batches:
            training += f"; calibration {s.calibration_batches} batches"
        fields = ", ".join(f"{k}={_value(v)}" for k, v in s.config.items()) or "defaults"
        table.add_row(str(i), s.name, s.technique, training, fields)
    return table


def _value(v) -> str:
    # A nested config {type: X, a: 1} reads as X(a=1), as it does in Python.
    if isinstance(v, dict) and "type" in v:
        inner = ", ".join(f"{k}={_value(x)}" for k, x in v.items() if k != "type")
        return f"{v['type']}({inner})"
    return str(v)
