"""Greedy generation with an exported decoder in ONNX Runtime (prefill, then one token at a time).

The decoder is the file :func:`slimkit.export.causal_lm.export_causal_lm` writes: inputs
``input_ids``, ``attention_mask``, ``position_ids`` and ``past_key_values.{i}.key/value``
(``[batch, kv_heads, past, head_dim]``; empty, ``past = 0``, for the prefill), outputs
``logits`` and ``present.{i}.key/value`` (the cache grown by the new tokens). Generation feeds
the whole prompt once, then each new token with the returned cache, so every step costs one
token's worth of compute.

Example:
    >>> tokens = greedy_generate("smollm2-int4/model.onnx", prompt_ids, max_new_tokens=32)
    >>> tokenizer.decode(tokens[0])
"""

from __future__ import annotations

import os
import re

import numpy as np

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")


class OrtDecoder:
    """A KV-cache decoder session: builds the feeds and carries the cache between steps.

    ``session``: an ``onnxruntime.InferenceSession`` of an exported decoder, or a path to one
    (opened with ``threads`` intra-op threads).

    Example:
        >>> dec = OrtDecoder("model.onnx", threads=2)
        >>> logits, past = dec.step(ids, dec.empty_past(1))
    """

    def __init__(self, session, threads: int = 2, kv_heads: int | None = None,
                 head_dim: int | None = None):
        if isinstance(session, (str, os.PathLike)):
            from slimkit.metrics.latency import cpu_session

            session = cpu_session(session, threads)
        self.session = session
        names = [i.name for i in session.get_inputs()]
        missing = [n for n in ("input_ids", "attention_mask") if n not in names]
        layers = sorted({int(m.group(1)) for n in names if (m := _PAST.match(n))})
        if missing or not layers:
            raise ValueError(
                "not a KV-cache decoder: the session's inputs are "
                f"{names[:6]}{' ...' if len(names) > 6 else ''}; expected input_ids, "
                "attention_mask, (position_ids) and past_key_values.{i}.key/value (the layout "
                "of slimkit.export.causal_lm.export_causal_lm)"
            )
        self.layers = len(layers)
        meta = {i.name: i for i in session.get_inputs()}
        shape = meta["past_key_values.0.key"].shape
        # other exporters (onnxruntime-genai's builder) leave head_dim symbolic: take it from
        # the caller (their genai_config.json says it)
        self.kv_heads = shape[1] if isinstance(shape[1], int) else kv_heads
        self.head_dim = shape[3] if isinstance(shape[3], int) else head_dim
        if self.kv_heads is None or self.head_dim is None:
            raise ValueError(f"past_key_values.0.key has symbolic heads or head_dim {shape}: "
                             "pass kv_heads= and head_dim=")
        self.dtype = np.float16 if "float16" in meta["past_key_values.0.key"].type else np.float32
        self.past_names = [f"past_key_values.{i}.{t}" for i in range(self.layers)
                           for t in ("key", "value")]
        self.output_names = [o.name for o in session.get_outputs()]
        self.position_ids = "position_ids" in names

    def empty_past(self, batch: int) -> list[np.ndarray]:
        """The cache of a prefill: ``2 * layers`` arrays with 0 past positions."""
        z = np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=self.dtype)
        return [z] * (2 * self.layers)

    def step(self, ids: np.ndarray, past: list[np.ndarray]) -> tuple[np.ndarray, list]:
        """Run ``ids`` ``(batch, seq)`` after the cache ``past``; returns ``(logits, present)``."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        batch, seq = ids.shape
        done = past[0].shape[2]
        feeds = {"input_ids": ids, "attention_mask": np.ones((batch, done + seq), dtype=np.int64)}
        if self.position_ids:  # decoders with rotary embeddings inside need none
            feeds["position_ids"] = np.broadcast_to(
                np.arange(done, done + seq, dtype=np.int64), (batch, seq)).copy()
        feeds.update(zip(self.past_names, past))
        outs = dict(zip(self.output_names, self.session.run(None, feeds)))
        present = [outs[n.replace("past_key_values", "present")] for n in self.past_names]
        return outs["logits"], present

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits of a prefill of ``ids`` (no cache kept): what perplexity needs."""
        ids = np.asarray(ids, dtype=np.int64)
        return self.step(ids, self.empty_past(ids.shape[0]))[0]


def greedy_generate(decoder, input_ids, max_new_tokens: int = 32, eos_token_id: int | None = None,
                    threads: int = 2) -> np.ndarray:
    """Greedy tokens after ``input_ids`` with an exported decoder (path, session or OrtDecoder).

    Prefills the prompt, then feeds one token at a time with the cache. Stops after
    ``max_new_tokens`` or when every row has produced ``eos_token_id`` (rows that finished
    earlier continue with ``eos_token_id``, as Hugging Face's ``generate`` pads them).

    Returns:
        int64 ``(batch, new_tokens)``: only the generated tokens.

    Example:
        >>> greedy_generate("model.onnx", np.array([[1, 2, 3]]), max_new_tokens=8).shape
        (1, 8)
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    dec = decoder if isinstance(decoder, OrtDecoder) else OrtDecoder(decoder, threads)
    ids = np.asarray(input_ids, dtype=np.int64)
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError(f"input_ids must be (batch, seq) with seq >= 1, got shape {ids.shape}")
    logits, past = dec.step(ids, dec.empty_past(ids.shape[0]))
    out = []
    finished = np.zeros(ids.shape[0], dtype=bool)
    for i in range(max_new_tokens):
        nxt = logits[:, -1].argmax(-1).astype(np.int64)
        if eos_token_id is not None:
            nxt = np.where(finished, eos_token_id, nxt)
            finished |= nxt == eos_token_id
        out.append(nxt)
        if i + 1 == max_new_tokens or finished.all():
            break
        logits, past = dec.step(nxt[:, None], past)
    return np.stack(out, axis=1)
