"""The sequential calibration engine on a small random Llama (2 layers, hidden 64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from slimkit.core.sequential import (
    LinearInputStats,
    block_outputs,
    capture_block_inputs,
    find_blocks,
    run_sequential,
)

transformers = pytest.importorskip("transformers")


def tiny_llama(layers: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def batches(n=3, seq=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 128, (2, seq), generator=g)} for _ in range(n)]


def test_find_blocks_picks_decoder_layers():
    model = tiny_llama()
    names = [n for n, _ in find_blocks(model)]
    assert names == ["model.layers.0", "model.layers.1"]


def test_find_blocks_error_names_model():
    with pytest.raises(ValueError, match="Linear.*no repeated blocks|no repeated blocks in Linear"):
        find_blocks(nn.Linear(4, 4))


def test_capture_kwargs_and_stop():
    model = tiny_llama()
    calls = []
    model.model.layers[1].register_forward_hook(lambda *a: calls.append(1))
    inputs = capture_block_inputs(model, batches(), model.model.layers[0])
    assert len(inputs) == 3 and calls == []          # nothing after block 0 ran
    args, kwargs = inputs[0]
    assert args[0].shape == (2, 16, 64)
    cos, sin = kwargs["position_embeddings"]         # rotary embeddings captured as kwargs
    assert cos.shape[-1] == 16
    assert kwargs.get("use_cache") in (None, False) and kwargs.get("cache") is None
    assert inputs.tokens == 3 * 2 * 16


def test_captured_inputs_reproduce_the_model():
    """Running the captured blocks one after the other gives the model's last hidden state."""
    model = tiny_llama()
    b = batches(n=2)
    with torch.no_grad():
        ref = model.model(**b[0], use_cache=False).last_hidden_state
    inputs = capture_block_inputs(model, b, model.model.layers[0])
    for _, block in find_blocks(model):
        inputs = inputs.with_hidden(block_outputs(block, inputs))
    got = model.model.norm(inputs[0][0][0])
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def _zero_mlp(name, block, inputs):
    block.mlp.down_proj.weight.data.zero_()


@pytest.mark.parametrize("propagate", ["compressed", "original"])
def test_propagation(propagate):
    """Block 1 sees block 0's compressed outputs ("compressed") or its original ones."""
    model = tiny_llama()
    ref_model = tiny_llama()
    b = batches(n=2)
    seen = {}

    def on_block(name, block, inputs):
        seen[name] = [args[0].clone() for args, _ in inputs]
        _zero_mlp(name, block, inputs)

    run_sequential(model, b, on_block, progress=False, propagate=propagate)
    # Expected input of block 1: block 0 of the reference (compressed or not) on the same inputs.
    inputs = capture_block_inputs(ref_model, b, ref_model.model.layers[0])
    if propagate == "compressed":
        _zero_mlp("", ref_model.model.layers[0], inputs)
    expected = block_outputs(ref_model.model.layers[0], inputs)
    torch.testing.assert_close(seen["model.layers.1"][0], expected[0], atol=1e-6, rtol=1e-6)
    other = tiny_llama()
    other_inputs = capture_block_inputs(other, b, other.model.layers[0])
    if propagate == "original":
        _zero_mlp("", other.model.layers[0], other_inputs)
    wrong = block_outputs(other.model.layers[0], other_inputs)
    assert (seen["model.layers.1"][0] - wrong[0]).abs().max() > 1e-3


def test_hooks_removed_and_modes_restored_on_error():
    model = tiny_llama().train()
    model.model.layers[0].eval()

    def boom(name, block, inputs):
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        run_sequential(model, batches(), boom, progress=False)
    assert model.training and not model.model.layers[0].training and model.model.layers[1].training
    for m in model.modules():
        assert not m._forward_pre_hooks and not m._forward_hooks


def test_rejected_batch_names_index():
    model = tiny_llama()
    bad = batches(n=2) + [{"input_ids": torch.zeros(2, 4), "bogus": 1}]
    with pytest.raises(ValueError, match="calibration batch 2 was rejected"):
        run_sequential(model, bad, lambda *a: None, progress=False)
    with pytest.raises(ValueError, match="at least one batch"):
        run_sequential(model, [], lambda *a: None, progress=False)


def test_memory_keeps_one_block_of_inputs():
    """Inputs are CPU tensors of the model's dtype; a block's inputs are released once the
    next block's exist (only one block of activations is alive)."""
    import gc
    import weakref

    model = tiny_llama(layers=3)
    previous: list = []

    def on_block(name, block, inputs):
        gc.collect()
        assert all(ref() is None for ref in previous), f"{name}: earlier inputs still alive"
        hidden = [args[0] for args, _ in inputs.items]
        assert all(h.device.type == "cpu" and h.dtype == torch.float32 for h in hidden)
        previous[:] = [weakref.ref(h) for h in hidden]

    run_sequential(model, batches(n=2), on_block, progress=False)
    assert len(previous) == 2


def test_linear_input_stats_numbers():
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    xs = [torch.randn(5, 3, 8) for _ in range(2)]
    with LinearInputStats(block, abs_mean=True, abs_max=True, sq_norm=True, keep=6) as stats:
        for x in xs:
            block(x)
    X = torch.cat([x.reshape(-1, 8) for x in xs]).double()
    assert stats.samples["0"] == 30
    # Each batch's X^T X is formed in float32 (then summed in float64): float32 tolerance.
    torch.testing.assert_close(stats.hessian["0"], 2 / 30 * X.T @ X, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(stats.abs_mean["0"], X.abs().mean(0), atol=1e-9, rtol=1e-6)
    torch.testing.assert_close(stats.abs_max["0"], X.abs().amax(0), atol=1e-9, rtol=1e-6)
    torch.testing.assert_close(stats.sq_norm["0"], X.pow(2).sum(0), atol=1e-9, rtol=1e-6)
    assert stats.inputs["0"].shape == (6, 8)
    assert stats.hessian["2"].shape == (4, 4)
    assert all(not m._forward_pre_hooks for m in block.modules())


def test_linear_input_stats_shared_input_and_selection():
    model = tiny_llama()
    block = model.model.layers[0]
    inputs = capture_block_inputs(model, batches(n=1), block)
    with LinearInputStats(block, layers=["self_attn.q_proj", "self_attn.k_proj"]) as stats:
        for args, kwargs in inputs:
            block(*args, **kwargs)
    assert set(stats.hessian) == {"self_attn.q_proj", "self_attn.k_proj"}
    torch.testing.assert_close(stats.hessian["self_attn.q_proj"], stats.hessian["self_attn.k_proj"])
    with pytest.raises(ValueError, match="nope"):
        LinearInputStats(block, layers=["nope"])


def test_identical_kwargs_are_stored_once():
    model = tiny_llama()
    inputs = capture_block_inputs(model, batches(n=3), model.model.layers[0])
    cos = [kw["position_embeddings"][0] for _, kw in inputs.items]
    assert cos[1] is cos[0] and cos[2] is cos[0]           # same positions: one tensor
    assert inputs.items[1][0][0] is not inputs.items[0][0][0]   # hidden states differ
