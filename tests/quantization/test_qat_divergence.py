"""A QAT run whose activations diverge gets a clear error, not "cannot convert float NaN to
integer" from inside the zero point (issue 16, item 19)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import slimkit as sk


def test_non_finite_activation_range_names_the_cause():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    sk.quantize(model, sk.QATConfig())
    model.train()
    x = torch.randn(2, 1, 8, 8)
    model(x)                                   # a healthy step: ranges observed
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"range became \[nan.*not finite.*learning rate"):
        model(bad)
