"""Shared fixtures: small models of every kind slimkit must handle, and the digits task."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from slimkit.examples import DigitsCNN, load_digits_data, set_seed, train

# The model zoo of the conformance kit is also the tests' zoo (one definition of each).
from slimkit.testing.zoo import Block, LSTMNet, SubclassedNet, TransformerNet  # noqa: F401


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


@pytest.fixture(scope="session")
def digits_cnn(digits):
    """The same baseline trained on one intra-op thread, once per session (the clustering,
    accurate-quantization and distillation tests share it): on the shared 2-core machine two
    threads measured ~40x slower per step under load. Session fixtures are built before the
    function-scoped ``one_thread``, so it sets the thread count itself."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        set_seed(0)
        model = DigitsCNN()
        train(model, digits, epochs=20, lr=1e-3, seed=0)
    finally:
        torch.set_num_threads(threads)
    return model


@pytest.fixture
def cnn(digits_cnn, one_thread):
    """A fresh copy of ``digits_cnn``; the test runs on one thread."""
    return copy.deepcopy(digits_cnn)


@pytest.fixture
def one_thread():
    """Run the test on one intra-op thread (folders that want it make it autouse).

    The test machine is shared: with 2 threads every parallel region waits for a core another
    process holds (measured: a digits training step 4 ms -> 100+ ms), and bit-for-bit
    comparisons with `slimkit run` subprocesses (OMP_NUM_THREADS=1) need the same count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reload_mid_training(model, opt, path, lr: float = 1e-3):
    """Save ``model`` with its Adam state, load both into a fresh DigitsCNN built from another
    seed (so everything must come from the checkpoint); returns ``(model, optimizer)``."""
    import slimkit as sk

    sk.save(model, path, extra={"optimizer": opt.state_dict()})
    torch.manual_seed(123)
    fresh = sk.load(path, model=DigitsCNN())
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=lr)
    fresh_opt.load_state_dict(fresh._slimkit_extra["optimizer"])
    return fresh, fresh_opt


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    """Every state_dict entry of ``a`` and ``b`` is bit-identical (same keys)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
