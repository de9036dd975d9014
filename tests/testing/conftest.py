import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The machine is shared: with 2 intra-op threads every parallel region waits for a core
    # another process holds. The kit's results do not depend on the thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
