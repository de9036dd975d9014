"""A recipe is checked against its model before anything trains: in ``slimkit run --check``
and at the start of ``slimkit run`` (issue 16: item 13, the dict-inputs recipe of item 3,
and YAML ``ignore: fc2`` taking one pattern as Python's ``ignore="fc2"`` does)."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import yaml
from click.testing import CliRunner

from slimkit.cli import main

MODULE = '''
import torch
import torch.nn as nn

_gen = torch.Generator().manual_seed(0)
X = torch.randn(64, 6, generator=_gen)
Y = (X @ torch.randn(6, 3, generator=_gen)).argmax(1)
CALLS = []


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 32), nn.Linear(32, 3)

    def forward(self, x, *, scale=None):
        CALLS.append(x.shape[0])
        return self.fc2(torch.relu(self.fc1(x)))


def make_model():
    return Net()


def train_loader():
    return [({"x": X[i:i + 16]}, Y[i:i + 16]) for i in range(0, 64, 16)]


def evaluate(predict):
    return {"accuracy": float((predict(x=X).argmax(1) == Y).float().mean())}


def example_inputs():
    return {"x": X[:4]}
'''

DATA = {"train_loader": "h16_task:train_loader", "eval": "h16_task:evaluate",
        "example_inputs": "h16_task:example_inputs"}


@pytest.fixture
def task_module(tmp_path, monkeypatch):
    (tmp_path / "h16_task.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "h16_task", raising=False)
    yield
    sys.modules.pop("h16_task", None)


def write(tmp_path, stages, baseline_steps=40):
    recipe = {"name": "pre", "model": {"factory": "h16_task:make_model"}, "data": DATA,
              "baseline": {"steps": baseline_steps, "lr": 1e-2}, "evaluate": "stripped",
              "report": {"latency_runs": 3}, "stages": stages}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("stage,where", [
    ({"technique": "magnitude-pruning", "steps": 2, "targets": ["nothing*"]},
     "stages[0]: targets entry 'nothing*' matches no module"),
    ({"technique": "magnitude-pruning", "steps": 2, "ignore": ["fc9"]},
     "stages[0].ignore: ignore entry 'fc9' matches no module"),
], ids=["targets", "ignore"])
def test_check_catches_patterns_that_match_no_layer(tmp_path, task_module, stage, where):
    result = CliRunner().invoke(main, ["run", str(write(tmp_path, [stage])), "--check"])
    assert result.exit_code == 2, result.output
    assert where in " ".join(result.output.split())


def test_a_stage_order_the_model_refuses_fails_before_the_baseline_trains(tmp_path,
                                                                          task_module):
    # Channel pruning after magnitude pruning is refused by prune_channels: say so at once.
    stages = [{"name": "prune", "technique": "magnitude-pruning", "steps": 4,
               "config": {"schedule": 0.5}},
              {"name": "channels", "technique": "channel-pruning", "config": {"ratio": 0.5}}]
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(write(tmp_path, stages)), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "stages[1]: prune_channels needs a plain model" in " ".join(result.output.split())
    import h16_task

    # Only the rehearsal's forward passes ran (batch 4), no training batch (16).
    assert 16 not in h16_task.CALLS
    assert not list((out / "checkpoints").glob("*.pt"))


def test_dict_inputs_recipe_runs_to_the_end(tmp_path, task_module):
    # ignore as one string, as sk.apply(ignore="fc2") takes it.
    stages = [{"name": "prune", "technique": "magnitude-pruning", "steps": 8,
               "config": {"schedule": 0.5}, "ignore": "fc2"}]
    path = write(tmp_path, stages)
    assert CliRunner().invoke(main, ["run", str(path), "--check"]).exit_code == 0
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads((out / "report.json").read_text())
    assert report["final"]["metrics"]["accuracy"] > 0.6
    assert abs(report["stages"][-1]["sparsity"] - 0.5 * 192 / (192 + 96)) < 0.02


def test_shipped_examples_point_to_nothing_users_lack():
    # They are installed with the package: "../shared/BENCHMARKS.md" exists only beside
    # slimkit's own checkout.
    from slimkit.recipes import example_path, examples

    for name in examples():
        text = example_path(name).read_text()
        assert "../" not in text and "shared/" not in text, name
