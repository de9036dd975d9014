"""Layer and op coverage of static / dynamic int8: ReLU6, GELU, Concat, ConvTranspose, Embedding."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import numpy_helper

import slimkit as sk
from slimkit.techniques.quantization import QuantizationConfig, quantize
from tests.quantization.conftest import optimized_ops, ort_logits


class Concat(nn.Module):
    """Owns a concatenation, so its output can carry a quantizer (as a residual block does)."""

    def forward(self, a, b):
        return torch.cat([a, b], dim=1)


class Mixed(nn.Module):
    """ReLU6 stem, two branches joined by a concat, a ConvTranspose upsampler, a GELU."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU6()
        self.branch_a = nn.Conv2d(8, 8, 1)
        self.branch_b = nn.Conv2d(8, 8, 3, padding=1)
        self.join = Concat()
        self.mix = nn.Conv2d(16, 16, 1)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.gelu = nn.GELU()
        self.head = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.act(self.stem(x))
        x = self.join(torch.relu(self.branch_a(x)), torch.relu(self.branch_b(x)))
        x = self.gelu(self.up(torch.relu(self.mix(x))))
        return self.fc(torch.relu(self.head(x)).mean((2, 3)))


def _quantized_mixed(tmp_path):
    torch.manual_seed(0)
    model = Mixed().eval()
    gen = torch.Generator().manual_seed(1)
    calib, x = torch.randn(32, 3, 8, 8, generator=gen), torch.randn(64, 3, 8, 8, generator=gen)
    with torch.no_grad():
        ref = model(x).numpy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantize(model, QuantizationConfig(), calibration=calib, progress=False)
    path = sk.export_onnx(model, tmp_path / "mixed.onnx", example_inputs=x[:8])  # validated
    return model, x, ref, path, [str(w.message) for w in caught if "slimkit" in str(w.message)]


def test_relu6_concat_gelu_and_convtranspose_quantize_and_export(tmp_path):
    model, x, ref, path, warned = _quantized_mixed(tmp_path)
    assert not warned, warned  # every weight layer here has an int8 path
    # ReLU6 is applied by the stem's output quantizer (as a Clip ORT drops before Q) ...
    assert model.stem.sk_output_quant.relu_first and model.stem.sk_output_quant.relu_cap == 6.0
    # ... so both branches read the stem's grid instead of quantizing their input again.
    assert model.branch_a._sk_input_from == "stem" and model.branch_b._sk_input_from == "stem"
    # The concatenation is an int8 block output read directly by the next conv.
    assert "sk_output_quant" in model.join._modules and model.mix._sk_input_from == "join"
    # ConvTranspose: int8 weights, float arithmetic (no activation quantizers on it).
    assert not {"sk_input_quant", "sk_output_quant"} & set(model.up._modules)

    ops = optimized_ops(path, tmp_path)
    assert {"QLinearConv", "QLinearConcat", "ConvTranspose"} <= ops, ops
    assert "Clip" not in ops and "Concat" not in ops, ops  # fused into the int8 kernels
    ints = {i.name: i for i in onnx.load(str(path)).graph.initializer
            if i.data_type == onnx.TensorProto.INT8}
    weights = sorted(n for n in ints if n.endswith("weight_quantized"))
    # every conv / linear / conv-transpose weight is stored int8
    assert weights == sorted(f"{m}.weight_quantized" for m in
                             ("stem", "branch_a", "branch_b", "mix", "up", "head", "fc")), weights
    got = ort_logits(path, x)
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.mean() >= 0.99, cos.mean()  # random init: int8 logits close to fp32


class Bag(nn.Module):
    """Embedding lookups feeding Linear layers: a miniature of a transformer's input path."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(500, 32)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 3)

    def forward(self, ids):
        return self.fc2(torch.nn.functional.gelu(self.fc1(self.emb(ids).mean(1))))


def test_int8_embedding_is_looked_up_before_dequantizing(tmp_path):
    torch.manual_seed(0)
    model = Bag().eval()
    ids = torch.randint(0, 500, (16, 12))
    quantize(model, QuantizationConfig(mode="dynamic"))
    with torch.no_grad():
        ref = model(ids).numpy()
    path = sk.export_onnx(model, tmp_path / "bag.onnx", example_inputs=ids[:4])
    proto = onnx.load(str(path))
    table = next(i for i in proto.graph.initializer if i.name.startswith("emb.weight_quantized"))
    assert table.data_type == onnx.TensorProto.INT8 and list(table.dims) == [500, 32]
    # Only the looked-up rows are scaled: nothing dequantizes the whole table per run.
    consumers = [n.op_type for n in proto.graph.node if table.name in n.input]
    assert consumers == ["Gather"], consumers
    opt = tmp_path / "opt.onnx"
    from slimkit.export import ort_session

    sess = ort_session(path, optimized_path=opt)
    got = sess.run(None, {sess.get_inputs()[0].name: ids.numpy()})[0]
    deq_inputs = {n.input[0] for n in onnx.load(str(opt)).graph.node
                  if n.op_type == "DequantizeLinear"}
    assert table.name not in deq_inputs
    np.testing.assert_allclose(got, ref, atol=5e-2, rtol=5e-2)  # dynamic int8 rounding
    scale = numpy_helper.to_array(next(i for i in proto.graph.initializer
                                       if i.name.startswith("emb.weight_row_scale")))
    assert scale.shape == (500, 1)  # one scale per row (per output channel)


def test_transformer_encoder_static_and_dynamic_int8_export(tmp_path):
    """MultiheadAttention's out_proj never runs as a module (its weight is read directly),
    and TransformerEncoder's cloned layers start with equal weights that the exporter
    shares: static int8 exports it with int8 weights and float activations (one warning
    names it), dynamic int8 rewrites each shared weight once."""
    from tests.conftest import TransformerNet

    for mode in ("static", "dynamic"):
        torch.manual_seed(0)
        model = TransformerNet().eval()
        x = torch.randn(16, 6, 32)
        kwargs = {"calibration": x, "progress": False} if mode == "static" else {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quantize(model, QuantizationConfig(mode=mode), **kwargs)
            path = sk.export_onnx(model, tmp_path / f"{mode}.onnx", example_inputs=x[:4])
        msgs = [str(w.message) for w in caught]
        if mode == "static":
            assert any("export with int8 weights but float activations: "
                       "encoder.layers.0.self_attn.out_proj" in m for m in msgs), msgs
        with torch.no_grad():
            ref = model(x).numpy()
        got = ort_logits(path, x)
        np.testing.assert_allclose(got, ref, atol=0.1, rtol=0.05)  # validated on export too
        ints = [i for i in onnx.load(str(path)).graph.initializer
                if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
        assert len(ints) >= 4  # linear1 / linear2 of both layers at least (shared if equal)
