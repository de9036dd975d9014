"""Perplexity of a causal language model on a text, with strided windows.

How tokens are scored (each token exactly once): the text is tokenized once into ``T`` tokens.
Token 0 has no context and is never scored. Tokens ``1 .. T-1`` are scored in consecutive
chunks of ``stride`` targets; the chunk ending at target ``b`` runs the model on the
``window`` tokens before ``b`` (fewer at the start of the text), so every target is
predicted from at least ``window - stride + 1`` tokens of context. Perplexity is
``exp(sum of negative log-likelihoods / number of scored tokens)``, accumulated in float64.
``stride == window`` (the default) gives the usual non-overlapping windows; a smaller stride
gives every token more context at ``window / stride`` times the cost.

The model is a torch causal LM (anything whose output is logits or has ``.logits``), an
ONNX Runtime session of a decoder exported by :func:`slimkit.export.causal_lm.export_causal_lm`,
or any callable ``ids (1, L) int64 numpy -> logits (1, L, vocab)``.

Example:
    >>> ppl = perplexity(model, tokenizer, heldout_text, window=512, max_tokens=2048)
    >>> ppl["perplexity"], ppl["tokens"]
    (15.1..., 2047)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn


def _as_predict(model_or_predict) -> Callable[[np.ndarray], np.ndarray]:
    """A function ``ids (1, L) int64 -> logits (1, L, V) float`` for any accepted model."""
    if isinstance(model_or_predict, nn.Module):
        model = model_or_predict

        def predict(ids: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                out = model(torch.from_numpy(ids))
            logits = out.logits if hasattr(out, "logits") else out
            if isinstance(logits, (tuple, list)):
                logits = logits[0]
            return logits.float().numpy()

        return predict
    if hasattr(model_or_predict, "run") and hasattr(model_or_predict, "get_inputs"):
        from slimkit.export.generate import OrtDecoder

        decoder = OrtDecoder(model_or_predict)
        return lambda ids: decoder.logits(ids)
    if callable(model_or_predict):
        return lambda ids: np.asarray(model_or_predict(ids))
    raise TypeError(
        "perplexity needs a torch causal LM, an onnxruntime.InferenceSession of an exported "
        f"decoder or a callable ids -> logits, got {type(model_or_predict).__name__}"
    )


def _log_softmax_rows(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def perplexity(
    model_or_predict,
    tokenizer,
    text: str,
    window: int = 512,
    stride: int | None = None,
    max_tokens: int | None = None,
) -> dict:
    """Perplexity of ``model_or_predict`` on ``text`` (see the module docstring for scoring).

    Args:
        window: tokens the model sees per call (at most its context length).
        stride: targets scored per call (default ``window``); ``1 <= stride <= window``.
        max_tokens: score only the first ``max_tokens`` tokens of the text.

    Returns:
        ``{"perplexity", "nll" (mean, nats), "tokens" (scored), "windows", "window",
        "stride"}``.

    Raises:
        ValueError: bad window / stride / max_tokens, a text of fewer than 2 tokens, or a
            tokenizer that does not match the model (a token id or the tokenizer's vocabulary
            beyond the model's logits, or logits of the wrong shape).
    """
    stride = window if stride is None else stride
    for name, value in (("window", window), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r} (perplexity)")
    if stride > window:
        raise ValueError(f"stride {stride} must be <= window {window} (perplexity)")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 2):
        raise ValueError(f"max_tokens must be an int >= 2 or None, got {max_tokens!r}")
    ids = np.asarray(tokenizer(text, verbose=False)["input_ids"], dtype=np.int64).reshape(-1)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise ValueError(f"the text has {len(ids)} token(s); perplexity needs at least 2")
    predict = _as_predict(model_or_predict)
    total_nll, scored, windows = 0.0, 0, 0
    vocab_checked = False
    for a in range(1, len(ids), stride):
        b = min(a + stride, len(ids))
        start = max(0, b - 1 - window)
        inputs = ids[start: b - 1][None, :]
        logits = np.asarray(predict(inputs))
        if not vocab_checked:
            _check_vocab(logits, inputs, ids, tokenizer)
            vocab_checked = True
        logp = _log_softmax_rows(logits[0, a - 1 - start: b - 1 - start])
        targets = ids[a:b]
        total_nll -= float(logp[np.arange(len(targets)), targets].sum())
        scored += len(targets)
        windows += 1
    nll = total_nll / scored
    return {"perplexity": math.exp(nll), "nll": nll, "tokens": scored, "windows": windows,
            "window": window, "stride": stride}


def _check_vocab(logits: np.ndarray, inputs: np.ndarray, ids: np.ndarray, tokenizer) -> None:
    if logits.ndim != 3 or logits.shape[:2] != inputs.shape:
        raise ValueError(
            f"the model returned logits of shape {logits.shape} for ids of shape {inputs.shape}; "
            "perplexity needs (batch, sequence, vocabulary) logits of a causal LM"
        )
    vocab = logits.shape[-1]
    top = int(ids.max())
    n_tok = len(tokenizer) if hasattr(tokenizer, "__len__") else top + 1
    if top >= vocab or n_tok > vocab:
        raise ValueError(
            f"tokenizer/model mismatch: the tokenizer has {n_tok} tokens (largest id in the "
            f"text {top}) but the model's logits cover {vocab}; use the tokenizer the model "
            "was trained with"
        )
