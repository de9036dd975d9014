"""``one_thread()``: run a block with torch limited to one intra-op thread.

Loops of many small tensor ops (GPTQ's and SparseGPT's column loops, HQQ's iterations on
row blocks) pay the thread pool's wake-up on every op with several threads, which costs more
than the work on a 2-core machine (measured ~10x slower for the column loop under load).

Example:
    >>> with one_thread():
    ...     q = solve_columns(w, H)
"""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def one_thread():
    """Set torch's intra-op threads to 1 for the block, then restore the previous count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
