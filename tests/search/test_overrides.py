"""Per-layer overrides in one form ({pattern: {field: value}}) and Technique.knobs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn

import slimkit as sk
from slimkit.core.config import Config, ConfigError
from slimkit.core.technique import Technique
from tests.search.helpers import make_model


def _sparsity(m: nn.Module) -> float:
    return float((m.weight == 0).float().mean())


def test_pruning_overrides_per_layer_and_save_load(tmp_path):
    model = make_model()
    cfg = sk.MagnitudePruningConfig(0.5, overrides={"2": {"schedule": 0.9}})
    sk.apply(model, cfg)
    # 64x16, 64x64, 8x64 weights: ceil / floor of the target fraction, within 1/512
    assert abs(_sparsity(model[0]) - 0.5) < 2e-3
    assert abs(_sparsity(model[2]) - 0.9) < 2e-3
    assert abs(_sparsity(model[4]) - 0.5) < 2e-3
    sk.save(model, tmp_path / "p.pt")
    loaded = sk.load(tmp_path / "p.pt", model=make_model())
    for i in (0, 2, 4):
        assert torch.equal(loaded[i].weight, model[i].weight)
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_clustering_and_weight_only_overrides():
    model = make_model()
    sk.apply(model, sk.ClusteringConfig(16, overrides={"0": {"clusters": 4}}))
    assert len(torch.unique(model[0].weight)) == 4
    assert len(torch.unique(model[2].weight)) == 16

    model = make_model()
    # layer "0" has 16 inputs, fewer than a group of 32: one scale per row there
    cfg = sk.WeightOnlyConfig(bits=4, group_size=32,
                              overrides={"0": {"group_size": None}, "2": {"bits": 8}})
    sk.apply(model, cfg)
    got = {name: (p.bits, p.group_size) for name, m in model.named_modules()
           if hasattr(m, "parametrizations") for p in m.parametrizations["weight"]}
    assert got == {"0": (4, None), "2": (8, 32), "4": (4, 32)}


def test_oneshot_old_form_still_accepted():
    cfg = sk.SparseGPTConfig(0.5, overrides={"*.down_proj": 0.3})
    assert cfg.overrides == {"*.down_proj": {"sparsity": 0.3}}
    assert sk.SparseGPTConfig(0.5, overrides={"*.down_proj": {"sparsity": 0.3}}) == cfg
    assert cfg.layer_sparsity("layers.0.mlp.down_proj", nn.Linear(2, 2)) == pytest.approx(0.3)
    assert cfg.layer_sparsity("layers.0.mlp.up_proj", nn.Linear(2, 2)) == pytest.approx(0.5)


@pytest.mark.parametrize("make, message", [
    (lambda: sk.MagnitudePruningConfig(0.5, overrides={"fc": {"scope": "global"}}),
     "may set"),
    (lambda: sk.MagnitudePruningConfig(0.5, scope="global", overrides={"fc": {"schedule": 0.9}}),
     "scope='global'"),
    (lambda: sk.ClusteringConfig(16, overrides={"fc": {"clusters": 1}}), "clusters must be"),
    (lambda: sk.WeightOnlyConfig(overrides={"fc": {"bits": 5}}), "bits must be"),
    (lambda: sk.ClusteringConfig(16, overrides={"fc": 4}), "{field: value}"),
])
def test_bad_overrides_name_the_field(make, message):
    with pytest.raises(ConfigError, match="overrides") as info:
        make()
    assert message in str(info.value)
    assert info.value.field == "overrides"


def test_knobs_of_the_builtins_are_valid_overrides():
    declared = {}
    for tech in sk.techniques():
        try:
            cfg = tech.config_cls()
        except Exception:        # a config without defaults declares no knobs by default
            continue
        knobs = tech.knobs(cfg)
        if knobs:
            declared[tech.name] = knobs
            for field, levels in knobs.items():
                for value in levels:
                    dataclasses.replace(cfg, overrides={"x": {field: value}})
    assert {"magnitude-pruning", "weight-clustering", "quantization", "weight-only",
            "sparsegpt", "wanda", "qat"} <= set(declared)
    assert Technique().knobs(None) == {}
