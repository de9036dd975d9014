import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    # The test machine is shared: with 2 intra-op threads, every parallel region waits for a
    # core another process holds (measured: a digits training step 4 ms -> 100+ ms). One
    # thread keeps the folder fast; results do not depend on the thread count we test.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
