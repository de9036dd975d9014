"""report() on an ONNX file and on a module without example inputs; DeploymentReport methods."""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.nn.utils import parametrize

from slimkit.metrics import DeploymentReport, report, zipped_size

PARAMETERS = 16 * 32 + 32 + 32 * 4 + 4  # two weight matrices, two biases: 676
WEIGHT_PARAMS = 16 * 32 + 32 * 4  # 640, half of them zeroed by the fixture
# Each zeroed matrix: half zeros, the other half all distinct (random floats), so
# H = 0.5 * 1 + 0.5 * log2(n / 2) bits: 16x32 -> 5 bits, 32x4 -> 4 bits.
ENTROPY_BYTES = 512 * 5 / 8 + 128 * 4 / 8  # 384
FAST = {"latency_runs": 20, "warmup": 2, "memory": False}


def accuracy(predict, inputs, labels) -> float:
    return float((predict(inputs).argmax(dim=1) == labels).float().mean())


@pytest.fixture(scope="module")
def full_report(mlp_onnx, example_input, eval_data):
    inputs, labels = eval_data
    return report(
        mlp_onnx, example_input, batch_size=32, latency_runs=30, warmup=3, memory=True,
        eval_fn=lambda predict: accuracy(predict, inputs, labels),
    )


def test_counts_of_a_half_pruned_model(full_report, mlp_onnx):
    r = full_report
    assert (r.name, r.source, r.artifact) == ("mlp", "onnx", str(mlp_onnx))
    assert r.parameters == PARAMETERS
    assert r.nonzero == WEIGHT_PARAMS // 2 + 32 + 4  # random biases have no exact zero
    assert abs(r.sparsity - 0.5) < 1e-6
    assert [(s.name, s.shape) for s in r.layers] == [("0.weight", (32, 16)), ("2.weight", (4, 32))]
    assert r.unique_values == (256 + 1) + (64 + 1)  # distinct non-zeros plus the zero
    assert abs(r.entropy_bound_bytes - ENTROPY_BYTES) < 1e-9
    assert abs(r.bits_per_weight - 8 * ENTROPY_BYTES / WEIGHT_PARAMS) < 1e-9


def test_sizes_are_those_of_the_file(full_report, mlp_onnx):
    assert full_report.raw_bytes == mlp_onnx.stat().st_size
    assert full_report.zipped_bytes == zipped_size(mlp_onnx)
    # Half the weights are zero: zipped must beat raw, and the entropy bound beats zipped.
    assert full_report.entropy_bound_bytes < full_report.zipped_bytes < full_report.raw_bytes


def test_latency_and_memory_are_measured(full_report):
    latency = full_report.latency
    assert latency["p50_ms"] > 0 and latency["p90_ms"] >= latency["p50_ms"]
    assert (latency["batch"], latency["threads"], latency["runs"]) == (32, 2, 30)
    assert full_report.memory["peak_mb"] > 0


def test_accuracy_is_measured_on_the_artifact(full_report, mlp, eval_data):
    inputs, labels = eval_data
    with torch.no_grad():
        expected = accuracy(mlp, inputs, labels)
    assert 0.05 < expected < 0.95  # the data is not trivially all right or all wrong
    # Same decisions from ORT and torch: logits agree to ~1e-6, far below any gap here.
    assert full_report.metrics == {"eval": expected}


def test_predict_takes_any_batch_and_returns_torch(mlp_onnx, mlp, eval_data):
    inputs, _ = eval_data
    seen = {}

    def eval_fn(predict):
        seen["one"], seen["many"] = predict(inputs[:1]), predict(inputs.numpy())
        return {"top1": 0.5, "loss": 1.25}

    r = report(mlp_onnx, eval_fn=eval_fn, **FAST)
    assert r.metrics == {"top1": 0.5, "loss": 1.25}  # a dict is stored as is
    assert isinstance(seen["one"], torch.Tensor) and seen["one"].shape == (1, 4)
    with torch.no_grad():
        torch.testing.assert_close(seen["many"], mlp(inputs), atol=1e-5, rtol=1e-5)


def test_random_inputs_when_none_given(mlp_onnx):
    assert report(mlp_onnx, batch_size=4, **FAST).latency["batch"] == 4
    assert report(mlp_onnx, **FAST).latency["batch"] == 1  # dynamic batch -> 1
    assert report(mlp_onnx, latency_runs=0, memory=False).latency is None


def test_json_round_trip(full_report, tmp_path):
    path = tmp_path / "out" / "report.json"
    text = full_report.to_json(path)
    assert json.loads(path.read_text()) == json.loads(text)
    assert DeploymentReport.from_dict(json.loads(text)) == full_report
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temp file left


def test_compare_with_itself_is_all_ones(full_report):
    ratios = full_report.compare(full_report)
    assert set(ratios) == {
        "parameters", "nonzero", "unique_values", "raw_bytes", "zipped_bytes",
        "entropy_bound_bytes", "latency_p50_ms", "latency_p90_ms", "peak_mb",
    }
    assert all(value == 1.0 for value in ratios.values())


def test_compare_dense_with_pruned(dense_onnx, mlp_onnx, example_input, eval_data):
    inputs, labels = eval_data

    def eval_fn(predict):
        return accuracy(predict, inputs, labels)

    dense = report(dense_onnx, example_input, eval_fn=eval_fn, **FAST)
    pruned = report(mlp_onnx, example_input, eval_fn=eval_fn, **FAST)
    ratios = dense.compare(pruned)  # dense / pruned
    assert ratios["parameters"] == 1.0  # zeros are still stored
    assert abs(ratios["nonzero"] - PARAMETERS / (WEIGHT_PARAMS // 2 + 36)) < 1e-12
    # Zeros compress to almost nothing; the random non-zeros barely compress at all, so
    # zipping the pruned file saves close to half of the weight bytes.
    assert ratios["zipped_bytes"] > 1.4
    text = _render(dense.compare_table(pruned, names=("dense", "pruned")))
    assert "dense" in text and "pruned" in text and "x smaller" in text
    delta = 100 * (pruned.metrics["eval"] - dense.metrics["eval"])
    assert f"{delta:+.2f} pts" in text


def test_table_and_str(full_report):
    text = str(full_report)
    assert "Deployment report: mlp" in text and "676" in text and "50.00%" in text
    assert "batch 32, 2 threads" in text
    assert "0.weight" in _render(full_report.layers_table())
    assert full_report.__rich__().row_count == full_report.table().row_count


def test_plot_writes_a_png(full_report, tmp_path):
    path = full_report.plot(tmp_path / "layers.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    assert [p.name for p in tmp_path.iterdir()] == ["layers.png"]


def test_bad_targets_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.onnx.*accepts the path of an"):
        report(tmp_path / "missing.onnx")
    text_file = tmp_path / "model.txt"
    text_file.write_text("not a model")
    with pytest.raises(ValueError, match=r"model\.txt.* is not an \.onnx file"):
        report(text_file)
    with pytest.raises(ValueError, match="is not an .onnx file"):
        report(tmp_path)
    with pytest.raises(TypeError, match="path to an .onnx file or a torch.nn.Module, got int"):
        report(3)


def test_bad_inputs_name_the_input_and_its_shape(mlp_onnx, example_input):
    with pytest.raises(ValueError, match=r"got 2 example input\(s\).*takes 1: input \[batch, 16"):
        report(mlp_onnx, (example_input, example_input), **FAST)
    expected = r"'input'.*rank 1.*expects rank 2 with shape \[batch, 16\]"
    with pytest.raises(ValueError, match=expected):
        report(mlp_onnx, example_input[0], **FAST)
    with pytest.raises(ValueError, match=r"'input'.*dim 1 must be 16"):
        report(mlp_onnx, example_input[:, :8], **FAST)
    with pytest.raises(ValueError, match=r"'input' has dtype int64.*expects float32"):
        report(mlp_onnx, torch.zeros(2, 16, dtype=torch.int64), **FAST)
    with pytest.raises(ValueError, match="batch_size must be a positive int or None, got 0"):
        report(mlp_onnx, example_input, batch_size=0, **FAST)
    with pytest.raises(TypeError, match="eval_fn must return a float or a dict"):
        report(mlp_onnx, example_input, eval_fn=lambda predict: "good", **FAST)


def test_batch_size_needs_a_dynamic_axis(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(np.ones((4, 2), np.float32), "W")],
    )
    path = tmp_path / "fixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert report(path, **FAST).latency["batch"] == 1
    with pytest.raises(ValueError, match=r"dynamic first dim.*x \[1, 4\]"):
        report(path, batch_size=8, **FAST)


class HalfMask(nn.Module):
    """A pruning-style parametrization: multiplies the weight by a fixed 0/1 mask buffer."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        mask = torch.ones(weight.numel())
        mask[torch.randperm(weight.numel(), generator=torch.Generator().manual_seed(5))
             [: weight.numel() // 2]] = 0
        self.register_buffer("mask", mask.view_as(weight))

    def forward(self, weight):
        return weight * self.mask


def test_module_without_inputs_reports_its_baked_state_dict(mlp_factory, eval_data):
    model = mlp_factory(zero_half=False)
    for layer in (model[0], model[2]):
        parametrize.register_parametrization(layer, "weight", HalfMask(layer.weight))
    inputs, labels = eval_data
    r = report(model, eval_fn=lambda predict: accuracy(predict, inputs, labels))
    assert (r.name, r.source, r.latency, r.memory) == ("Sequential", "torch", None, None)
    assert r.parameters == PARAMETERS  # masks and originals are gone after baking
    assert abs(r.sparsity - 0.5) < 1e-6
    assert abs(r.entropy_bound_bytes - ENTROPY_BYTES) < 1e-9
    with torch.no_grad():
        assert r.metrics == {"eval": accuracy(model, inputs, labels)}
    assert parametrize.is_parametrized(model[0])  # the user's model is left as it was
    assert r.zipped_bytes < r.raw_bytes
    with pytest.raises(ValueError, match="batch_size is used for latency"):
        report(model, batch_size=8)


def test_module_state_dict_size_is_torch_save_size(mlp):
    import io

    buffer = io.BytesIO()
    torch.save(mlp.state_dict(), buffer)
    r = report(mlp)
    assert r.raw_bytes == len(buffer.getvalue())
    assert r.zipped_bytes == zipped_size(buffer.getvalue())


def _render(table) -> str:
    import io

    from rich.console import Console

    buffer = io.StringIO()
    Console(file=buffer, width=120, color_system=None).print(table)
    return buffer.getvalue()


def test_module_predict_runs_in_eval_mode_without_touching_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(p=0.5)).train()
    x = torch.randn(64, 8)
    seen = {}

    def eval_fn(predict):
        first, second = predict(x), predict(x)
        seen["requires_grad"] = first.requires_grad
        return float(torch.equal(first, second))  # dropout active would differ

    assert report(model, eval_fn=eval_fn).metrics == {"eval": 1.0}
    assert seen["requires_grad"] is False  # ran under torch.no_grad
    assert model.training  # the user's module keeps its mode
