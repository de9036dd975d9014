"""check-sparsity reads quantized files: through DequantizeLinear, Cast * scale, and the integer
weights of MatMulInteger / QLinearConv / QGemm / MatMulNBits (issue 16, item 10).

Before: a pruned-then-quantized file had no float initializer feeding a Conv / Gemm / MatMul,
so ``slimkit check-sparsity`` reported nothing to check (exit 1).
"""

from __future__ import annotations

import onnx
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

import slimkit as sk
from slimkit.export import ort_session
from slimkit.techniques.pruning.nm import check_sparsity

X = torch.randn(8, 8, 4, 4, generator=torch.Generator().manual_seed(0))
TOKENS = torch.randn(4, 5, 64, generator=torch.Generator().manual_seed(0))   # 3-D: MatMul


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def pruned_24(model) -> nn.Module:
    return sk.strip(sk.prune(model, sk.MagnitudePruningConfig(pattern="2:4")))


def optimized(path, tmp_path):
    opt = tmp_path / f"{path.stem}.opt.onnx"
    ort_session(path, optimized_path=opt)
    return opt


# (model, inputs, config, op ORT runs the weights with, weights checked in the file and in
# ORT's optimized graph: ORT's NCHWc convs store a blocked layout and are not read).
CASES = {
    "static-cnn": (net, X, sk.QuantizationConfig(), "QLinearConv", 3, 3),
    "weight-only-int8-cnn": (net, X, sk.QuantizationConfig(mode="weight_only"), "FusedGemm", 3, 2),
    "dynamic-mlp": (mlp, TOKENS, sk.QuantizationConfig(mode="dynamic"), "DynamicQuantizeMatMul",
                    2, 2),
    "weight-only-int4-mlp": (mlp, TOKENS, sk.QuantizationConfig(mode="weight_only", weight_bits=4,
                                                                group_size=32), "MatMulNBits", 2, 2),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_pruned_then_quantized_file_is_checked(kind, tmp_path):
    make, x, config, fused, in_file, in_runtime = CASES[kind]
    model = sk.quantize(pruned_24(make()), config,
                        calibration=[x] if config.mode == "static" else None)
    path = sk.export_onnx(model, tmp_path / f"{kind}.onnx", example_inputs=x)
    opt = optimized(path, tmp_path)
    assert fused in {n.op_type for n in onnx.load(str(opt)).graph.node}
    for file, count in ((path, in_file), (opt, in_runtime)):
        report = check_sparsity(file, "2:4")
        assert len(report.checked) == count, (file, [w.name for w in report.weights])
        assert report.ok, [(w.name, w.status) for w in report.weights]
        assert all(w.sparsity >= 0.5 for w in report.checked)


def test_unpruned_quantized_file_violates(tmp_path):
    model = sk.quantize(net(), sk.QuantizationConfig(), calibration=[X])   # not pruned
    path = sk.export_onnx(model, tmp_path / "dense.onnx", example_inputs=X)
    for file in (path, optimized(path, tmp_path)):
        report = check_sparsity(file, "2:4")
        assert len(report.checked) == 3
        assert [w.status for w in report.checked] == ["violated"] * 3


def test_cli_checks_an_int8_file(tmp_path):
    from slimkit.cli import main

    model = sk.quantize(pruned_24(net()), sk.QuantizationConfig(mode="weight_only"))
    path = sk.export_onnx(model, tmp_path / "wo.onnx", example_inputs=X)
    result = CliRunner().invoke(main, ["check-sparsity", str(path), "--pattern", "2:4"])
    assert result.exit_code == 0, result.output
    assert "all 3 checked weight(s) satisfy 2:4" in result.output
