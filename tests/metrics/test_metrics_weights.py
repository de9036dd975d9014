import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from slimkit.metrics.weights import (
    WeightStats,
    onnx_weight_inventory,
    onnx_weight_stats,
    tensor_weight_inventory,
    tensor_weight_stats,
)


def _graph_with_every_kind_of_tensor() -> onnx.ModelProto:
    """(x[2,4] @ W[4,3] + b[3]) reshaped to [3,2] by an int64 shape, @ a Constant 2x2."""
    w = np.array([[0, 1, 2], [0, 1, 2], [0, 0, 0], [3, 3, 3]], dtype=np.float32)
    initializers = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(np.array([1, 0, 2], dtype=np.float32), "b"),
        numpy_helper.from_array(np.array([3, 2], dtype=np.int64), "shape"),
    ]
    constant = helper.make_node(
        "Constant", [], ["C"],
        value=numpy_helper.from_array(np.ones((2, 2), dtype=np.float32)),
    )
    nodes = [
        constant,
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y"]),
        helper.make_node("Reshape", ["y", "shape"], ["r"]),
        helper.make_node("MatMul", ["r", "C"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [3, 2])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_weight_stats_of_one_array():
    stats = WeightStats.from_array("w", np.array([[0.0, 1.0, 1.0, 2.0]]))
    assert (stats.shape, stats.params, stats.nonzero, stats.unique) == ((1, 4), 4, 3, 3)
    assert abs(stats.sparsity - 0.25) < 1e-12
    assert abs(stats.entropy_bytes - 4 * 1.5 / 8) < 1e-12  # p = 1/4, 1/2, 1/4 -> 1.5 bits
    assert WeightStats.from_dict(stats.to_dict()) == stats


def test_onnx_weights_are_2d_numeric_tensors_and_params_skip_int64(tmp_path):
    model = _graph_with_every_kind_of_tensor()
    path = tmp_path / "g.onnx"
    onnx.save(model, path)
    inventory = onnx_weight_inventory(path)
    assert [s.name for s in inventory.layers] == ["W", "C"]  # b is 1-D, shape is int64
    assert inventory.parameters == 12 + 3 + 4  # W, b, C; the int64 shape is not a parameter
    assert inventory.nonzero == 7 + 2 + 4
    w = inventory.layers[0]
    assert (w.shape, w.dtype, w.params, w.nonzero, w.unique) == ((4, 3), "float32", 12, 7, 4)
    assert abs(inventory.sparsity - 5 / 16) < 1e-12  # zeros over W and C only
    assert onnx_weight_stats(model) == inventory.layers  # a ModelProto works as well as a path


def test_state_dict_counts_float_tensors_once_and_skips_int64():
    embedding = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = embedding.weight  # tied: one tensor under two names
    norm = nn.BatchNorm1d(4)  # num_batches_tracked is int64
    model = nn.ModuleDict({"embedding": embedding, "head": head, "norm": norm})
    inventory = tensor_weight_inventory(model.state_dict())
    assert [s.name for s in inventory.layers] == ["embedding.weight"]
    assert inventory.parameters == 40 + 4 * 4  # tied matrix once; BN weight, bias, mean, var


def test_state_dict_bfloat16_and_int8_weights():
    state = {
        "a": torch.tensor([[0.5, 0.0], [0.5, 0.25]], dtype=torch.bfloat16),
        "q": torch.tensor([[1, 0, -1, 0]], dtype=torch.int8),
    }
    stats = {s.name: s for s in tensor_weight_stats(state)}
    assert stats["a"].dtype == "bfloat16" and stats["a"].unique == 3
    assert stats["q"].dtype == "int8" and stats["q"].nonzero == 2
