import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

import slimkit as sk
from slimkit.examples import DigitsCNN
from slimkit.export import ort_session
from slimkit.metrics.weights import onnx_weight_inventory
from slimkit.storage.codebook import encode
from slimkit.techniques.clustering import (
    ClusteringConfig,
    cluster,
    compact_initializers,
    expand_compact,
)


def ops(path):
    return [n.op_type for n in onnx.load(path).graph.node]


def folded(path, tmp_path):
    """Node types and initializer names of ORT's optimized graph of ``path``."""
    opt = tmp_path / "optimized.onnx"
    ort_session(path, optimized_path=opt)
    m = onnx.load(opt)
    return [n.op_type for n in m.graph.node], {t.name for t in m.graph.initializer}


@pytest.mark.parametrize("per_channel", [False, True])
def test_compact_export_is_4x_smaller_and_ort_folds_it_back(seeded, tmp_path, per_channel):
    model = DigitsCNN()
    cluster(model, ClusteringConfig(16, per_channel=per_channel),
            ignore=["conv1"] if per_channel else None)  # conv1: 9 weights per channel
    x = torch.randn(16, 1, 8, 8)
    plain = sk.export_onnx(model, tmp_path / "plain.onnx", example_inputs=x)
    compact = sk.export_onnx(model, tmp_path / "compact.onnx", example_inputs=x, compact=True)
    assert "Gather" not in ops(plain)  # the default export stays plain
    assert ops(compact).count("Gather") == (3 if per_channel else 4)
    ratio = plain.stat().st_size / compact.stat().st_size
    # Per tensor: 1 byte per weight + 17 codes -> 3.87x; per channel adds a 17-code table per
    # row of conv2/fc1/fc2 (and conv1 stays fp32) -> 3.52x (both files without the exporter's
    # debug metadata, which export drops by default).
    assert ratio == pytest.approx(3.52 if per_channel else 3.87, abs=0.1)
    plain_w = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(plain).graph.initializer}
    rebuilt = expand_compact(onnx.load(compact).graph)
    assert len(rebuilt) == (3 if per_channel else 4)
    for name, w in rebuilt.items():  # the stored weights, bit for bit
        assert np.array_equal(w.view(np.uint32), plain_w[name].view(np.uint32)), name
    out_plain = ort_session(plain).run(None, {"input": x.numpy()})[0]
    out_compact = ort_session(compact).run(None, {"input": x.numpy()})[0]
    assert np.array_equal(out_plain, out_compact)  # the same weights, bit for bit
    # ORT folds Cast/Add/Gather on initializers at session start: no codebook node is left.
    kinds, inits = folded(compact, tmp_path)
    assert "Gather" not in kinds and "Cast" not in kinds
    assert not any("__indices" in n or "__codebook" in n for n in inits)


@pytest.mark.parametrize("per_channel", [False, True])
def test_report_reads_the_compact_file_like_the_plain_one(seeded, tmp_path, per_channel):
    model = DigitsCNN()
    sk.prune(model, sk.MagnitudePruningConfig(0.8))
    cluster(model, ClusteringConfig(16, preserve_sparsity=True, per_channel=per_channel),
            ignore=["conv1"] if per_channel else None)
    x = torch.randn(8, 1, 8, 8)
    plain = onnx_weight_inventory(sk.export_onnx(model, tmp_path / "p.onnx", example_inputs=x))
    compact = onnx_weight_inventory(
        sk.export_onnx(model, tmp_path / "c.onnx", example_inputs=x, compact=True))
    # The report rebuilds compact weights from indices + codebooks: the same statistics as
    # the plain file, per-channel codebooks included.
    by_name = {s.name: s for s in plain.layers}
    assert sorted(s.name for s in compact.layers) == sorted(by_name)
    for s in compact.layers:
        ref = by_name[s.name]
        assert (s.shape, s.unique, s.nonzero) == (ref.shape, ref.unique, ref.nonzero)
    assert compact.sparsity == pytest.approx(plain.sparsity, abs=1e-12)
    assert plain.sparsity == pytest.approx(0.8, abs=1e-3)
    assert compact.entropy_bound_bytes == pytest.approx(plain.entropy_bound_bytes, rel=1e-9)
    assert compact.parameters == plain.parameters


def test_encode_is_bit_exact_along_any_axis():
    rng = np.random.default_rng(0)
    codes = rng.standard_normal((64, 8)).astype(np.float32)
    codes[:, 0] = -0.0  # a signed zero must survive as itself
    labels = rng.integers(0, 8, (64, 300))
    w = np.take_along_axis(codes, labels, axis=1)  # 8 values per row, 512 in all
    for arr in (w, w.T.copy()):  # exporters may transpose: the search finds the axis
        indices, codebook, offsets = encode(arr)
        assert indices.dtype == np.uint8 and indices.shape == arr.shape
        flat = indices.astype(np.int64) + offsets
        back = codebook[flat]
        assert np.array_equal(back.view(np.uint32), arr.view(np.uint32))
    assert encode(rng.standard_normal((32, 32)).astype(np.float32)) is None  # 1024 values


def test_only_initializers_that_shrink_are_rewritten():
    from onnx import helper, numpy_helper

    small = numpy_helper.from_array(np.array([[1.0, 2.0]], dtype=np.float32), "small")
    big = numpy_helper.from_array(np.tile(np.float32([1, 2, 3]), (40, 10)), "big")
    ints = numpy_helper.from_array(np.ones((40, 40), dtype=np.int64), "ints")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["big"], ["out"])], "g", [],
        [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [40, 30])],
        initializer=[small, big, ints])
    assert compact_initializers(graph) == ["big"]
    assert {t.name for t in graph.initializer} == {"small", "ints", "big__indices",
                                                     "big__codebook"}


def test_compact_export_of_a_model_zoo_lstm(seeded, tmp_path):
    from tests.conftest import LSTMNet

    model = LSTMNet().eval()
    cluster(model, ClusteringConfig(16))
    x = torch.randn(3, 5, 8)
    compact = sk.export_onnx(model, tmp_path / "c.onnx", example_inputs=x, compact=True)
    # Both layers' W and R (ONNX LSTM inputs, gates reordered) and the head: 5 tensors.
    names = [t.name for t in onnx.load(compact).graph.initializer if t.name.endswith("__indices")]
    assert len(names) == 5
    kinds, inits = folded(compact, tmp_path)
    assert not any("__codebook" in n for n in inits)
    got = ort_session(compact).run(None, {"input": x.numpy()})[0]
    assert np.allclose(got, model(x).detach().numpy(), atol=1e-5)


def test_embedding_and_linear_in_one_model(seeded, tmp_path):
    model = nn.Sequential(nn.Embedding(100, 32), nn.Flatten(), nn.Linear(4 * 32, 8))
    cluster(model, ClusteringConfig(8))
    x = torch.randint(0, 100, (2, 4))
    path = sk.export_onnx(model, tmp_path / "e.onnx", example_inputs=x, compact=True)
    got = ort_session(path).run(None, {"input": x.numpy()})[0]
    assert np.allclose(got, model(x).detach().numpy(), atol=1e-6)
