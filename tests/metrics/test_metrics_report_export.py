"""report(nn.Module, example_inputs): the module is exported with slimkit.export.export_onnx."""

import torch

from slimkit.metrics import report

PARAMETERS = 16 * 32 + 32 + 32 * 4 + 4


def accuracy(predict, inputs, labels) -> float:
    return float((predict(inputs).argmax(dim=1) == labels).float().mean())


def test_module_with_inputs_is_measured_as_its_onnx_export(mlp, mlp_onnx, example_input,
                                                          eval_data):
    inputs, labels = eval_data
    r = report(
        mlp, example_input, batch_size=16, latency_runs=20, warmup=2,
        eval_fn=lambda predict: accuracy(predict, inputs, labels),
    )
    assert (r.name, r.source, r.artifact) == ("Sequential", "onnx", None)
    assert r.parameters == PARAMETERS
    assert abs(r.sparsity - 0.5) < 1e-6
    assert r.latency["batch"] == 16 and r.latency["p90_ms"] >= r.latency["p50_ms"] > 0
    assert r.memory["peak_mb"] > 0
    with torch.no_grad():
        # Same decisions from ORT and torch: logits agree to ~1e-6, far below any gap here.
        assert r.metrics == {"eval": accuracy(mlp, inputs, labels)}
    # The export and the fixture's TorchScript export hold the same weights.
    direct = report(mlp_onnx, example_input, latency_runs=0, memory=False)
    assert r.unique_values == direct.unique_values
    assert abs(r.entropy_bound_bytes - direct.entropy_bound_bytes) < 1e-9
