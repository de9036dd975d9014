"""slimkit optimize <recipe.yaml>: a search recipe run end to end, and a bad one refused."""

from __future__ import annotations

import json

import yaml
from click.testing import CliRunner

from slimkit.cli import main
from slimkit.recipes.recipe import parse_recipe
from slimkit.search.recipe import examples, load_optimize_recipe

RECIPE = {
    "name": "tiny",
    "model": {"factory": "tests.search.helpers:make_model"},
    "data": {"train_loader": "tests.search.helpers:recipe_loader",
             "eval": "tests.search.helpers:recipe_eval",
             "example_inputs": "tests.search.helpers:recipe_example_inputs"},
    "export": {"dynamo": False},
    "search": {
        "objective": "size", "max_drop": 0.1, "max_candidates": 3,
        "levels": {"weight-clustering": {"clusters": [64, 16]}},
        "techniques": [{"technique": "weight-clustering", "config": {"clusters": 16}}],
    },
}


def test_optimize_command_writes_the_report(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["optimize", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("report.md", "result.json", "pareto.png", "model.onnx", "stages.yaml",
                 "checkpoint.json"):
        assert (out / name).stat().st_size > 0
    best = json.loads((out / "result.json").read_text())["best"]
    assert best["meets"] and best["drop"] <= 0.1
    # the result as recipe stages is a valid `slimkit run` recipe
    stages = yaml.safe_load((out / "stages.yaml").read_text())["stages"]
    recipe = parse_recipe({**{k: v for k, v in RECIPE.items() if k != "search"},
                           "stages": stages})
    assert [s.technique for s in recipe.stages] == ["weight-clustering"]
    # a second run in the same folder resumes from the checkpoint: same best
    again = CliRunner().invoke(main, ["optimize", str(path), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "result.json").read_text())["best"]["label"] == best["label"]


def test_bad_recipe_lists_every_problem(tmp_path):
    bad = {"task": "digits", "search": {"max_drop": "0.5", "speed": 1, "techniques": [
        {"technique": "prunning"}, {"technique": "weight-clustering",
                                    "config": {"clusters": 1}}]}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = CliRunner().invoke(main, ["optimize", str(path)])
    assert result.exit_code == 2
    for text in ("search.max_drop", "search.speed", "search.techniques[0].technique",
                 "search.techniques[1].config.clusters"):
        assert text in result.output


def test_shipped_recipes_validate():
    from slimkit.search.recipe import example_path

    assert "optimize-digits" in examples()
    for name in examples():
        recipe, options = load_optimize_recipe(example_path(name))
        assert options["max_drop"] > 0 and recipe.stages
