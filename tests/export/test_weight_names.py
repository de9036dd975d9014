"""The exported file names its weights after the torch parameters (the dynamo exporter
stores pre-transposed Linear weights as ``val_*``), and the weight inventory leaves out
normalisation parameters and recurrent biases."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

import slimkit as sk
from slimkit.metrics.weights import onnx_weight_inventory

onnx = pytest.importorskip("onnx")


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(16, 32)
        self.norm = nn.LayerNorm(32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


def test_pre_transposed_linear_weights_are_named_after_their_parameters(tmp_path):
    # A 3-D input: the exporter writes MatMul with a pre-transposed weight (2-D: Gemm, named).
    path = sk.export_onnx(Block().eval(), tmp_path / "b.onnx", example_inputs=torch.randn(2, 3, 16),
                          dynamo=True)
    names = {i.name for i in onnx.load(str(path)).graph.initializer if len(i.dims) >= 2}
    assert names == {"fc1.weight.T", "fc2.weight.T"}, names
    table = {s.name for s in onnx_weight_inventory(path).layers}
    assert table == names


def test_quantized_weights_keep_the_parameter_name(tmp_path):
    model = Block().eval()
    sk.quantize(model, sk.QuantizationConfig(mode="dynamic"))
    path = sk.export_onnx(model, tmp_path / "q.onnx", example_inputs=torch.randn(2, 3, 16),
                          dynamo=True)
    ints = sorted(i.name for i in onnx.load(str(path)).graph.initializer
                  if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2)
    assert all(n.startswith(("fc1.weight", "fc2.weight")) for n in ints) and len(ints) == 2, ints


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])


def test_inventory_counts_lstm_biases_as_parameters_not_weights(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = sk.export_onnx(Recurrent().eval(), tmp_path / "r.onnx",
                              example_inputs=torch.randn(2, 5, 8))
    inv = onnx_weight_inventory(path)
    shapes = sorted(s.shape for s in inv.layers)
    # W (1, 64, 8), R (1, 64, 16) and the head (4, 16); B (1, 128) is a bias.
    assert shapes == [(1, 64, 8), (1, 64, 16), (4, 16)], shapes
    assert inv.parameters == sum(p.numel() for p in Recurrent().parameters())
