"""Save / load of models prepared with the new options: the fresh model is rebuilt the same
way (ReLU6 -> ReLU, zero biases, learned step sizes, AdaRound flags) and loads bit for bit."""

from __future__ import annotations

import warnings

import pytest
import torch

import slimkit as sk
from slimkit.techniques.quantization import AdaRoundConfig

from .conftest import TinyMobile, randomize_bn

X = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("config", [
    sk.QuantizationConfig(per_channel=False, equalize=True, bias_correction="bn"),
    sk.QATConfig(weight_bits=4, learn_ranges=True, equalize=True),
    AdaRoundConfig(weight_bits=3, iterations=5),
], ids=["cle-bn", "lsq", "adaround"])
def test_prepared_model_round_trips(config, tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(TinyMobile())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.quantize(model, config, calibration=X, progress=False)
        sk.save(model, tmp_path / "m.pt")
        torch.manual_seed(1)
        fresh = sk.load(tmp_path / "m.pt", model=randomize_bn(TinyMobile(), seed=1))
    a, b = model.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    model.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(X), model(X), rtol=0, atol=0)
