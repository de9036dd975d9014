"""``sk.report`` and ``slimkit report`` on files that are not ONNX models: one clear error
(exit 2 from the command), never a protobuf or ONNX Runtime traceback (issue 16, item 11)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

import slimkit as sk
from slimkit.cli import main
from slimkit.export import onnx as onnx_export


@pytest.fixture
def good(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 3))
    return sk.export_onnx(model, tmp_path / "m.onnx", example_inputs=torch.randn(2, 6))


def bad_files(tmp_path, good):
    data = good.read_bytes()
    files = {"empty": b"", "truncated": data[: len(data) // 2], "random": os.urandom(700)}
    for name, content in files.items():
        (tmp_path / f"{name}.onnx").write_bytes(content)
    return [tmp_path / f"{name}.onnx" for name in files]


def test_report_refuses_unreadable_files_clearly(tmp_path, good):
    for path in bad_files(tmp_path, good):
        with pytest.raises(ValueError, match="is not a readable ONNX file"):
            sk.report(path, latency_runs=2, memory=False)


def test_report_command_exits_2_with_one_line(tmp_path, good):
    for path in bad_files(tmp_path, good):
        result = CliRunner().invoke(main, ["report", str(path), "--runs", "2", "--no-memory"])
        assert result.exit_code == 2, (path.name, result.output)
        assert "is not a readable ONNX file" in result.output
        assert "Traceback" not in result.output


def test_model_copied_without_its_data_file_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "PROTO_LIMIT", 1)   # any model gets an external data file
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 3))
    path = sk.export_onnx(model, tmp_path / "big.onnx", example_inputs=torch.randn(2, 6))
    (tmp_path / "big.onnx.data").unlink()
    with pytest.raises(ValueError, match=r"big\.onnx\.data, which is not beside it"):
        sk.report(path, latency_runs=2, memory=False)
