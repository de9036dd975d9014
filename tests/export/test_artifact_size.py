"""What the artifact stores (issue 16, "Smaller"): clustered-then-quantized weights keep one
integer per cluster by default (per-tensor scales for per-tensor clustering), and the
exporter's per-node debug metadata is dropped from deployment files unless asked for.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import numpy_helper

import slimkit as sk

X = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def cnn() -> nn.Module:
    """A 42k-parameter digits-style CNN."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(512, 64), nn.ReLU(),
                         nn.Linear(64, 10)).eval()


def inits(path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def zipped(path) -> int:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.write(path, "m.onnx")
    return len(buf.getvalue())


def clustered() -> nn.Module:
    """16 clusters per layer on weights whose output channels differ in magnitude (as trained
    ones do; random init gives every row the same extremes, and so the same scale)."""
    model = cnn()
    with torch.no_grad():
        for layer in (model[0], model[2], model[6], model[8]):
            rows = layer.weight.shape[0]
            shape = (rows,) + (1,) * (layer.weight.dim() - 1)
            layer.weight.mul_(torch.linspace(0.2, 1.0, rows).reshape(shape))
    return sk.cluster(model, sk.ClusteringConfig(clusters=16))


def test_per_tensor_clusters_get_per_tensor_scales_by_default(tmp_path):
    # Before: the default per-channel scales turned 16 shared values into up to 16 per
    # channel (94 integers in 6.weight here), and the zipped file was 13% larger.
    default = sk.quantize(clustered(), sk.QuantizationConfig(mode="weight_only"))
    per_channel = sk.quantize(clustered(), sk.QuantizationConfig(
        mode="weight_only", overrides={"*": {"per_channel": True}}))   # explicit: kept
    a = sk.export_onnx(default, tmp_path / "default.onnx", example_inputs=X)
    b = sk.export_onnx(per_channel, tmp_path / "per_channel.onnx", example_inputs=X)
    wa, wb = inits(a), inits(b)
    for layer in ("0", "2", "6", "8"):
        assert len(np.unique(wa[f"{layer}.weight_quantized"])) <= 16
        assert wa[f"{layer}.weight_scale"].size == 1
    assert len(np.unique(wb["6.weight_quantized"])) > 16
    assert wb["6.weight_scale"].shape == (64,)
    assert zipped(a) < 0.93 * zipped(b)           # measured 24.0 kB vs 27.2 kB


def test_per_channel_clusters_keep_per_channel_scales(tmp_path):
    model = sk.cluster(cnn(), sk.ClusteringConfig(clusters=8, per_channel=True))
    sk.quantize(model, sk.QuantizationConfig(mode="weight_only"))
    w = inits(sk.export_onnx(model, tmp_path / "pc.onnx", example_inputs=X))
    assert w["6.weight_scale"].shape == (64,)
    assert max(len(np.unique(row)) for row in w["6.weight_quantized"]) <= 8


def test_stripped_clustered_static_model_exports_the_same_integers(tmp_path):
    # Export of a stripped model re-quantizes its baked weights: the per-tensor choice must be
    # made again (the weight lies on the per-tensor grid), or the integers would change.
    model = sk.quantize(clustered(), sk.QuantizationConfig(), calibration=[X])
    a = inits(sk.export_onnx(model, tmp_path / "prepared.onnx", example_inputs=X))
    b = inits(sk.export_onnx(sk.strip(model), tmp_path / "stripped.onnx", example_inputs=X))
    for layer in ("0", "2", "6", "8"):
        np.testing.assert_array_equal(a[f"{layer}.weight_quantized"], b[f"{layer}.weight_quantized"])
        assert b[f"{layer}.weight_scale"].size == 1


def test_debug_metadata_is_dropped_by_default(tmp_path):
    fp32 = sk.export_onnx(cnn(), tmp_path / "fp32.onnx", example_inputs=X)
    kept = sk.export_onnx(cnn(), tmp_path / "kept.onnx", example_inputs=X, keep_metadata=True)
    assert not any(n.metadata_props for n in onnx.load(str(fp32)).graph.node)
    assert any(n.metadata_props for n in onnx.load(str(kept)).graph.node)
    assert kept.stat().st_size > fp32.stat().st_size + 5_000   # ~1 KB per node
    pruned = sk.strip(sk.prune(cnn(), sk.MagnitudePruningConfig(0.5)))
    p = sk.export_onnx(pruned, tmp_path / "pruned.onnx", example_inputs=X)
    assert not any(n.metadata_props for n in onnx.load(str(p)).graph.node)
    q = sk.strip(sk.quantize(cnn(), sk.QuantizationConfig(), calibration=[X]))
    int8 = sk.export_onnx(q, tmp_path / "int8.onnx", example_inputs=X)
    assert not any(n.metadata_props for n in onnx.load(str(int8)).graph.node)
    # 42k parameters: int8 weights are 4x smaller; scales, zero points and names take the rest.
    assert fp32.stat().st_size / int8.stat().st_size > 3.0
