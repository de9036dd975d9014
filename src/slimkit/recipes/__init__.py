"""YAML recipes: a model, its data and stages of techniques, run by ``slimkit run``.

See ``docs/recipes.md`` for the format. The example recipes (the digits settings of
../shared/BENCHMARKS.md) ship in this package: :func:`example_path` finds them.

Example:
    >>> from slimkit.recipes import example_path, load_recipe, run_recipe
    >>> recipe = load_recipe(example_path("pcqat"))
    >>> result = run_recipe(recipe, "runs/pcqat", max_steps=20)   # a short run
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from slimkit.recipes.factories import resolve_factory
from slimkit.recipes.recipe import (
    DataSpec,
    ExportSpec,
    ModelSpec,
    Recipe,
    RecipeError,
    RecipeStage,
    ReportSpec,
    TrainSpec,
    load_recipe,
    parse_recipe,
)


def shipped_yaml(package: str, folder: str) -> dict[str, Path]:
    """``{name: path}`` of the ``.yaml`` files shipped in ``package``'s ``folder``."""
    root = resources.files(package) / folder
    found = {p.name[:-5]: Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml")}
    return dict(sorted(found.items()))


def shipped_path(package: str, folder: str, name: str, what: str) -> Path:
    """The shipped ``name`` (see :func:`shipped_yaml`); ``what`` names it in the error."""
    files = shipped_yaml(package, folder)
    if name not in files:
        raise ValueError(f"unknown {what} {name!r}; shipped: {', '.join(files)}")
    return files[name]


def examples() -> list[str]:
    """Names of the example recipes shipped with slimkit."""
    return list(shipped_yaml("slimkit.recipes", "examples"))


def example_path(name: str) -> Path:
    """The path of the shipped example recipe ``name`` (e.g. ``"pcqat"``)."""
    return shipped_path("slimkit.recipes", "examples", name, "example recipe")


def run_recipe(recipe, out_dir, **kwargs):
    """Run a recipe (see :func:`slimkit.recipes.runner.run_recipe`)."""
    # Imported here: the runner pulls in torch training code that validation does not need.
    from slimkit.recipes.runner import run_recipe as run

    return run(recipe, out_dir, **kwargs)


__all__ = [
    "DataSpec",
    "ExportSpec",
    "ModelSpec",
    "Recipe",
    "RecipeError",
    "RecipeStage",
    "ReportSpec",
    "TrainSpec",
    "example_path",
    "examples",
    "load_recipe",
    "parse_recipe",
    "resolve_factory",
    "run_recipe",
]
