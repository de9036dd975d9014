"""The "weight-only" technique end to end on small random Llamas (2 layers, hidden 64)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn

import slimkit as sk
import slimkit.techniques.weight_only as wo
from slimkit.techniques.weight_only.calibrate import block_quants, float_mode, quant_of

from .conftest import tiny_llama, token_batches


def logits(model, batches):
    with torch.no_grad():
        return [model(**b).logits for b in batches]


def logit_mse(model, ref, batches):
    return sum(float((a - b).pow(2).mean()) for a, b in zip(logits(model, batches), ref))


def quantized(model, **kw):
    cfg = wo.WeightOnlyConfig(**kw)
    data = token_batches(n=8, batch=4, seq=64) if cfg.needs_data else None   # 2048 tokens
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.quantize(model, cfg, calibration=data, progress=False) if data else \
            sk.quantize(model, cfg)
    return model


def test_rtn_parametrizes_every_linear_but_the_head(llama):
    model = quantized(llama, bits=4, group_size=32, algorithm="rtn")
    rows = wo.weight_only_layers(model)
    names = [r[0] for r in rows]
    assert len(names) == 14 and "lm_head" not in names          # 7 Linears x 2 blocks
    name, tensor, codes, scales, zeros, bits, gs = rows[0]
    assert (name, tensor, bits, gs) == ("model.layers.0.self_attn.q_proj", "weight", 4, 32)
    assert codes.dtype == torch.uint8 and codes.shape == (64, 64) and scales.shape == (64, 2)
    # The torch model computes exactly (codes - zeros) * scales.
    w = model.get_submodule(name).weight
    assert torch.equal(w, wo.dequantize(codes, scales, zeros, gs))
    before = logits(model, token_batches(n=1))
    sk.strip(model)
    assert torch.equal(model.get_submodule(name).weight, w)
    torch.testing.assert_close(logits(model, token_batches(n=1))[0], before[0], atol=0, rtol=0)


@pytest.mark.parametrize("bits,gs", [(3, 64)])
def test_calibrated_algorithms_beat_rtn(bits, gs):
    """Logit error vs fp32 on held-out batches, same grid (symmetric)."""
    base = tiny_llama()
    held_out = token_batches(n=3, seed=7)
    ref = logits(base, held_out)
    err = {alg: logit_mse(quantized(copy.deepcopy(base), bits=bits, group_size=gs,
                                    algorithm=alg, awq_search_tokens=1024), ref, held_out)
           for alg in ("rtn", "hqq", "gptq", "awq")}
    # Measured (seed 0, search on 1024 tokens), int3 g64 on the symmetric grid that puts each
    # group's extreme on code 0 (ONNX Runtime's): rtn 0.0096, hqq 0.0101, gptq 0.0042,
    # awq 0.0073 (on the older 2 max|w| / 7 grid: rtn 0.0148, hqq 0.0108). HQQ fits the
    # weights (its squared weight error is never above RTN's), not the outputs: on the logits
    # it ties with RTN within noise (1.05x here), so it gets a 10% margin.
    assert err["hqq"] <= err["rtn"] * 1.10, err
    assert err["gptq"] < 0.85 * err["rtn"], err
    assert err["awq"] < 0.95 * err["rtn"], err


def test_gptq_marks_layers_calibrated_and_head_rtn():
    model = quantized(tiny_llama(), algorithm="gptq", group_size=32)
    assert all(int(p.calibrated) == 1 for _, p in block_quants(model.model.layers[0]).values())
    assert wo.TECHNIQUE.check_step(model, sk.records(model)[0]) is None


def test_awq_folds_scales_exactly():
    """After AWQ the float model (before rounding) is the original one: 1/s went into the
    norms and the up_proj / v_proj rows."""
    base = tiny_llama()
    # Exactness does not depend on the search quality: a short search keeps the test fast.
    model = quantized(copy.deepcopy(base), algorithm="awq", group_size=32, awq_clip=False,
                      awq_grid=5, awq_search_tokens=256)
    held_out = token_batches(n=2, seed=7)
    norm = model.model.layers[0].input_layernorm.weight
    assert not torch.allclose(norm, base.model.layers[0].input_layernorm.weight)   # scaled
    quants = [quant_of(m) for m in model.modules() if quant_of(m) is not None]
    with float_mode(quants):
        got = logits(model, held_out)
    for a, b in zip(got, logits(base, held_out)):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)


def test_awq_leaves_inputs_shared_with_unquantized_layers_alone():
    """With v_proj ignored, q/k's input (also v's) cannot be rescaled: the norm stays."""
    base = tiny_llama()
    model = copy.deepcopy(base)
    cfg = wo.WeightOnlyConfig(algorithm="awq", group_size=32, awq_clip=False, awq_grid=5,
                              awq_search_tokens=256)
    sk.quantize(model, cfg, calibration=token_batches(n=8, batch=4, seq=64),
                ignore=["*.v_proj"], progress=False)
    layer, ref = model.model.layers[0], base.model.layers[0]
    assert torch.equal(layer.input_layernorm.weight, ref.input_layernorm.weight)
    assert not torch.equal(layer.post_attention_layernorm.weight,
                           ref.post_attention_layernorm.weight)        # gate/up still scaled
    quants = [quant_of(m) for m in model.modules() if quant_of(m) is not None]
    held_out = token_batches(n=1, seed=7)
    with float_mode(quants):
        got = logits(model, held_out)
    torch.testing.assert_close(got[0], logits(base, held_out)[0], atol=2e-4, rtol=1e-4)


def test_tied_embedding_and_head_share_one_parametrization():
    model = tiny_llama(tied=True)
    with pytest.warns(UserWarning, match="shares its weight"):
        sk.quantize(model, wo.WeightOnlyConfig(group_size=32, quantize_lm_head=True))
    p_head, p_emb = quant_of(model.lm_head), quant_of(model.model.embed_tokens)
    assert p_head is p_emb and p_head.codes.shape == (128, 64)
    names = [r[0] for r in wo.weight_only_layers(model)]
    assert "lm_head" in names and "model.embed_tokens" in names
    sk.strip(model)
    assert model.lm_head.weight is model.model.embed_tokens.weight      # still tied


def test_embedding_option_untied():
    model = quantized(tiny_llama(), group_size=32, quantize_embedding=True)
    assert quant_of(model.model.embed_tokens) is not None and quant_of(model.lm_head) is None


def test_bad_group_size_names_layer_and_leaves_model_alone():
    model = tiny_llama(hidden=96, inter=192)
    with pytest.raises(ValueError, match=r"in_features 96 of model.layers.0.self_attn.q_proj.*"
                                         r"\[32, None\]"):
        sk.quantize(model, wo.WeightOnlyConfig(group_size=64))
    assert not any(quant_of(m) for m in model.modules()) and not sk.records(model)
    quantized(model, group_size=64, allow_partial_group=True)          # shorter last group
    assert quant_of(model.model.layers[0].self_attn.q_proj).scales.shape == (96, 2)


def test_data_errors_leave_model_alone(llama):
    with pytest.raises(ValueError, match="needs calibration data"):
        sk.quantize(llama, wo.WeightOnlyConfig(algorithm="gptq"))
    with pytest.raises(ValueError, match="has 128 tokens in 2 batches; awq needs at least 2048"):
        sk.quantize(llama, wo.WeightOnlyConfig(algorithm="awq", group_size=32),
                    calibration=token_batches(n=2))
    with pytest.raises(ValueError, match="needs calibration data"):
        sk.apply(llama, wo.WeightOnlyConfig(algorithm="gptq", group_size=32))
    assert not any(quant_of(m) for m in llama.modules()) and not sk.records(llama)
    with pytest.raises(ValueError, match="takes no calibration data"):
        sk.quantize(llama, wo.WeightOnlyConfig(group_size=32), calibration=token_batches())


def test_no_linear_layer():
    model = nn.Sequential(nn.Embedding(10, 32), nn.ReLU())
    with pytest.raises(ValueError, match="Sequential has no nn.Linear layer"):
        sk.quantize(model, wo.WeightOnlyConfig(group_size=32))


def test_save_load_replays_calibrated_codes(tmp_path, llama):
    model = quantized(llama, algorithm="gptq", group_size=32, bits=3)
    path = tmp_path / "wo.pt"
    sk.save(model, path)
    fresh = sk.load(path, model=tiny_llama(seed=5))
    a, b = quant_of(model.model.layers[1].mlp.down_proj), quant_of(fresh.model.layers[1].mlp.down_proj)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scales, b.scales)
    assert int(b.calibrated) == 1
    held_out = token_batches(n=1, seed=3)
    torch.testing.assert_close(logits(fresh, held_out)[0], logits(model, held_out)[0],
                               atol=0, rtol=0)


def test_uncalibrated_gptq_warns_at_check_step(llama):
    cfg = wo.WeightOnlyConfig(algorithm="gptq", group_size=32)
    layers = wo.TECHNIQUE.select(llama, cfg, None, None)
    wo.TECHNIQUE.prepare(llama, cfg, layers)
    record = {"technique": "weight-only", "config": cfg.to_dict(), "layers": layers}
    msg = wo.TECHNIQUE.check_step(llama, record)
    assert msg is not None and "never calibrated for 14 layer(s)" in msg


def test_pre_export_notes(llama):
    from slimkit.export.pipeline import ExportContext

    model = quantized(llama, group_size=32, algorithm="hqq", symmetric=False)
    ctx = ExportContext()
    wo.TECHNIQUE.pre_export(model, ctx)
    rows = ctx.notes["weight-only"]["rows"]
    assert len(rows) == 14 and rows[0][5:] == (4, 32)
    assert not quant_of(model.get_submodule(rows[0][0])).integer_zeros   # HQQ asymmetric


def test_pruned_zeros_stay_zero_under_symmetric_rtn():
    model = tiny_llama()
    sk.prune(model, sk.MagnitudePruningConfig(0.5), targets=["Linear"], ignore=["lm_head"])
    quantized(model, group_size=32)
    w = model.model.layers[0].mlp.up_proj.weight
    assert float((w == 0).float().mean()) >= 0.5
