"""Register SmoothQuant (the lead adds its entry point) and build small random Llamas with
activation outliers."""

from __future__ import annotations

import pytest
import torch

from slimkit.core.registry import register
from slimkit.techniques.quantization.smoothquant import TECHNIQUE

register(TECHNIQUE)

transformers = pytest.importorskip("transformers")


def outlier_llama(layers: int = 2, kv_heads: int = 4, seed: int = 0, gain: float = 20.0):
    """A random LlamaForCausalLM (vocab 128, hidden 64) whose RMSNorms have 4 large gains:
    the few huge activation channels that make per-tensor int8 activations fail."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=128,
        tie_word_embeddings=True)
    cfg._attn_implementation = "eager"
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight[:4] = gain
    return model


def token_batches(n: int = 4, batch: int = 2, seq: int = 64, seed: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 128, (batch, seq), generator=g)} for _ in range(n)]


@pytest.fixture
def llama():
    return outlier_llama()


@pytest.fixture
def batches():
    return token_batches()
