from dataclasses import dataclass

import pytest

import slimkit as sk
from slimkit.core.config import Config


def test_pruning_config_round_trips_with_nested_schedule_and_tuple():
    cfg = sk.MagnitudePruningConfig(
        sk.PolynomialDecay(0.1, 0.8, begin_step=5, end_step=50, power=2, frequency=5),
        scope="global", block_size=(1, 4), block_reduce="max",
    )
    d = cfg.to_dict()
    assert d["_type"] == "MagnitudePruningConfig" and d["_version"] == 1
    assert d["_data"]["schedule"]["_type"] == "PolynomialDecay"
    back = Config.from_dict(d)
    assert back == cfg
    assert back.block_size == (1, 4)  # tuples survive JSON-style encoding


def test_float_schedule_means_constant_sparsity():
    assert sk.MagnitudePruningConfig(0.3).schedule == sk.ConstantSparsity(0.3)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: sk.ConstantSparsity(1.5),
         r"target must be a sparsity in \[0, 1\), got 1.5 \(ConstantSparsity.target\)"),
        (lambda: sk.ConstantSparsity(-0.1), r"ConstantSparsity.target"),
        (lambda: sk.MagnitudePruningConfig(1.0),
         r"sparsity must be in \[0, 1\), got 1.0 \(MagnitudePruningConfig.schedule\)"),
        (lambda: sk.PolynomialDecay(0.0, 0.8, begin_step=10, end_step=5),
         r"end_step must be an integer >= begin_step, got 5 \(PolynomialDecay.end_step\)"),
        (lambda: sk.ConstantSparsity(0.5, begin_step=10, end_step=3),
         r"ConstantSparsity.end_step"),
        (lambda: sk.PolynomialDecay(0.0, 0.8, 0, 10, frequency=0),
         r"frequency must be an integer > 0, got 0 \(PolynomialDecay.frequency\)"),
        (lambda: sk.ConstantSparsity(0.5, frequency=-3), r"ConstantSparsity.frequency"),
        (lambda: sk.PolynomialDecay(0.0, 0.8, 0, 10, power=0), r"PolynomialDecay.power"),
        (lambda: sk.MagnitudePruningConfig(0.5, scope="model"),
         r"scope must be 'layer' or 'global', got 'model'"),
        (lambda: sk.MagnitudePruningConfig(0.5, block_size=(0, 4)), r"MagnitudePruningConfig.block_size"),
        (lambda: sk.MagnitudePruningConfig(schedule="cubic"), r"MagnitudePruningConfig.schedule"),
    ],
)
def test_bad_values_name_config_field_and_accepted_values(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_from_dict_errors_are_clear():
    with pytest.raises(ValueError, match="unknown config type 'Nope'"):
        Config.from_dict({"_type": "Nope", "_version": 1, "_data": {}})
    d = sk.ConstantSparsity(0.5).to_dict()
    d["_data"]["targett"] = 0.1
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['targett'\] for ConstantSparsity"):
        Config.from_dict(d)
    d = sk.ConstantSparsity(0.5).to_dict()
    d["_version"] = 99
    with pytest.raises(ValueError, match="newer than this slimkit supports"):
        Config.from_dict(d)
    with pytest.raises(ValueError, match="needs the keys"):
        Config.from_dict({"target": 0.5})


@dataclass
class RenamedFieldConfig(Config):
    """Version 2 renamed ``amount`` to ``sparsity``; version-1 dicts must still load."""

    version = 2
    sparsity: float = 0.5

    @classmethod
    def _migrate(cls, data, version):
        if version < 2:
            data["sparsity"] = data.pop("amount")
        return data


def test_older_versions_are_migrated():
    old = {"_type": "RenamedFieldConfig", "_version": 1, "_data": {"amount": 0.25}}
    assert Config.from_dict(old) == RenamedFieldConfig(0.25)


@dataclass
class StepSchedule(sk.PruningSchedule):
    """A custom schedule: 50% from step 10 on."""

    begin_step: int = 10
    end_step: int = -1
    frequency: int = 10

    def sparsity(self, step):
        return 0.5


def test_custom_schedule_subclass_round_trips_inside_a_config():
    cfg = sk.MagnitudePruningConfig(StepSchedule())
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert not cfg.schedule.should_update(5) and cfg.schedule.should_update(20)
