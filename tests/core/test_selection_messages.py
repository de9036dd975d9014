"""The messages of layer selection name real things (issue 16, "Smaller": the root module's
empty name, a registered type listed as supported by a technique that does not take it)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

import slimkit as sk
from slimkit.core import selection


class RawParamNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 8))

    def forward(self, x):
        return x @ self.w.t()


@pytest.fixture
def registered():
    sk.register_weights(RawParamNet, ["w"])
    yield
    selection._WEIGHTS.pop(RawParamNet, None)


def test_a_root_module_with_unknown_weights_is_named():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 8))
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(x @ self.w)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sk.prune(Wrapper(), sk.MagnitudePruningConfig(0.5))
    text = " ".join(str(w.message) for w in caught)
    assert "(the model itself) (Wrapper)" in text, text


def test_quantization_error_lists_only_the_types_it_quantizes(registered):
    with pytest.raises(ValueError, match="found no quantizable layer") as info:
        sk.quantize(RawParamNet(), sk.QuantizationConfig(mode="dynamic"))
    supported = str(info.value).split("supported:")[1]
    assert "Linear" in supported and "RawParamNet" not in supported
