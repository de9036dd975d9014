"""Dynamic int8 for nn.LSTM: int8 weights per gate row in torch, ONNX Runtime's
DynamicQuantizeLSTM in the file; GRU and the other modes say why they stay float."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn as nn

import slimkit as sk
from slimkit.core.parametrize import slim_parametrizations
from slimkit.techniques.quantization.fake_quant import WeightFakeQuant
from slimkit.techniques.quantization.lstm_export import _row_codes

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


class Encoder(nn.Module):
    def __init__(self, rnn: type = nn.LSTM, bidirectional: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = rnn(16, 64, num_layers=2, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(128 if bidirectional else 64, 8)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _x(n=4):
    return torch.randn(n, 12, 16, generator=torch.Generator().manual_seed(1))


def _run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("bidirectional", [False, True])
def test_dynamic_int8_lstm_runs_ort_dynamicquantizelstm(tmp_path, bidirectional):
    model = Encoder(bidirectional=bidirectional).eval()
    x = _x()
    fp32_path = sk.export_onnx(model, tmp_path / "fp32.onnx", example_inputs=x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing stays float: no warning
        sk.quantize(model, sk.QuantizationConfig(mode="dynamic"))
    quantized = {(m, t) for m, t, _i, p in slim_parametrizations(model)
                 if isinstance(p, WeightFakeQuant)}
    per_layer = 4 if bidirectional else 2  # ih and hh, per direction
    assert sum(m == "rnn" for m, _t in quantized) == 2 * per_layer
    with torch.no_grad():
        expected = model(x).numpy()
    path = sk.export_onnx(model, tmp_path / "int8.onnx", example_inputs=x)
    proto = onnx.load(str(path))
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["DynamicQuantizeLSTM"] == 2 and ops["LSTM"] == 0
    got = _run(path, x)
    # ORT also quantizes the inputs and hidden states at every step: 3% RMS on this encoder.
    rel = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    assert rel < 0.03, rel
    # The LSTM's weights are int8 in the file: 4 bytes -> 1 for 99% of the parameters.
    assert fp32_path.stat().st_size / path.stat().st_size > 3.0


def test_gru_and_static_lstm_stay_float_with_the_reason():
    with pytest.warns(UserWarning, match=r"rnn \(GRU: ONNX Runtime has an int8 kernel for LSTM only"):
        sk.quantize(Encoder(nn.GRU), sk.QuantizationConfig(mode="dynamic"))
    with pytest.warns(UserWarning, match=r"rnn \(LSTM: .*use mode='dynamic' for LSTM"):
        sk.quantize(Encoder(), sk.QuantizationConfig(mode="static"), calibration=_x())


def test_an_ignored_lstm_stays_a_float_lstm_in_the_file(tmp_path):
    model = Encoder().eval()
    sk.quantize(model, sk.QuantizationConfig(mode="dynamic"), ignore=["rnn"])
    path = sk.export_onnx(model, tmp_path / "head.onnx", example_inputs=_x())
    ops = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    assert ops["LSTM"] == 2 and ops["DynamicQuantizeLSTM"] == 0 and ops["MatMulInteger"] == 1


def test_row_codes_accept_only_weights_on_a_per_row_int8_grid():
    rng = np.random.default_rng(0)
    scale = rng.uniform(0.01, 0.1, (1, 8)).astype(np.float32)
    q = rng.integers(-127, 128, (1, 8, 5)).astype(np.float32)
    q[..., 0] = 127  # each row reaches the top of the range, as slimkit's grid does
    on_grid = q * scale[..., None]
    codes = _row_codes(on_grid)
    assert codes is not None
    np.testing.assert_array_equal(codes[0], q.astype(np.int8))
    np.testing.assert_allclose(codes[1], scale, rtol=1e-6)
    off = on_grid.copy()
    off[0, 3, 2] += 0.3 * scale[0, 3]  # a third of a step off in one row
    assert _row_codes(off) is None
