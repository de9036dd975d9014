import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    # tests/conftest.py's one_thread for every test here: results do not depend on the thread count we test.
    yield


@pytest.fixture(scope="session")
def trained_digits(digits):
    """tests/conftest.py's baseline (seed 0, Adam 1e-3, 20 epochs), trained on one thread.

    Session fixtures are built before the function-scoped one_thread above, so this copy
    sets the thread count itself.
    """
    from slimkit.examples import DigitsCNN, set_seed, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        set_seed(0)
        model = DigitsCNN()
        train(model, digits, epochs=20, lr=1e-3, seed=0)
    finally:
        torch.set_num_threads(threads)
    return model
