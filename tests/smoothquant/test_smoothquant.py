"""SmoothQuant W8A8 on small random Llama models: smoothing, calibration, errors, export."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import slimkit as sk
from slimkit.techniques.quantization.smoothquant import smoothing_report
from slimkit.techniques.quantization.smoothquant_config import SmoothQuantConfig
from slimkit.techniques.quantization.smoothquant_scales import find_groups, fold, smooth_scales

from .conftest import outlier_llama, token_batches


def _quantize(model, config, batches):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the tied embedding / head stay float: tested below
        return sk.quantize(model, config, calibration=batches, progress=False)


def _rel_error(model, ref, batches) -> float:
    with torch.no_grad():
        num = sum(float((model(**b).logits - ref(**b).logits).pow(2).sum()) for b in batches)
        den = sum(float(ref(**b).logits.pow(2).sum()) for b in batches)
    return num / den


def test_scales_follow_the_formula():
    x = torch.tensor([8.0, 1.0, 0.5])
    w = torch.tensor([[0.5, 2.0, 1.0], [-1.0, 0.5, 0.25]])
    s = smooth_scales(x, [w], 0.5)
    expected = x.sqrt() / torch.tensor([1.0, 2.0, 1.0]).sqrt()
    assert torch.allclose(s, expected, rtol=1e-6)
    assert torch.allclose(smooth_scales(x, [w], 1.0), x, rtol=1e-6)


def test_folding_keeps_the_float_block_exactly(llama, batches):
    block = llama.model.layers[0]
    captured = {}

    def grab(mod, args, kwargs):
        captured["in"] = (args, kwargs)

    h = block.register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        llama(**batches[0], use_cache=False)
    h.remove()
    args, kwargs = captured["in"]
    with torch.no_grad():
        ref = block(*args, **kwargs)
        ref = ref[0] if isinstance(ref, tuple) else ref
    layers = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    groups = find_groups(block, layers, args, kwargs)
    kinds = {tuple(g["layers"]): (g["producer"], g["kind"]) for g in groups}
    assert kinds[("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")] == (
        "input_layernorm", "norm")
    assert kinds[("mlp.gate_proj", "mlp.up_proj")] == ("post_attention_layernorm", "norm")
    assert kinds[("mlp.down_proj",)] == ("mlp.up_proj", "rows")
    assert kinds[("self_attn.o_proj",)] == ("self_attn.v_proj", "rows")
    g = torch.Generator().manual_seed(0)
    for grp in groups:
        fold(block, grp, torch.rand(64 if grp["layers"][0] != "mlp.down_proj" else 128,
                                    generator=g) * 10 + 0.1)
    with torch.no_grad():
        out = block(*args, **kwargs)
        out = out[0] if isinstance(out, tuple) else out
    # Exact in real arithmetic; float32 rounding only.
    assert float((out - ref).abs().max()) <= 1e-4 * float(ref.abs().max())


def test_smoothing_beats_naive_static_w8a8_and_search_is_no_worse(llama, batches):
    held = token_batches(n=2, seed=7)
    errs = {}
    for alpha in (None, 0.5, "search"):
        model = _quantize(copy.deepcopy(llama), SmoothQuantConfig(alpha=alpha), batches)
        errs[alpha] = _rel_error(model, llama, held)
        used = set(smoothing_report(model).values())
        if alpha == "search":
            assert used <= set(SmoothQuantConfig().alpha_grid)
        else:
            assert used == {alpha}
    # Measured (seed 0): naive 9.9e-3, alpha 0.5 3.0e-3, searched 1.9e-3 relative logit MSE.
    assert errs[0.5] < 0.6 * errs[None]
    assert errs["search"] <= 1.05 * errs[0.5]


def test_gqa_o_proj_is_left_unsmoothed_with_its_name(batches):
    model = outlier_llama(kv_heads=2)
    with pytest.warns(UserWarning, match=r"model\.layers\.0\.self_attn\.o_proj \(no norm"):
        sk.quantize(model, SmoothQuantConfig(alpha=0.5), calibration=batches, progress=False)
    report = smoothing_report(model)
    assert report["model.layers.0.self_attn.o_proj"] is None
    assert report["model.layers.0.self_attn.q_proj"] == 0.5


class _PostNorm(nn.Module):
    """A norm whose output also feeds the residual: it cannot absorb 1/s."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        h = self.norm(x)
        return h + self.fc(h)


class _Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([_PostNorm() for _ in range(2)])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def test_norm_that_cannot_absorb_is_skipped_with_a_warning():
    torch.manual_seed(0)
    model = _Stack()
    with torch.no_grad():
        for b in model.blocks:
            b.norm.weight[:2] = 15.0
    x = torch.randn(256, 16)
    ref = model(x)
    with pytest.warns(UserWarning, match=r"blocks\.0\.fc \(blocks\.0\.norm|blocks\.0\.fc \(norm"):
        sk.quantize(model, SmoothQuantConfig(alpha=0.5, calibration_tokens=64), calibration=x,
                    progress=False)
    assert smoothing_report(model)["blocks.0.fc"] is None
    # The function is unchanged apart from W8A8 rounding.
    assert float((model(x) - ref).abs().max()) < 0.1 * float(ref.abs().max())


def test_bad_input_is_refused_with_the_field_named(llama, batches):
    with pytest.raises(ValueError, match="alpha"):
        SmoothQuantConfig(alpha=1.5)
    with pytest.raises(ValueError, match="alpha"):
        SmoothQuantConfig(alpha="auto")
    with pytest.raises(ValueError, match="needs calibration data"):
        sk.quantize(copy.deepcopy(llama), SmoothQuantConfig())
    with pytest.raises(ValueError, match=r"128 tokens .* at least 512 \(SmoothQuantConfig"):
        sk.quantize(copy.deepcopy(llama), SmoothQuantConfig(), calibration=batches[:1])


class _Logits(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids, use_cache=False).logits


def test_export_runs_int8_matmuls_and_matches_torch(llama, batches, tmp_path):
    import onnx
    import onnxruntime as ort

    # Records live on the model that was quantized: wrap first (export takes one tensor).
    model = _quantize(_Logits(llama), SmoothQuantConfig(alpha=0.5), batches)
    ids = token_batches(n=1, batch=2, seq=16, seed=5)[0]["input_ids"]
    path = sk.export_onnx(model, tmp_path / "w8a8.onnx", ids)
    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("MatMulInteger") == 2 * 7            # every block Linear
    assert ops.count("QuantizeLinear") == 2 * 7
    int8 = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(int8) == 2 * 7
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: ids.numpy()})[0]
    with torch.no_grad():
        ref = model(ids).numpy()
    # Same integers on both sides: only float summation order differs (measured 2e-7).
    assert np.abs(got - ref).max() < 1e-3


def test_rewriting_the_float_graph_gives_the_exported_w8a8_decoder(tmp_path):
    import onnx

    from slimkit.examples.llm import tiny_llama
    from slimkit.export.causal_lm import (
        _DecoderWithCache,
        decoder_shape,
        export_causal_lm,
        validate_decoder,
    )
    from slimkit.export.pipeline import deployable
    from slimkit.techniques.quantization.smoothquant_export import rewrite_float_graph

    base = tiny_llama(layers=1)
    with torch.no_grad():   # distinct norm gains, as trained (equal ones share an initializer)
        for norm in (base.model.layers[0].input_layernorm,
                     base.model.layers[0].post_attention_layernorm, base.model.norm):
            norm.weight.uniform_(0.5, 2.0)
    fp32 = export_causal_lm(base, tmp_path / "fp32", validate=False) / "model.onnx"
    model = _quantize(copy.deepcopy(base), SmoothQuantConfig(alpha=0.5),
                      [{"input_ids": torch.randint(0, 256, (2, 64))} for _ in range(4)])
    proto, ctx = rewrite_float_graph(onnx.load(str(fp32)), base, model)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("MatMulInteger") == 7 and "MatMul" in ops   # attention's own MatMuls
    path = tmp_path / "w8a8.onnx"
    onnx.save(proto, str(path))
    plain = deployable(model, type(ctx)(records=sk.records(model)))
    plain.config.use_cache = True
    check = validate_decoder(path, _DecoderWithCache(plain).eval(), decoder_shape(model),
                             atol=1e-3, rtol=1e-3)
    assert check["prefill_max_abs_diff"] < 1e-3 and check["same_greedy_token"]
