"""The strided perplexity helper: every token scored once, torch and ORT agree, clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from slimkit.examples.llm import tiny_llama
from slimkit.metrics.perplexity import perplexity


class CharTokenizer:
    """Bytes as token ids (mod ``vocab``): enough of a tokenizer for the helper."""

    def __init__(self, vocab: int = 256):
        self.vocab = vocab

    def __len__(self):
        return self.vocab

    def __call__(self, text, verbose=False):
        return {"input_ids": [b % self.vocab for b in text.encode()]}


TEXT = "The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs. " * 6


@pytest.fixture(scope="module")
def model():
    return tiny_llama(seed=0, vocab=256)


def test_one_window_equals_the_cross_entropy_of_the_whole_text(model):
    ids = torch.tensor(CharTokenizer()(TEXT)["input_ids"])[None, :300]
    with torch.no_grad():
        logits = model(ids).logits[0, :-1]
    expected = math.exp(float(torch.nn.functional.cross_entropy(logits, ids[0, 1:])))
    got = perplexity(model, CharTokenizer(), TEXT, window=512, max_tokens=300)
    assert got["tokens"] == 299 and got["windows"] == 1
    assert got["perplexity"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(("window", "stride"), [(64, 64), (64, 16), (50, 7), (8, 8)])
def test_every_token_is_scored_once_with_at_least_window_minus_stride_context(window, stride):
    seen_lengths, scored = [], []
    text = TEXT[:200]
    n = len(CharTokenizer()(text)["input_ids"])

    def predict(ids):
        seen_lengths.append(ids.shape[1])
        # uniform logits: every token costs log(256), whatever its context
        return np.zeros((1, ids.shape[1], 256), dtype=np.float32)

    got = perplexity(predict, CharTokenizer(), text, window=window, stride=stride)
    scored.append(got["tokens"])
    assert got["tokens"] == n - 1
    assert got["windows"] == math.ceil((n - 1) / stride)
    assert max(seen_lengths) <= window
    # after the first chunks, each call carries window tokens (full context)
    assert all(length == window for length in seen_lengths[math.ceil(window / stride):-1])
    assert got["perplexity"] == pytest.approx(256.0, rel=1e-9)


def test_a_smaller_stride_gives_more_context_and_another_figure(model):
    a = perplexity(model, CharTokenizer(), TEXT, window=32, stride=32, max_tokens=96)
    b = perplexity(model, CharTokenizer(), TEXT, window=32, stride=8, max_tokens=96)
    assert a["tokens"] == b["tokens"]
    assert a["perplexity"] != pytest.approx(b["perplexity"], rel=1e-6)


def test_a_tokenizer_larger_than_the_models_vocabulary_is_refused(model):
    with pytest.raises(ValueError, match=r"tokenizer/model mismatch: the tokenizer has 300 tokens"
                                         r".*logits cover 256"):
        perplexity(model, CharTokenizer(vocab=300), TEXT, window=32)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"window": 0}, r"window must be a positive int, got 0"),
    ({"window": 16, "stride": 32}, r"stride 32 must be <= window 16"),
    ({"max_tokens": 1}, r"max_tokens must be an int >= 2"),
])
def test_bad_arguments_name_the_field(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        perplexity(model, CharTokenizer(), TEXT, **kwargs)


def test_a_one_token_text_and_a_non_model_are_refused(model):
    with pytest.raises(ValueError, match=r"the text has 1 token\(s\)"):
        perplexity(model, CharTokenizer(), "a")
    with pytest.raises(TypeError, match="perplexity needs a torch causal LM"):
        perplexity(42, CharTokenizer(), TEXT)
