"""The kit itself: entries are validated, the matrix is built right, and a broken technique
fails the checks it breaks (a kit that cannot fail would prove nothing)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch
from rich.console import Console

import slimkit as sk
from slimkit.core import registry
from slimkit.core.parametrize import (
    SlimParametrization,
    expand_tied,
    get_module,
    raw_tensor,
    register,
)
from slimkit.testing import (
    ZOO,
    ConformanceEntry,
    ConformanceError,
    cases,
    conformance_tests,
    pass_table,
    run_check,
    run_conformance,
)


@dataclass
class LeakyNoiseConfig(sk.Config):
    """Adds noise to the weights; deliberately broken in the ways the kit must catch."""

    std: float = 0.1  # no validation at all: the config check must notice
    fresh: bool = False  # new noise on every forward: strip and deepcopy are not exact


class LeakyNoise(SlimParametrization):
    stage = "mask"

    def __init__(self, weight: torch.Tensor, config: LeakyNoiseConfig):
        super().__init__()
        self.config = config
        # A plain attribute, not a buffer: the noise is missing from the state_dict.
        self.noise = torch.randn_like(weight) * config.std

    def forward(self, w):
        if self.config.fresh:
            return w + torch.randn_like(w) * self.config.std
        return w + self.noise


def _prepare(model, config, layers):
    for sites in expand_tied(model, layers):
        mname, tname = sites[0]
        register(model, sites, LeakyNoise(raw_tensor(get_module(model, mname), tname), config))


@pytest.fixture
def leaky():
    registry.register_technique("test-leaky-noise", LeakyNoiseConfig, _prepare)
    yield ConformanceEntry("test-leaky-noise", config=LeakyNoiseConfig, invalid={"std": -1.0},
                           metric=None)
    registry._TECHNIQUES.pop("test-leaky-noise")


def test_a_config_that_accepts_a_bad_value_fails_the_config_check(leaky):
    with pytest.raises(ConformanceError, match=r"LeakyNoiseConfig\(std=-1.0\) was accepted"):
        run_check(leaky, "config")
    assert run_check(leaky, "json").endswith("bytes")  # the round trip itself is fine


def test_state_missing_from_the_state_dict_fails_state_dict_and_resume(leaky):
    with pytest.raises(ConformanceError, match=r"state_dict\]: subclassed: outputs differ"):
        run_check(leaky, "state_dict", "subclassed")
    with pytest.raises(ConformanceError, match=r"resume\]: .*differ from the uninterrupted"):
        run_check(dataclasses.replace(leaky, finetune_steps=4), "resume")


def test_outputs_that_change_on_every_call_fail_strip_and_deepcopy(leaky):
    fresh = dataclasses.replace(leaky, config=lambda: LeakyNoiseConfig(fresh=True))
    with pytest.raises(ConformanceError, match=r"strip\]: lstm: outputs differ"):
        run_check(fresh, "strip", "lstm")
    with pytest.raises(ConformanceError, match=r"deepcopy\]: lstm copy: outputs differ"):
        run_check(fresh, "deepcopy", "lstm")
    # A declared tolerance is honoured: noise of std 1e-9 on the weights stays below 1e-6.
    tiny = dataclasses.replace(fresh, config=lambda: LeakyNoiseConfig(std=1e-9, fresh=True),
                               strip_exact=False, strip_atol=1e-6)
    assert run_check(tiny, "strip", "lstm").startswith("max diff")


def test_an_unregistered_technique_and_missing_docs_fail(leaky, tmp_path):
    ghost = dataclasses.replace(leaky, technique="no-such-technique")
    with pytest.raises(ConformanceError, match="not registered"):
        run_check(ghost, "config")
    (tmp_path / "overview.md").write_text("# Leaky noise\n")
    (tmp_path / "guide.md").write_text("")
    docs = dataclasses.replace(leaky, docs=tmp_path)
    with pytest.raises(ConformanceError, match="missing page.*notebook.ipynb"):
        run_check(docs, "docs")
    (tmp_path / "notebook.ipynb").write_text('{"cells": [{"cell_type": "markdown"}]}')
    with pytest.raises(ConformanceError, match="empty page.*guide.md"):
        run_check(docs, "docs")
    (tmp_path / "guide.md").write_text("Use it.\n")
    assert run_check(docs, "docs").startswith("3 page(s)")


def test_a_metric_claim_larger_than_measured_fails():
    # Magnitude pruning to 80% zips about 4x smaller; a claim of 50x must fail.
    from slimkit.testing.builtin import BUILTIN_ENTRIES

    pruning = next(e for e in BUILTIN_ENTRIES if e.name == "magnitude-pruning")
    greedy = dataclasses.replace(pruning, id="greedy-pruning", factor=50.0)
    with pytest.raises(ConformanceError, match=r"zipped_bytes \d\.\d\dx \(claims 50x\)"):
        run_check(greedy, "metric")


def test_entries_are_validated_with_errors_naming_the_field():
    def config():
        return sk.MagnitudePruningConfig(0.5)

    with pytest.raises(ValueError, match=r"ConformanceEntry.models"):
        ConformanceEntry("magnitude-pruning", config=config, models=("cnn", "resnet152"))
    with pytest.raises(ValueError, match=r"includes 'cnn'.*ConformanceEntry.models"):
        ConformanceEntry("magnitude-pruning", config=config, models=("lstm",))
    with pytest.raises(ValueError, match=r"ConformanceEntry.metric"):
        ConformanceEntry("magnitude-pruning", config=config, metric="speed")
    with pytest.raises(ValueError, match=r"ConformanceEntry.factor"):
        ConformanceEntry("magnitude-pruning", config=config, factor=0.5)
    with pytest.raises(ValueError, match=r"ConformanceEntry.factor"):
        ConformanceEntry("magnitude-pruning", config=config, metric=None, factor=2.0)
    with pytest.raises(ValueError, match=r"ConformanceEntry.config"):
        ConformanceEntry("magnitude-pruning", config=sk.MagnitudePruningConfig(0.5))


def test_the_matrix_runs_light_checks_on_heavy_models_and_refuses_duplicates():
    entry = ConformanceEntry("quantization", config=lambda: sk.QuantizationConfig(mode="dynamic"),
                             models=("cnn", "minilm"))
    matrix = [(check, model) for _, check, model in cases([entry])]
    assert ("onnx", "cnn") in matrix and ("strip", "minilm") in matrix
    assert ("onnx", "minilm") not in matrix and ("torch_export", "minilm") not in matrix
    assert ZOO["minilm"].heavy
    assert len(matrix) == 6 + 4 + 6  # per-entry checks, minilm's light ones, cnn's all
    with pytest.raises(ValueError, match="two entries are named 'quantization'"):
        cases([entry, entry])
    with pytest.raises(ValueError, match="known_failures names \\['onnx-minilm'\\]"):
        cases([dataclasses.replace(entry, known_failures={"onnx-minilm": "slow"})])


def test_generated_tests_have_readable_ids_and_strict_xfails():
    entry = ConformanceEntry("magnitude-pruning", config=lambda: sk.MagnitudePruningConfig(0.5),
                             models=("cnn", "lstm"), known_failures={"onnx-lstm": "issue 12"})
    tests = conformance_tests([entry], checks=["strip", "onnx"])
    test = tests["test_conformance"]
    params = test.pytestmark[0].args[1]
    assert [p.id for p in params] == [
        "magnitude-pruning-strip-cnn", "magnitude-pruning-strip-lstm",
        "magnitude-pruning-onnx-cnn", "magnitude-pruning-onnx-lstm",
    ]
    xfails = [p for p in params if p.marks]
    assert [p.id for p in xfails] == ["magnitude-pruning-onnx-lstm"]
    assert xfails[0].marks[0].kwargs["strict"] is True


def test_run_conformance_reports_failures_and_known_failures_in_the_table(leaky):
    entry = dataclasses.replace(leaky, known_failures={"config": "no validation yet (#1)"})
    results = run_conformance([entry], checks=["config", "json", "state_dict"])
    status = {(r.check, r.model): r.status for r in results}
    assert status[("config", None)] == "xfail" and status[("json", None)] == "pass"
    assert status[("state_dict", "subclassed")] == "fail"
    assert status[("state_dict", "cnn")] == "fail"
    console = Console(record=True, width=200)
    console.print(pass_table(results))
    text = console.export_text()
    assert "test-leaky-noise" in text and "xfail" in text and "0/4" in text


def test_entries_that_would_train_differently_never_share_a_cached_model():
    from slimkit.testing import workbench

    def entry(**kw):
        return ConformanceEntry("magnitude-pruning",
                                config=lambda: sk.MagnitudePruningConfig(kw.get("s", 0.5)),
                                finetune_steps=kw.get("steps", 90))

    same = workbench._key("finetuned", entry()), workbench._key("finetuned", entry())
    assert same[0] == same[1]  # equal entries share the fine-tuned model
    assert workbench._key("finetuned", entry(s=0.6)) != same[0]
    assert workbench._key("finetuned", entry(steps=10)) != same[0]
