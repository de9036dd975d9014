"""The search works for a contributed technique that declares knobs (no slimkit edit)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

import slimkit as sk
from slimkit.authoring import (
    Config,
    SlimParametrization,
    Technique,
    check_overrides,
    expand_tied,
    register,
    register_parametrization,
    register_stage,
    split_layers,
)
from slimkit.core import registry
from tests.search.helpers import agreement_eval, inputs, make_model

STAGE = register_stage("search-test-round", 260)


@dataclass
class GridConfig(Config):
    """Round weights to a grid of ``step`` (per layer through overrides)."""

    step: float = 1.0 / 64
    overrides: dict = field(default_factory=dict)

    def __post_init__(self):
        self._require(isinstance(self.step, float) and 0 < self.step < 1, "step",
                      "a float in (0, 1)")
        check_overrides(self, ("step",))


class Round(SlimParametrization):
    stage = STAGE

    def __init__(self, step: float):
        super().__init__("")
        self.step_size = step

    def forward(self, w):
        return w + (torch.round(w / self.step_size) * self.step_size - w).detach()


class GridRounding(Technique):
    name, config_cls, family, stage = "search-test-grid", GridConfig, "other", STAGE

    def prepare(self, model, config, layers):
        for cfg, members in split_layers(model, config, layers):
            for sites in expand_tied(model, members):
                register_parametrization(model, sites, Round(cfg.step))

    def knobs(self, config):
        return {"step": [1.0 / 256, 1.0 / 16, 1.0 / 2]}


@pytest.fixture
def grid():
    tech = register(GridRounding())
    yield tech
    registry._TECHNIQUES.pop(tech.name, None)


def test_contributed_technique_is_searched(grid):
    model, x = make_model(), inputs()
    sens = sk.sensitivity(model, GridConfig(), calibration=x[:64], progress=False)
    for unit in ("0", "2", "4"):    # a coarser grid perturbs more
        assert sens.score(unit, (2,)) > sens.score(unit, (1,)) > sens.score(unit, (0,))
    res = sk.optimize(model, agreement_eval(model, x), max_drop=0.02, techniques=[GridConfig()],
                      example_inputs=x[:8], calibration=x[:64], max_candidates=3,
                      progress=False, export_options={"dynamo": False})
    assert res.best["meets"] and res.best["zipped_bytes"] < res.baseline["zipped_bytes"]
    (cfg, targets), = res.stages
    assert isinstance(cfg, GridConfig) and set(cfg.overrides) <= {"0", "2", "4"}
