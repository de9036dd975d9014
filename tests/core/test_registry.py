import sys
import textwrap
import warnings
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

import slimkit as sk
from slimkit.core import registry
from slimkit.core.parametrize import SlimParametrization, register


def test_builtin_pruning_is_registered():
    names = {t.name: t for t in sk.techniques()}
    assert names["magnitude-pruning"].config_cls is sk.MagnitudePruningConfig
    assert names["magnitude-pruning"].family == "pruning"
    assert sk.get_technique(sk.MagnitudePruningConfig(0.5)).name == "magnitude-pruning"


@dataclass
class ScaleConfig(sk.Config):
    factor: float = 2.0

    def __post_init__(self):
        self._require(self.factor > 0, "factor", "a number > 0")


class Scale(SlimParametrization):
    stage = "cluster"

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, w):
        return w * self.factor


def _prepare_scale(model, config, layers):
    for mname, tname in layers:
        register(model, [(mname, tname)], Scale(config.factor))


def test_a_third_party_technique_plugs_in_without_editing_slimkit():
    sk.register_technique("test-scale", ScaleConfig, _prepare_scale, family="other")
    try:
        model = nn.Linear(4, 4)
        before = model.weight.detach().clone()
        sk.apply(model, ScaleConfig(3.0))
        assert torch.equal(model.weight, before * 3.0)
        assert sk.records(model)[0]["technique"] == "test-scale"
        with pytest.raises(ValueError, match="already registered"):
            sk.register_technique("test-scale", sk.MagnitudePruningConfig, _prepare_scale)
    finally:
        registry._TECHNIQUES.pop("test-scale")


def test_unknown_technique_and_unregistered_config_errors():
    with pytest.raises(ValueError, match="unknown technique 'nope'; registered: .*magnitude-pruning"):
        sk.get_technique("nope")

    @dataclass
    class Orphan(sk.Config):
        pass

    with pytest.raises(ValueError, match="no technique is registered for Orphan"):
        sk.apply(nn.Linear(2, 2), Orphan())


def test_entry_point_group_registers_techniques(tmp_path, monkeypatch):
    pkg = tmp_path / "sk_plugin_demo.py"
    pkg.write_text(textwrap.dedent("""
        from dataclasses import dataclass
        import slimkit as sk

        @dataclass
        class PluginConfig(sk.Config):
            pass

        def setup():
            sk.register_technique("plugin-demo", PluginConfig, lambda m, c, layers: None,
                                  source="sk-plugin-demo")

        def broken():
            raise RuntimeError("boom")
    """))
    dist = tmp_path / "sk_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sk-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[slimkit.techniques]\nplugin-demo = sk_plugin_demo:setup\nbad = sk_plugin_demo:broken\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            names = [t.name for t in sk.techniques()]
        assert "plugin-demo" in names
        assert any("entry point 'bad'" in str(w.message) and "boom" in str(w.message)
                   for w in caught)
    finally:
        registry._TECHNIQUES.pop("plugin-demo", None)
        sys.modules.pop("sk_plugin_demo", None)
