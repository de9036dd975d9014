"""Stacking in any order either works as the stages promise or is refused before anything
changes; an unstepped schedule is never exported silently (issue 16, items 6 and 7)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

import slimkit as sk


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def weight_sparsity(model):
    ws = [p for n, p in model.named_parameters() if n.endswith("weight")]
    return float(sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws))


def test_pruning_after_clustering_is_refused_and_changes_nothing():
    model = mlp()
    sk.cluster(model, sk.ClusteringConfig(8), targets=["0"])   # only the first layer
    x = torch.randn(4, 16)
    before = model(x)
    # The second layer is not clustered: a partial preparation would prune it.
    with pytest.raises(ValueError, match=r"0\.weight already has a cluster parametrization.*"
                                         r"mask -> cluster"):
        sk.prune(model, sk.MagnitudePruningConfig(0.5))
    assert [r["technique"] for r in sk.records(model)] == ["weight-clustering"]
    assert not hasattr(model[2], "parametrizations")
    assert torch.equal(model(x), before)


def test_the_stage_order_keeps_both():
    model = mlp()
    sk.prune(model, sk.MagnitudePruningConfig(0.5))
    sk.cluster(model, sk.ClusteringConfig(8, preserve_sparsity=True))
    sk.strip(model)
    assert weight_sparsity(model) == pytest.approx(0.5, abs=0.01)
    assert len(torch.unique(model[0].weight)) <= 8


def test_pruning_after_quantization_works_through_export(tmp_path):
    model = mlp()
    sk.quantize(model, sk.QuantizationConfig(mode="dynamic"))
    sk.prune(model, sk.MagnitudePruningConfig(0.5))
    path = sk.export_onnx(model, tmp_path / "m.onnx", example_inputs=torch.randn(8, 16))
    kernels = [numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer
               if len(t.dims) == 2]
    assert {k.dtype for k in kernels} == {np.dtype(np.int8)}
    assert all(float((k == 0).mean()) == pytest.approx(0.5, abs=0.01) for k in kernels)


def test_a_second_quantization_is_refused():
    model = mlp()
    sk.quantize(model, sk.QuantizationConfig(), calibration=torch.randn(8, 16))
    with pytest.raises(ValueError, match="already has a quant parametrization"):
        sk.quantize(model, sk.QuantizationConfig(mode="weight_only"))


@pytest.mark.parametrize("verb", ["strip", "export"])
def test_an_unstepped_schedule_warns_at_strip_and_export(tmp_path, verb):
    model = mlp()
    sk.prune(model, sk.MagnitudePruningConfig(sk.PolynomialDecay(0.0, 0.8, 0, 100)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if verb == "strip":
            sk.strip(model)
        else:
            sk.export_onnx(model, tmp_path / "m.onnx", example_inputs=torch.randn(2, 16))
    text = " ".join(str(w.message) for w in caught)
    assert "below its target" in text and "never" in text, text
