"""Recurrent models export through the faster TorchScript exporter by default, with the same
validation, and fall back to torch.export where it cannot (issue 16: the LSTM encoder took
100-150 s with the dynamo exporter)."""

from __future__ import annotations

import torch
import torch.nn as nn

import slimkit as sk
from slimkit.export import onnx as onnx_export


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.proj = nn.LSTM(8, 16, num_layers=2, batch_first=True), nn.Linear(16, 4)

    def forward(self, x):
        return self.proj(self.lstm(x)[0][:, -1])


def recorded(monkeypatch):
    calls = []
    real = onnx_export._export

    def spy(model, inputs, dynamo, *args):
        calls.append(dynamo)
        return real(model, inputs, dynamo, *args)

    monkeypatch.setattr(onnx_export, "_export", spy)
    return calls


def test_lstm_uses_torchscript_by_default(tmp_path, monkeypatch):
    calls = recorded(monkeypatch)
    torch.manual_seed(0)
    sk.export_onnx(Encoder(), tmp_path / "e.onnx", example_inputs=torch.randn(2, 5, 8))
    assert calls == [False]


def test_explicit_choice_and_plain_models_keep_torch_export(tmp_path, monkeypatch):
    calls = recorded(monkeypatch)
    torch.manual_seed(0)
    sk.export_onnx(Encoder(), tmp_path / "e.onnx", example_inputs=torch.randn(2, 5, 8),
                   dynamo=True)
    sk.export_onnx(nn.Linear(4, 2), tmp_path / "l.onnx", example_inputs=torch.randn(2, 4))
    assert calls == [True, True]


def test_falls_back_to_torch_export_when_torchscript_fails(tmp_path, monkeypatch):
    calls = []
    real = onnx_export._export

    def torchscript_fails(model, inputs, dynamo, *args):
        calls.append(dynamo)
        if not dynamo:
            raise RuntimeError("torch.onnx could not export (dynamo=False)")
        return real(model, inputs, dynamo, *args)

    monkeypatch.setattr(onnx_export, "_export", torchscript_fails)
    torch.manual_seed(0)
    sk.export_onnx(Encoder(), tmp_path / "e.onnx", example_inputs=torch.randn(2, 5, 8))
    assert calls == [False, True] and (tmp_path / "e.onnx").is_file()
