"""The technique protocol's core promises: config resolution, stage order, hook order."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

import slimkit as sk
from slimkit.authoring import (
    ExportContext,
    SlimParametrization,
    Technique,
    register_parametrization,
    register_stage,
    stage_order,
)
from slimkit.core import registry
from slimkit.core.state import Max, Ratio, Sum


@dataclass
class MyQATConfig(sk.QATConfig):
    """A user's subclass: it must resolve to QAT, its nearest registered base."""


def test_a_config_subclass_resolves_to_its_nearest_registered_base():
    assert sk.get_technique(sk.QATConfig()).name == "qat"
    assert sk.get_technique(sk.QuantizationConfig()).name == "quantization"
    assert sk.get_technique(MyQATConfig()).name == "qat"
    with pytest.raises(TypeError, match="expected a technique name or a slimkit Config"):
        sk.get_technique(3)


def test_stage_registry_orders_and_refuses_conflicts():
    assert stage_order("mask") < stage_order("cluster") < stage_order("quant")
    register_stage("probe-test-stage", 275.5)
    register_stage("probe-test-stage", 275.5)  # the same again: a no-op
    with pytest.raises(ValueError, match="already registered at order 275.5, not 1"):
        register_stage("probe-test-stage", 1)
    with pytest.raises(ValueError, match="order 100 is taken by stage 'mask'"):
        register_stage("another-mask", 100)
    with pytest.raises(ValueError, match="unknown stage 'nope'; registered stages: mask"):
        stage_order("nope")


def test_statistics_combine_by_kind():
    assert Sum(1).combine(Sum(2)).result() == 3.0
    assert Max(1).combine(Max(5)).result() == 5.0
    assert Ratio(1, 4).combine(Ratio(3, 4)).result() == 0.5  # sums, then divides
    with pytest.raises(ValueError, match="cannot combine a sum statistic with a max one"):
        Sum(1).combine(Max(1))


class _Halve(nn.Module):
    def forward(self, w):
        return w * 0.5


def test_a_foreign_parametrization_stays_innermost():
    # torch's own parametrizations define the model's weight: slimkit's stages run after.
    model = nn.Sequential(nn.Linear(8, 8))
    parametrize.register_parametrization(model[0], "weight", _Halve())
    sk.prune(model, sk.MagnitudePruningConfig(0.5))
    stack = [type(p).__name__ for p in model[0].parametrizations.weight]
    assert stack == ["_Halve", "PruningMask"]


@dataclass
class ProbeConfig(sk.Config):
    pass


class _Identity(SlimParametrization):
    stage = register_stage("probe-after-quant", 400)

    def forward(self, w):
        return w


class Probe(Technique):
    """Runs after quantization whatever the order of application, and sees its rewrites."""

    name = "probe-after-quant"
    config_cls = ProbeConfig
    stage = "probe-after-quant"
    seen: dict = {}

    def prepare(self, model, config, layers):
        for sites in [[layer] for layer in layers]:
            register_parametrization(model, sites, _Identity())

    def post_export(self, proto, ctx: ExportContext):
        Probe.seen = dict(ctx.rewritten)
        return proto


@pytest.fixture
def probe():
    tech = registry.register(Probe())
    yield tech
    registry._TECHNIQUES.pop(tech.name, None)


def test_export_hooks_run_in_stage_order_and_see_earlier_rewrites(probe, tmp_path):
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    sk.apply(model, ProbeConfig())  # applied first ...
    sk.quantize(model, sk.QuantizationConfig(mode="weight_only"))
    stack = [type(p).__name__ for p in model[0].parametrizations.weight]
    assert stack == ["WeightFakeQuant", "_Identity"]  # ... but stacked after quant
    sk.export_onnx(model, tmp_path / "m.onnx", example_inputs=torch.randn(4, 16))
    # ... and its post_export hook ran after quantization's, seeing what that replaced.
    assert set(Probe.seen.values()) == {"quantization"}
    assert len(Probe.seen) == 2
