"""Weight-only export: MatMulNBits packing, parity with torch, what ONNX Runtime really runs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import slimkit as sk
from slimkit.examples.llm import tiny_llama
from slimkit.export import ort_session
from slimkit.export.causal_lm import export_causal_lm
from slimkit.export.generate import greedy_generate
from slimkit.techniques.weight_only import WeightOnlyConfig
from slimkit.techniques.weight_only import onnx as wo_onnx


def test_packing_matches_onnxruntimes_own_int4_quantizer():
    # ORT's C++ block quantizer packs a float weight; our packing of the same codes must give
    # the same bytes (this pins the nibble order, the block layout and the zero points).
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    rng = np.random.default_rng(0)
    k, n, block = 96, 24, 32
    w_t = rng.standard_normal((k, n)).astype(np.float32)      # ORT takes the MatMul's [K, N]
    kb = k // block
    packed = np.zeros((n, kb, block // 2), np.uint8)
    scales = np.zeros((n, kb), np.float32)
    zp = np.zeros((n, (kb + 1) // 2), np.uint8)
    quantize_matmul_4bits(packed, w_t, scales, zp, block, n, k, False)
    zeros = np.stack([(zp >> 4 * (j % 2))[:, j // 2] & 15 for j in range(kb)], 1)
    s_full, z_full = np.repeat(scales, block, 1), np.repeat(zeros, block, 1).astype(np.float32)
    codes = np.clip(np.round(w_t.T / s_full + z_full), 0, 15).astype(np.uint8)
    np.testing.assert_array_equal(wo_onnx.pack_rows(codes, 4, block), packed)
    np.testing.assert_array_equal(wo_onnx.pack_zero_points(zeros.astype(np.uint8), 4), zp)


def test_storage_widths_and_block_sizes():
    assert [wo_onnx.storage_bits(b) for b in (2, 3, 4, 8)] == [2, 4, 4, 8]
    with pytest.raises(ValueError, match="bits must be 2, 3, 4 or 8"):
        wo_onnx.storage_bits(5)
    assert wo_onnx.block_size_for(576, None) == 64        # per channel: a block dividing K
    assert wo_onnx.block_size_for(1536, None) == 256
    assert wo_onnx.block_size_for(576, 128) == 128        # a short last block (padded)
    assert wo_onnx.block_size_for(576, 48) is None        # no kernel for it


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.up = nn.Linear(128, 192)
        self.down = nn.Linear(192, 64, bias=False)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(torch.relu(self.down(torch.relu(self.up(x)))))


@pytest.mark.parametrize(("bits", "group_size", "symmetric", "algorithm"), [
    (4, 32, True, "rtn"), (4, None, False, "rtn"), (3, 64, False, "rtn"), (8, None, True, "rtn"),
    (2, 32, False, "rtn"), (4, 64, False, "hqq"),
])
def test_every_linear_becomes_matmulnbits_and_matches_torch(tmp_path, bits, group_size,
                                                            symmetric, algorithm):
    model = MLP()
    x = torch.randn(6, 128, generator=torch.Generator().manual_seed(1))
    cfg = WeightOnlyConfig(bits=bits, group_size=group_size, symmetric=symmetric,
                           algorithm=algorithm)
    sk.quantize(model, cfg)
    with torch.no_grad():
        ref = model(x).numpy()
    with wo_onnx.matmulnbits_options(accuracy_level=0):
        # the TorchScript exporter (fast; Linear -> Gemm); the causal-LM test covers dynamo's
        path = sk.export_onnx(model, tmp_path / "m.onnx", example_inputs=x, dynamo=False)
    ran = wo_onnx.op_counts(wo_onnx.optimized_graph(path))
    assert ran["MatMulNBits"] == 3
    assert not {"MatMul", "Gemm", "DequantizeLinear"} & set(ran)
    got = ort_session(path).run(None, {"input": x.numpy()})[0]
    # accuracy level 0 computes the same dequantized weights in float: summation order only
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    nodes = [n for n in __import__("onnx").load(str(path)).graph.node if n.op_type == "MatMulNBits"]
    attrs = {a.name: a.i for a in nodes[0].attribute}
    assert attrs["bits"] == (4 if bits == 3 else bits) and attrs["accuracy_level"] == 0
    assert attrs["block_size"] == (group_size or 128)


def test_accuracy_level_4_runs_int8_activations_within_the_suggested_tolerance(tmp_path):
    model = MLP()
    x = torch.randn(6, 128, generator=torch.Generator().manual_seed(1))
    sk.quantize(model, WeightOnlyConfig(bits=4, group_size=32))
    with torch.no_grad():
        ref = model(x).numpy()
    with wo_onnx.matmulnbits_options(accuracy_level=4):
        path = sk.export_onnx(model, tmp_path / "m.onnx", example_inputs=x, dynamo=False)
    got = ort_session(path).run(None, {"input": x.numpy()})[0]
    diff = np.abs(got - ref).max()
    # int8 activations change the result a little, but not nothing (the kernel really ran)
    assert 1e-6 < diff < 0.05 * np.abs(ref).max()


def test_a_causal_lm_with_a_quantized_tied_head_runs_matmulnbits_and_gatherblockquantized(tmp_path):
    model = tiny_llama(seed=0, vocab=256, hidden=64, layers=2, tied=True)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)  # varied greedy tokens
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lm_head shares its weight with embed_tokens"
        sk.quantize(model, WeightOnlyConfig(bits=4, group_size=32, quantize_lm_head=True))
    with wo_onnx.matmulnbits_options(accuracy_level=0):
        folder = export_causal_lm(model, tmp_path / "lm")
    report = json.loads((folder / "export.json").read_text())
    assert report["prefill_max_abs_diff"] < 1e-3 and report["decode_max_abs_diff"] < 1e-3
    ran = wo_onnx.op_counts(wo_onnx.optimized_graph(folder / "model.onnx"))
    assert ran["MatMulNBits"] == 2 * 7 + 1 and ran["GatherBlockQuantized"] == 1
    assert "DequantizeLinear" not in ran and "Gather" not in ran
    prompt = np.array([[5, 17, 33, 9]])
    ref = model.generate(torch.from_numpy(prompt), max_new_tokens=16, min_new_tokens=16,
                         do_sample=False)[:, 4:].numpy()
    np.testing.assert_array_equal(greedy_generate(folder / "model.onnx", prompt, 16), ref)
    # the file holds the packed weights: far smaller than the float32 model
    floats = sum(p.numel() for p in tiny_llama(vocab=256, tied=True).parameters()) * 4
    assert (folder / "model.onnx").stat().st_size < 0.45 * floats


def test_rewrite_float_graph_carries_awqs_folded_norms(tmp_path):
    # AWQ folds 1/s into the RMSNorm gains, which stay float: the rewrite of the fp32 graph
    # must write the quantized model's gains too (before, ORT computed with the old gains and
    # the validation refused the file: logits off by up to 37 on SmolLM2).
    import copy

    import onnx

    from slimkit.export.causal_lm import _DecoderWithCache, decoder_shape, validate_export
    from tests.weight_only.conftest import tiny_llama, token_batches

    model = tiny_llama(layers=1)
    with torch.no_grad():  # distinct gains, as a trained model has (all-ones would be ambiguous)
        for i, norm in enumerate((model.model.layers[0].input_layernorm,
                                  model.model.layers[0].post_attention_layernorm,
                                  model.model.norm)):
            norm.weight.mul_(1 + 0.1 * torch.rand(norm.weight.shape,
                                                  generator=torch.Generator().manual_seed(i)))
    folder = export_causal_lm(model, tmp_path / "fp32")
    quant = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.quantize(quant, WeightOnlyConfig(bits=4, group_size=32, algorithm="awq",
                                            calibration_tokens=64),
                    calibration=token_batches(n=2))
    gain = quant.model.layers[0].input_layernorm.weight
    assert not torch.equal(gain, model.model.layers[0].input_layernorm.weight)  # AWQ folded
    with wo_onnx.matmulnbits_options(accuracy_level=0):
        proto, ctx = wo_onnx.rewrite_float_graph(onnx.load(str(folder / "model.onnx")), model,
                                                 quant)
    plain = copy.deepcopy(quant)
    sk.strip(plain)
    path = tmp_path / "awq.onnx"
    onnx.save(proto, str(path))
    check = validate_export(path, proto, _DecoderWithCache(plain.eval()), decoder_shape(plain),
                            ctx)
    assert check["prefill_max_abs_diff"] < 1e-3, check
