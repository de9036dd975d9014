import os

import numpy as np
import pytest
import torch
import torch.nn as nn

import slimkit as sk
from slimkit.export import onnx as onnx_export
from slimkit.export import ort_session


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


@pytest.mark.parametrize("dynamo", [True, False])
def test_export_writes_a_validated_file_with_a_dynamic_batch_axis(tmp_path, dynamo):
    model = small_model()
    sk.prune(model, sk.MagnitudePruningConfig(0.5))
    x = torch.randn(1, 6)  # batch 1 must not freeze the batch axis
    path = sk.export_onnx(model, tmp_path / "m.onnx", example_inputs=x, dynamo=dynamo)
    sess = ort_session(path)
    big = torch.randn(37, 6)
    got = sess.run(None, {"input": big.numpy()})[0]
    np.testing.assert_allclose(got, model(big).detach().numpy(), atol=1e-5, rtol=1e-4)
    # The caller's model is untouched: still prepared.
    assert hasattr(model[0], "parametrizations") and sk.records(model)
    assert os.listdir(tmp_path) == ["m.onnx"]


def test_wrong_example_inputs_raise_and_write_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"example_inputs do not fit Sequential: got input shape\(s\) \(4, 5\)"):
        sk.export_onnx(small_model(), tmp_path / "m.onnx", example_inputs=torch.randn(4, 5))
    with pytest.raises(ValueError, match="example_inputs is required"):
        sk.export_onnx(small_model(), tmp_path / "m.onnx", example_inputs=None)
    with pytest.raises(ValueError, match=r"path must end in .onnx"):
        sk.export_onnx(small_model(), tmp_path / "m.pt", example_inputs=torch.randn(2, 6))
    assert os.listdir(tmp_path) == []


def test_disagreeing_runtime_output_refuses_to_write(tmp_path, monkeypatch):
    real = onnx_export.run_torch
    monkeypatch.setattr(onnx_export, "run_torch", lambda m, x: [t + 0.5 for t in real(m, x)])
    with pytest.raises(sk.ExportValidationError, match=r"max abs diff 0.5 exceeds") as info:
        sk.export_onnx(small_model(), tmp_path / "m.onnx", example_inputs=torch.randn(4, 6))
    assert info.value.max_abs_diff == pytest.approx(0.5, abs=1e-5)
    assert os.listdir(tmp_path) == []


def test_interrupted_export_leaves_no_file(tmp_path, monkeypatch):
    # The proto is rewritten in memory and written once: interrupt that write half-way.
    def interrupted(proto, tmp):  # noqa: ARG001
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "save_proto", interrupted)
    (tmp_path / "m.onnx").write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        sk.export_onnx(small_model(), tmp_path / "m.onnx", example_inputs=torch.randn(2, 6))
    assert os.listdir(tmp_path) == ["m.onnx"] and (tmp_path / "m.onnx").read_bytes() == b"old"


def test_multiple_inputs_and_outputs(tmp_path):
    class TwoInTwoOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(3, 4)

        def forward(self, x, y):
            h = self.a(x) + self.b(y)
            return h, h.sum(1)

    torch.manual_seed(0)
    m = TwoInTwoOut()
    x, y = torch.randn(5, 4), torch.randn(5, 3)
    path = sk.export_onnx(m, tmp_path / "two.onnx", example_inputs=(x, y))
    sess = ort_session(path)
    assert [i.name for i in sess.get_inputs()] == ["input_0", "input_1"]
    out = sess.run(None, {"input_0": x.numpy(), "input_1": y.numpy()})
    assert len(out) == 2 and np.allclose(out[1], m(x, y)[1].detach().numpy(), atol=1e-5)


def test_technique_export_hooks_run_on_the_copy_and_the_onnx_model(tmp_path):
    from dataclasses import dataclass

    import onnx

    from slimkit.core import registry

    @dataclass
    class TagConfig(sk.Config):
        tag: str = "x"

    seen = {}

    def pre(model, ctx):
        seen["records"] = [r["technique"] for r in ctx.records]
        ctx.suggest_tolerance(0.5, 0.0)

    def post(proto, ctx):
        proto.metadata_props.add(key="tag", value=f"atol={ctx.atol}")
        return proto

    registry.register_technique("test-tag", TagConfig, lambda m, c, layers: None,
                                pre_export=pre, post_export=post)
    try:
        model = small_model()
        sk.apply(model, TagConfig())
        path = sk.export_onnx(model, tmp_path / "t.onnx", example_inputs=torch.randn(2, 6))
        meta = {p.key: p.value for p in onnx.load(path).metadata_props}
        assert seen["records"] == ["test-tag"] and meta["tag"] == "atol=0.5"
        path = sk.export_onnx(model, tmp_path / "u.onnx", example_inputs=torch.randn(2, 6),
                              atol=1e-5)  # an explicit tolerance wins over the suggestion
        assert {p.key: p.value for p in onnx.load(path).metadata_props}["tag"] == "atol=1e-05"
    finally:
        registry._TECHNIQUES.pop("test-tag")
