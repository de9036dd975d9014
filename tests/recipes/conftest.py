import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    # tests/conftest.py's one_thread for every test here: the resume test compares runs bit for bit.
    yield
