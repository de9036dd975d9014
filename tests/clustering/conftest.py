import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    # tests/conftest.py's one_thread for every test here: results do not depend on the thread count we test.
    yield


@pytest.fixture(scope="session")
def trained_digits(digits_cnn):
    """tests/conftest.py's baseline, the copy trained on one thread (``digits_cnn``)."""
    return digits_cnn
