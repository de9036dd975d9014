"""Conv -> BatchNorm models in the file: weight-only int8 / int4 (PTQ and QAT), clustering and
pruning survive export (issue 16, items 1, 2 and 7).

The exporter keeps BatchNorm as its own node (ONNX Runtime folds it into the convolution at
session start), so the file stores the weights the model has; weight-only conv weights are
``Cast(int8) * scale``, which ORT folds at session start into a prepacked float conv.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

import slimkit as sk
import slimkit.export.onnx as onnx_export
from slimkit.export import ort_session


def conv_bn_net(seed: int = 0) -> nn.Module:
    """Sequential(Conv2d, BatchNorm2d, ReLU, Flatten, Linear) with BatchNorm statistics far
    from the identity (gamma in [0.5, 2], shifted means), as a trained net has."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                      nn.Linear(8 * 8 * 8, 10))
    bn = m[1]
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.uniform_(0.3, 2.0)
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.normal_(0, 0.5)
    return m.eval()


def ort_out(path, x) -> np.ndarray:
    sess = ort_session(path)
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def torch_out(model, x) -> np.ndarray:
    from slimkit.export.pipeline import deployable

    with torch.no_grad():
        return deployable(model)(x).numpy()


def initializers(path) -> dict[str, np.ndarray]:
    proto = onnx.load(str(path))
    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}


def optimized_ops(path, tmp_path) -> list[str]:
    opt = tmp_path / "optimized.onnx"
    ort_session(path, optimized_path=opt)
    return [n.op_type for n in onnx.load(str(opt)).graph.node]


X = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("config", [
    sk.QuantizationConfig(mode="weight_only"),
    sk.QuantizationConfig(mode="weight_only", weight_bits=4),
    sk.QATConfig(mode="weight_only"),
], ids=["ptq-int8", "ptq-int4", "qat-int8"])
def test_weight_only_conv_bn_exports_and_matches(config, tmp_path):
    # Before the fix: ExportValidationError, max abs diff 0.125 (the exporter folded BN into
    # the conv and the int8 rewrite put the unfolded integers back next to the folded bias).
    model = sk.quantize(conv_bn_net(), config)
    path = sk.export_onnx(model, tmp_path / "wo.onnx", example_inputs=X)
    ref = torch_out(model, X)
    # Weight-only: float arithmetic on both sides, the fp32 tolerance holds (1e-4 + 1e-3*|y|).
    np.testing.assert_allclose(ort_out(path, X), ref, atol=1e-4, rtol=1e-3)
    inits = initializers(path)
    codes = inits["0.weight_quantized"]
    assert str(codes.dtype) == ("int4" if config.weight_bits == 4 else "int8")
    codes = codes.astype(np.int8)
    hi = 7 if config.weight_bits == 4 else 127
    assert int(np.abs(codes).max()) == hi       # symmetric per channel: the largest code is used
    # The integers are the torch model's (BatchNorm not folded into them).
    from slimkit.techniques.quantization.fake_quant import quantized_weights
    q = {k: q for k, _m, _p, q, _s, _b in quantized_weights(model)}
    np.testing.assert_array_equal(codes, q["0.weight"].numpy().astype(np.int8))
    assert "1.running_var" in inits             # the BatchNorm is its own node in the file


def test_weight_only_conv_runs_a_float_conv_with_bn_folded(tmp_path):
    # Item 7: DequantizeLinear feeding a conv kept ORT from its prepacked kernels (0.57x fp32).
    model = sk.quantize(conv_bn_net(), sk.QuantizationConfig(mode="weight_only"))
    path = sk.export_onnx(model, tmp_path / "wo.onnx", example_inputs=X)
    ops = optimized_ops(path, tmp_path)
    assert "BatchNormalization" not in ops      # folded by ORT at session start
    assert "DequantizeLinear" in ops            # the Linear keeps its DQ (MatMul kernels)
    assert ops.count("Cast") == 0 and ops.count("Mul") == 0   # conv weight folded to float
    size = (tmp_path / "wo.onnx").stat().st_size
    fp32 = sk.export_onnx(conv_bn_net(), tmp_path / "fp32.onnx", example_inputs=X).stat().st_size
    assert size < fp32 / 2.4                    # measured 24.5 kB -> 9.4 kB (names, BN, scales)


def test_exporter_keeps_batchnorm_unfolded(tmp_path):
    path = sk.export_onnx(conv_bn_net(), tmp_path / "fp32.onnx", example_inputs=X)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "BatchNormalization" in ops
    assert "BatchNormalization" not in optimized_ops(path, tmp_path)


def test_clustered_conv_bn_keeps_its_clusters_in_the_file(tmp_path):
    # Before the fix: 16 clusters became 219 values per conv after the exporter's BN folding.
    model = sk.cluster(conv_bn_net(), sk.ClusteringConfig(clusters=16), targets=["0"])
    path = sk.export_onnx(model, tmp_path / "c.onnx", example_inputs=X)
    w = initializers(path)["0.weight"]
    assert len(np.unique(w)) == 16
    np.testing.assert_allclose(ort_out(path, X), torch_out(model, X), atol=1e-4, rtol=1e-3)


def test_pruned_conv_bn_keeps_its_zeros_in_the_file(tmp_path):
    # Zeros survived BN folding before too, but a negative gamma made them -0.0 (signed zeros
    # cost zipped size); unfolded, they stay +0.0.
    net = conv_bn_net()
    with torch.no_grad():
        net[1].weight[::2] *= -1
    model = sk.prune(net, sk.MagnitudePruningConfig(0.75), targets=["0"])
    path = sk.export_onnx(model, tmp_path / "p.onnx", example_inputs=X)
    w = initializers(path)["0.weight"]
    assert np.count_nonzero(w) == 18            # 72 weights, 75% pruned
    assert not np.signbit(w[w == 0]).any()      # +0.0 only


def test_clustered_quantized_conv_bn_keeps_one_integer_per_cluster(tmp_path):
    model = sk.cluster(conv_bn_net(), sk.ClusteringConfig(clusters=16), targets=["0"])
    sk.quantize(model, sk.QuantizationConfig(mode="weight_only", per_channel=False))
    path = sk.export_onnx(model, tmp_path / "cq.onnx", example_inputs=X)
    assert len(np.unique(initializers(path)["0.weight_quantized"])) == 16


def test_a_weight_the_exporter_changed_stays_float_with_a_warning(tmp_path, monkeypatch):
    # The guard: if an exporter folds BN anyway, the int8 rewrite must not write the unfolded
    # integers (the item 1 bug); the weight stays float and the file still validates.
    monkeypatch.setattr(onnx_export, "_keep_batchnorm", contextlib.nullcontext)
    model = sk.quantize(conv_bn_net(), sk.QuantizationConfig(mode="weight_only"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = sk.export_onnx(model, tmp_path / "folded.onnx", example_inputs=X)
    assert any("changed 1 quantized weight(s)" in str(w.message) and "0.weight" in str(w.message)
               for w in caught)
    inits = initializers(path)
    assert "0.weight" in inits and inits["0.weight"].dtype == np.float32
    assert "4.weight_quantized" in inits        # the Linear is still int8
