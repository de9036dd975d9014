"""Hugging Face's Conv1D (GPT-2's weight layer, a Linear storing its weight ``(in, out)``):
every quantization mode and N:M pruning treat it as a Linear, in torch and in the ONNX file.

A tiny random-init GPT-2 from a config (1 block, width 64): nothing downloaded.
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn as nn

import slimkit as sk
from slimkit.techniques.pruning.nm import check_sparsity
from slimkit.techniques.quantization.fake_quant import WeightFakeQuant

transformers = pytest.importorskip("transformers", reason="transformers is not installed (slimkit[hf])")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

N_CONV1D = 4  # 1 block x (c_attn, attn.c_proj, c_fc, mlp.c_proj)


class TinyGPT2(nn.Module):
    """GPT-2 returning logits (a tensor, as export wants)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        cfg = GPT2Config(n_layer=1, n_head=2, n_embd=64, vocab_size=128, n_positions=32,
                         use_cache=False, bos_token_id=0, eos_token_id=0, resid_pdrop=0.0,
                         embd_pdrop=0.0, attn_pdrop=0.0)
        self.gpt = GPT2LMHeadModel(cfg)
        self.eval()

    def forward(self, ids):
        return self.gpt(input_ids=ids, use_cache=False).logits


def _ids(n=4):
    return torch.randint(0, 128, (n, 16), generator=torch.Generator().manual_seed(1))


def _conv1d_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, Conv1D)]


def test_conv1d_is_selected_without_registration_and_its_grid_is_the_linear_grid():
    """The fake-quant of a Conv1D weight W equals the transpose of a Linear's with weight W.T
    (per output channel, and groups of 32 inputs): exactly, not within a tolerance."""
    layer = Conv1D(48, 64)  # nf=48 outputs, nx=64 inputs: weight (64, 48)
    torch.manual_seed(0)
    layer.weight.data.normal_()
    linear = nn.Linear(64, 48)
    linear.weight.data.copy_(layer.weight.data.t())
    for kwargs in ({"mode": "dynamic"}, {"mode": "weight_only", "weight_bits": 4,
                                          "group_size": 32}):
        a, b = nn.Sequential(layer), nn.Sequential(linear)
        import copy
        a, b = copy.deepcopy(a), copy.deepcopy(b)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing skipped: Conv1D is known
            sk.quantize(a, sk.QuantizationConfig(**kwargs))
        sk.quantize(b, sk.QuantizationConfig(**kwargs))
        p = a[0].parametrizations.weight[-1]
        assert isinstance(p, WeightFakeQuant) and p.input_axis == 0
        assert torch.equal(a[0].weight, b[0].weight.t()), kwargs


@pytest.mark.parametrize("mode", ["dynamic", "static", "weight_only", "qat"])
def test_every_quantization_mode_quantizes_gpt2_conv1d_and_exports(tmp_path, mode):
    model = TinyGPT2()
    ids = _ids()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "qat":
            sk.quantize(model, sk.QATConfig())
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=1e-3)
            for _ in range(2):
                loss = model(ids).logsumexp(-1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
        else:
            extra = {"weight_bits": 4, "group_size": 32} if mode == "weight_only" else {}
            sk.quantize(model, sk.QuantizationConfig(mode=mode, **extra),
                        calibration=[ids[:2], ids[2:]] if mode == "static" else None)
    quantized = {n for n, _t, _i, p in sk.core.parametrize.slim_parametrizations(model)
                 if isinstance(p, WeightFakeQuant)}
    assert set(_conv1d_names(model)) <= quantized
    expected = model(ids).detach().numpy()
    path = tmp_path / f"{mode}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.export_onnx(model, path, example_inputs=ids)  # validates against torch too
    graph = onnx.load(str(path)).graph
    ops = Counter(n.op_type for n in graph.node)
    int_inits = [i for i in graph.initializer
                 if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.INT4)
                 and i.name.endswith("_quantized") or i.name.endswith("_quantized_t")]
    conv1d_weights = [n for n in _conv1d_names(model)]
    assert sum(any(i.name.startswith(f"{n}.weight") for i in int_inits)
               for n in conv1d_weights) == N_CONV1D, [i.name for i in int_inits]
    if mode == "dynamic":
        # The Conv1Ds and the LM head tied to the token embedding (its int8 rows read by
        # MatMulInteger too, no DequantizeLinear of the whole table left on every run).
        assert ops["MatMulInteger"] == N_CONV1D + 1 and ops["DequantizeLinear"] == 0, ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: ids.numpy()})[0]
    rel = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    # ORT computes the same integer grid; dynamic / QAT differ by activation rounding only.
    assert rel < 0.02, (mode, rel)


def test_two_four_pruning_of_conv1d_runs_along_its_input_axis_and_survives_export(tmp_path):
    model = TinyGPT2()
    sk.prune(model, sk.MagnitudePruningConfig(pattern="2:4"), targets=["Conv1D"])
    sk.strip(model)
    c_attn = model.gpt.transformer.h[0].attn.c_attn.weight  # (64 inputs, 192 outputs)
    per_group = (c_attn.reshape(16, 4, 192) != 0).sum(1)
    assert int(per_group.max()) == 2 and int(per_group.min()) == 2
    torch_check = check_sparsity(model, "2:4")
    assert all(w.status == "ok" for w in torch_check.weights if "c_" in w.name)
    path = tmp_path / "nm.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.export_onnx(model, path, example_inputs=_ids(2))
    file_check = check_sparsity(path, "2:4")
    ok = [w.name for w in file_check.weights if w.status == "ok"]
    assert len(ok) == N_CONV1D, [(w.name, w.status) for w in file_check.weights]


def test_adaround_skips_conv1d_with_a_warning_naming_it():
    model = TinyGPT2()
    with pytest.warns(UserWarning, match=r"c_attn \(Conv1D: weight stored \(in, out\)"):
        from slimkit.techniques.quantization.prepare import select_layers

        select_layers(model, sk.AdaRoundConfig(), None, None)


def test_registering_conv1d_again_keeps_its_layout_and_a_bad_axis_is_refused():
    from slimkit.core.selection import _INPUT_AXIS, _WEIGHTS, input_axis

    try:
        sk.register_weights(Conv1D, ["weight"])  # what users did before slimkit knew Conv1D
        assert input_axis(Conv1D(8, 4)) == 0
    finally:
        _WEIGHTS.pop(Conv1D, None)
        _INPUT_AXIS.pop(Conv1D, None)
    with pytest.raises(ValueError, match="input_axis must be 0"):
        sk.register_weights(Conv1D, ["weight"], input_axis=2)
