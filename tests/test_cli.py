import json

import torch
import torch.nn as nn
from click.testing import CliRunner

import slimkit as sk
from slimkit.cli import main


def test_techniques_lists_builtin_pruning():
    result = CliRunner().invoke(main, ["techniques"])
    assert result.exit_code == 0
    assert "magnitude-pruning" in result.output and "MagnitudePruningConfig" in result.output


def test_report_command_and_exit_codes(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    sk.prune(model, sk.MagnitudePruningConfig(0.5))
    path = sk.export_onnx(model, tmp_path / "m.onnx", example_inputs=torch.randn(2, 8))
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["report", str(path), "--runs", "5", "--no-memory",
                                       "--json", str(out), "--layers"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["parameters"] == 8 * 8 + 8 + 8 * 2 + 2
    assert abs(data["sparsity"] - 0.5) < 1e-9
    missing = CliRunner().invoke(main, ["report", str(tmp_path / "nope.onnx")])
    assert missing.exit_code == 2 and "nope.onnx" in missing.output


def test_demo_runs_end_to_end_with_short_training(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--epochs", "3", "--finetune-epochs", "2",
                                       "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["pruned"]["sparsity"] > 0.79
    assert summary["ratios"]["zipped_bytes"] > 2.5
    assert (tmp_path / "baseline.onnx").exists() and (tmp_path / "pruned.onnx").exists()
    bad = CliRunner().invoke(main, ["demo", "--finetune-epochs", "0"])
    assert bad.exit_code == 2
