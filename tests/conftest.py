"""Shared fixtures: small models of every kind slimkit must handle, and the digits task."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from slimkit.examples import DigitsCNN, load_digits_data, set_seed, train


class Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.inner = nn.ModuleDict({"proj": nn.Linear(dim, dim), "norm": nn.LayerNorm(dim)})

    def forward(self, x):
        return x + torch.relu(self.inner["norm"](self.inner["proj"](x)))


class SubclassedNet(nn.Module):
    """Subclassed, nested, with a ModuleList and ModuleDict: not a sequential graph."""

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
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 32, num_layers=2, batch_first=True)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class TransformerNet(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


class TiedLM(nn.Module):
    """A tiny language model whose output head shares the embedding matrix."""

    def __init__(self, vocab: int = 50, dim: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.body = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.body(self.embed(ids))))


@pytest.fixture
def seeded():
    set_seed(0)


MODEL_CASES = {
    "subclassed": (SubclassedNet, lambda: torch.randn(3, 4, 16)),
    "lstm": (LSTMNet, lambda: torch.randn(3, 5, 8)),
    "transformer": (TransformerNet, lambda: torch.randn(3, 6, 32)),
}


@pytest.fixture(scope="session")
def digits():
    return load_digits_data()


@pytest.fixture(scope="session")
def trained_digits(digits):
    """The digits CNN trained as the benchmark's baseline (seed 0, Adam 1e-3, 20 epochs)."""
    set_seed(0)
    model = DigitsCNN()
    train(model, digits, epochs=20, lr=1e-3, seed=0)
    return model


@pytest.fixture
def baseline(trained_digits):
    return copy.deepcopy(trained_digits)
