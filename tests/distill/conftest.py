import copy

import pytest
import torch

from slimkit.examples import DigitsCNN, set_seed, train


@pytest.fixture(scope="package")
def digits_cnn(digits):
    """The digits baseline (20 epochs, Adam 1e-3, seed 0) trained on one thread: on the shared
    2-core machine two threads measured ~40x slower per step under load."""
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
    return copy.deepcopy(digits_cnn)
