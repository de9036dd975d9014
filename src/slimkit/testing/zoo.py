"""The model zoo of the conformance kit: small models of every kind a technique must handle.

Each :class:`ZooModel` builds a fresh model from a seed and gives inputs for it: a small
example batch (export, comparisons) and a larger calibration set in the form
:func:`slimkit.calibrate` accepts. ``cnn`` is the digits CNN on real digits images; the
others are random-input models: a subclassed nested net (ModuleList, ModuleDict, residual),
an LSTM, a TransformerEncoder, and all-MiniLM-L6-v2 when its optional package is installed.

Example:
    >>> case = ZOO["lstm"]
    >>> model = case.build(0)
    >>> model(*case.example()).shape
    torch.Size([3, 4])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from slimkit.examples import DigitsCNN, load_digits_data


class Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.inner = nn.ModuleDict({"proj": nn.Linear(dim, dim), "norm": nn.LayerNorm(dim)})

    def forward(self, x):
        return x + torch.relu(self.inner["norm"](self.inner["proj"](x)))


class SubclassedNet(nn.Module):
    """Subclassed, nested, with a ModuleList and a ModuleDict: not a sequential graph."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv1d(4, 8, 3, padding=1)
        self.blocks = nn.ModuleList([Block(8 * 16) for _ in range(2)])
        self.classifier = nn.Sequential(nn.Linear(8 * 16, 16), nn.ReLU(), nn.Linear(16, 5))

    def forward(self, x):
        h = torch.relu(self.stem(x)).flatten(1)
        for b in self.blocks:
            h = b(h)
        return self.classifier(h)


class LSTMNet(nn.Module):
    """A two-layer LSTM and a linear head on the last step."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 32, num_layers=2, batch_first=True)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class TransformerNet(nn.Module):
    """A two-layer ``nn.TransformerEncoder`` (MultiheadAttention inside) and a linear head."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


@dataclass(frozen=True)
class ZooModel:
    """One zoo case: ``build(seed)`` -> a fresh model; inputs as tuples of tensors.

    ``example()`` is a small batch (3 rows) for forward passes, comparisons and export;
    ``calibration()`` is data for :func:`slimkit.calibrate` (a tensor, or a list of keyword
    batches for models with several inputs). ``heavy`` models run only the cheap per-model
    checks (prepare, state_dict, strip, deepcopy): their exports take minutes.
    """

    name: str
    build: Callable[[int], nn.Module]
    example: Callable[[], tuple]
    calibration: Callable[[], object]
    heavy: bool = False
    available: Callable[[], bool] = lambda: True


def _seeded(cls) -> Callable[[int], nn.Module]:
    def build(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return cls()

    return build


def _randn(*shape, seed: int = 1234) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


_DIGITS = {}


def digits():
    """The digits data, loaded once per process (the split is deterministic)."""
    if "data" not in _DIGITS:
        _DIGITS["data"] = load_digits_data()
    return _DIGITS["data"]


_MINILM = {}


def _minilm_available() -> bool:
    from slimkit.examples.minilm import minilm_available

    return minilm_available()


def _minilm(seed: int) -> nn.Module:
    # The pretrained weights do not depend on the seed; load the files once and deep-copy.
    import copy

    from slimkit.examples.minilm import load_minilm

    if "model" not in _MINILM:
        _MINILM["model"], _MINILM["tokenizer"] = load_minilm()
    torch.manual_seed(seed)
    return copy.deepcopy(_MINILM["model"])


_SENTENCES = ["A cat sat on the mat.", "Quantized models run faster on CPUs.",
              "The weather is nice today.", "Pruning removes small weights."]


def _minilm_inputs(n: int) -> tuple:
    from slimkit.examples.minilm import tokenize

    _minilm(0)
    return tokenize(_MINILM["tokenizer"], (_SENTENCES * n)[:n])


ZOO: dict[str, ZooModel] = {
    "cnn": ZooModel("cnn", _seeded(DigitsCNN), lambda: (digits().x_test[:3],),
                    lambda: digits().calibration),
    "subclassed": ZooModel("subclassed", _seeded(SubclassedNet), lambda: (_randn(3, 4, 16),),
                           lambda: _randn(16, 4, 16, seed=1)),
    "lstm": ZooModel("lstm", _seeded(LSTMNet), lambda: (_randn(3, 5, 8),),
                     lambda: _randn(16, 5, 8, seed=1)),
    "transformer": ZooModel("transformer", _seeded(TransformerNet),
                            lambda: (_randn(3, 6, 32),), lambda: _randn(16, 6, 32, seed=1)),
    "minilm": ZooModel(
        "minilm", _minilm, lambda: _minilm_inputs(3),
        lambda: [dict(zip(("input_ids", "attention_mask"), _minilm_inputs(4)))],
        heavy=True, available=_minilm_available,
    ),
}
"""Every zoo model by name. ``ConformanceEntry.models`` names the ones a technique applies to."""
