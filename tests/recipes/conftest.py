import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    # One intra-op thread: the test machine is shared (two threads wait on each other's
    # cores), and the resume test compares runs bit for bit, which needs the same thread
    # count in this process and in the `slimkit run` subprocesses (OMP_NUM_THREADS=1).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
