"""Small random Llama models and calibration batches for the weight-only tests."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")


def tiny_llama(*, hidden: int = 64, inter: int = 128, layers: int = 2, tied: bool = False,
               kv_heads: int = 4, seed: int = 0):
    """A random-initialised LlamaForCausalLM (vocab 128), in eval mode."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=128, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64,
        tie_word_embeddings=tied,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    # Outlier input channels, as trained LLMs have: a few RMSNorm gains are large.
    with torch.no_grad():
        for layer in model.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight[:4] = 8.0
    return model


def token_batches(n: int = 4, batch: int = 2, seq: int = 32, seed: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 128, (batch, seq), generator=g)} for _ in range(n)]


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture
def batches():
    return token_batches()
