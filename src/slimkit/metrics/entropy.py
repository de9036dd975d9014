"""The entropy bound: how small a set of weight tensors could be coded, value by value.

For a tensor of n values whose distinct values occur with empirical frequencies p_i, the
Shannon entropy H = -sum(p_i * log2(p_i)) is the fewest bits per value that any lossless coder
coding each value on its own (Huffman, arithmetic coding) can average, given that
distribution. n * H / 8 bytes is therefore a floor for that tensor; the bound of a model is
the sum over its tensors. It leaves out the cost of storing the distribution (the codebook).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def entropy_from_counts(counts: np.ndarray) -> float:
    """Shannon entropy in bits of a distribution given by occurrence counts.

    Example:
        >>> from slimkit.metrics.entropy import entropy_from_counts
        >>> entropy_from_counts(np.array([5, 5, 5, 5]))
        2.0
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts[counts > 0] / total
    # max() turns the -0.0 of a single value into 0.0.
    return max(0.0, float(-(p * np.log2(p)).sum()))


def entropy_bits_per_value(values: np.ndarray) -> float:
    """Empirical Shannon entropy, in bits per value, over the exact values of an array.

    Values are compared exactly (no binning): a float tensor with all-distinct values has
    entropy log2(n), a clustered tensor with 16 equally used centroids has 4 bits.

    Example:
        >>> from slimkit.metrics.entropy import entropy_bits_per_value
        >>> entropy_bits_per_value(np.array([0.0, 1.0, 2.0, 3.0] * 250))
        2.0
    """
    values = np.asarray(values).ravel()
    if values.size == 0:
        return 0.0
    _, counts = np.unique(values, return_counts=True)
    return entropy_from_counts(counts)


def entropy_bound_bytes(tensors: Iterable[np.ndarray]) -> float:
    """Sum over tensors of n * H / 8: the entropy bound in bytes (see the module docstring).

    Example:
        >>> from slimkit.metrics import entropy_bound_bytes
        >>> entropy_bound_bytes([np.zeros(100), np.array([0.0, 1.0] * 4)])
        1.0
    """
    total = 0.0
    for tensor in tensors:
        array = np.asarray(tensor)
        total += array.size * entropy_bits_per_value(array) / 8.0
    return total
