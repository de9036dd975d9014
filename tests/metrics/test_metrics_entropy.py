import math

import numpy as np
import pytest
import torch

from slimkit.metrics import entropy_bound_bytes
from slimkit.metrics.entropy import entropy_bits_per_value, entropy_from_counts


def test_four_equiprobable_values_have_two_bits():
    values = np.repeat(np.array([-1.5, 0.0, 0.25, 3.0], dtype=np.float32), 250)
    np.random.default_rng(0).shuffle(values)
    assert abs(entropy_bits_per_value(values) - 2.0) < 1e-9


def test_constant_tensor_has_zero_entropy():
    value = entropy_bits_per_value(np.full((10, 10), 0.7))
    assert value == 0.0 and math.copysign(1.0, value) == 1.0  # not -0.0
    assert entropy_bits_per_value(np.zeros(0)) == 0.0


def test_skewed_distribution_matches_the_formula():
    values = np.array([0, 0, 0, 1] * 25)
    expected = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))  # 0.8113 bits
    assert abs(entropy_bits_per_value(values) - expected) < 1e-12
    assert abs(entropy_from_counts(np.array([75, 25])) - expected) < 1e-12


def test_values_are_compared_exactly():
    # Two floats 1 ulp apart are two values, not one.
    a = np.float32(1.0)
    values = np.array([a, np.nextafter(a, np.float32(2.0))] * 8)
    assert entropy_bits_per_value(values) == pytest.approx(1.0, abs=1e-12)


def test_bound_sums_n_times_h_over_8():
    two_bits = np.repeat(np.arange(4.0), 250)  # 1000 values * 2 bits = 250 bytes
    constant = np.ones((10, 10))  # 0 bytes
    one_bit = np.array([[0.0, 1.0]] * 4)  # 8 values * 1 bit = 1 byte
    assert abs(entropy_bound_bytes([two_bits, constant, one_bit]) - 251.0) < 1e-9
    assert entropy_bound_bytes([]) == 0.0


def test_bound_of_all_distinct_values_is_log2_n_bits_each():
    values = torch.randn(4096, generator=torch.Generator().manual_seed(0)).numpy()
    assert len(np.unique(values)) == 4096  # precondition: no repeats
    assert abs(entropy_bound_bytes([values]) - 4096 * 12 / 8) < 1e-6  # log2(4096) = 12 bits
