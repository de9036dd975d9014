"""Recipe validation: every problem reported at once, with its location, before anything runs."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import yaml
from click.testing import CliRunner

import slimkit as sk
from slimkit.cli import main
from slimkit.core import registry
from slimkit.recipes import RecipeError, example_path, examples, load_recipe, parse_recipe

DIGITS_PRUNE = {"technique": "magnitude-pruning", "epochs": 1, "config": {"schedule": 0.5}}


def problems(data) -> dict[str, str]:
    with pytest.raises(RecipeError) as info:
        parse_recipe(data, source="test.yaml")
    return dict(info.value.problems)


def test_every_shipped_example_is_valid():
    assert examples() == ["cluster-16", "pcqat", "prune-80", "qat-int8"]
    for name in examples():
        recipe = load_recipe(example_path(name))
        assert recipe.task == "digits" and recipe.baseline.epochs == 20
    pcqat = load_recipe(example_path("pcqat"))
    assert [s.technique for s in pcqat.stages] == ["magnitude-pruning", "weight-clustering", "qat"]
    assert [s.epochs for s in pcqat.stages] == [10, 5, 5]


def test_several_problems_are_reported_at_once_with_their_locations():
    found = problems({
        "task": "digits",
        "colour": "red",
        "stages": [
            {"technique": "magnitude-pruning", "config": {
                "schedule": {"type": "PolynomialDecay", "final_sparsity": 1.5, "bogus": 3},
                "scope": "planet"}},
            {"technique": "weight-clustering", "epochs": -1,
             "config": {"clusters": 1, "init": "nope", "colour": "red"}},
            {"technique": "prunning"},
            {"technique": "quantization"},
        ],
    })
    assert set(found) == {
        "colour",
        "stages[0].config.schedule.final_sparsity",
        "stages[0].config.schedule.bogus",
        "stages[0].config.scope",
        "stages[1].epochs",
        "stages[1].config.clusters",
        "stages[1].config.init",
        "stages[1].config.colour",
        "stages[2].technique",
        "stages[3].calibration_batches",
    }
    # Bad values are judged by the config class itself, with its own message.
    assert "(ClusteringConfig.clusters)" in found["stages[1].config.clusters"]
    assert "got 1.5" in found["stages[0].config.schedule.final_sparsity"]


def test_unknown_technique_lists_the_registered_ones():
    found = problems({"task": "digits", "stages": [{"technique": "prunning"}]})
    assert list(found) == ["stages[0].technique"]
    assert "unknown technique 'prunning'" in found["stages[0].technique"]
    assert "magnitude-pruning" in found["stages[0].technique"]


def test_unknown_field_names_the_accepted_ones():
    found = problems({"task": "digits", "stages": [
        {**DIGITS_PRUNE, "learning_rate": 0.1, "config": {"sparsity": 0.5}}]})
    assert set(found) == {"stages[0].learning_rate", "stages[0].config.sparsity"}
    assert "lr" in found["stages[0].learning_rate"]
    assert "schedule" in found["stages[0].config.sparsity"]


def test_bad_value_is_delegated_to_the_config_class():
    found = problems({"task": "digits", "stages": [
        {"technique": "weight-clustering", "config": {"clusters": 1}}]})
    msg = found["stages[0].config.clusters"]
    assert msg == "clusters must be an integer >= 2 (values per layer), got 1 " \
                  "(ClusteringConfig.clusters)"


def test_a_dependent_error_does_not_hide_an_independent_one():
    # weight_bits=4 is only valid with mode=weight_only: it must not be reported as bad when
    # another field (percentile) is, and the bad one must be reported.
    found = problems({"task": "digits", "stages": [{"technique": "quantization", "config": {
        "mode": "weight_only", "weight_bits": 4, "percentile": 10}}]})
    assert list(found) == ["stages[0].config.percentile"]


def test_factory_that_does_not_import():
    found = problems({
        "model": {"factory": "no_such_package_h2.models:make_model"},
        "data": {"train_loader": "torch.nn:NoSuchThing", "eval": "math:pi"},
        "stages": [DIGITS_PRUNE],
    })
    assert set(found) == {"model.factory", "data.train_loader", "data.eval"}
    assert "cannot import module 'no_such_package_h2.models'" in found["model.factory"]
    assert "ModuleNotFoundError" in found["model.factory"]
    assert "has no attribute 'NoSuchThing'" in found["data.train_loader"]
    assert "not a callable" in found["data.eval"]


def test_factories_are_required_without_a_task_and_refused_with_one():
    found = problems({"stages": [DIGITS_PRUNE]})
    assert set(found) == {"model.factory", "data.train_loader", "data.eval"}
    found = problems({"task": "digits", "model": {"factory": "torch.nn:Identity"},
                      "stages": [DIGITS_PRUNE]})
    assert set(found) == {"model.factory"}
    own = {"train_loader": "torch.nn:Identity", "eval": "torch.nn:Identity"}
    found = problems({"model": {"factory": "torch.nn:Identity"},
                      "data": {**own, "batch_size": 8}, "stages": [DIGITS_PRUNE]})
    assert set(found) == {"data.batch_size"}  # the user's loader sets its own
    found = problems({"model": {"factory": "torch.nn:Identity"}, "data": own,
                      "stages": [{"epochs": 1}]})
    assert set(found) == {"stages[0].technique"}  # a missing technique, reported once


def test_epoch_units_become_steps_of_the_stage():
    recipe = load_recipe(example_path("prune-80"))
    cfg = recipe.stages[0].build_config(steps_per_epoch=45)
    assert (cfg.schedule.end_step, cfg.schedule.frequency) == (7 * 45, 45)
    # A short run of 20 of the 450 steps: 2 steps stand for an epoch.
    cfg = recipe.stages[0].build_config(steps_per_epoch=45 * 20 / 450)
    assert (cfg.schedule.end_step, cfg.schedule.frequency) == (14, 2)
    # A loader without len() has no epochs to count.
    with pytest.raises(RecipeError, match="end_step: '7 epochs' needs a training loader"):
        recipe.stages[0].build_config(steps_per_epoch=None)


def test_stage_names_must_be_unique():
    found = problems({"task": "digits", "stages": [DIGITS_PRUNE, DIGITS_PRUNE]})
    assert list(found) == ["stages[1].name"]


def test_a_contributed_technique_works_in_recipes_without_changes():
    @dataclass
    class H2NoiseConfig(sk.Config):
        scale: float = 0.1

        def __post_init__(self):
            self._require(self.scale > 0, "scale", "a number > 0")

    sk.register_technique("h2-noise", H2NoiseConfig, lambda model, cfg, layers: None,
                          source="tests")
    try:
        recipe = parse_recipe({"task": "digits", "stages": [
            {"technique": "h2-noise", "config": {"scale": 0.5}}]})
        assert recipe.stages[0].build_config(1.0) == H2NoiseConfig(0.5)
        found = problems({"task": "digits", "stages": [
            {"technique": "h2-noise", "config": {"scale": -1}}]})
        assert "(H2NoiseConfig.scale)" in found["stages[0].config.scale"]
    finally:
        registry._TECHNIQUES.pop("h2-noise")


def test_cli_exit_code_2_prints_every_problem(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"task": "digits", "stages": [
        {"technique": "prunning"},
        {"technique": "weight-clustering", "config": {"clusters": 1}}]}))
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "2 problems" in result.output
    assert "stages[0].technique" in result.output and "stages[1].config.clusters" in result.output
    assert not (tmp_path / "out").exists()  # nothing ran
    broken = tmp_path / "broken.yaml"
    broken.write_text("stages: [\n")
    result = CliRunner().invoke(main, ["run", str(broken)])
    assert result.exit_code == 2 and "not valid YAML" in result.output
    result = CliRunner().invoke(main, ["run", "--example", "nope"])
    assert result.exit_code == 2 and "pcqat" in result.output


def test_cli_check_validates_without_running(tmp_path):
    result = CliRunner().invoke(main, ["run", "--example", "pcqat", "--check"])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output and "weight-clustering" in result.output


def test_every_command_has_help_text():
    for name, command in main.commands.items():
        assert command.help, f"slimkit {name} has no help text"
        for param in command.params:
            if param.param_type_name == "option":
                assert param.help, f"slimkit {name} {param.opts[0]} has no help text"
