import io

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

import slimkit as sk
from slimkit.core.parametrize import SlimParametrization, register, strip_innermost
from slimkit.techniques.pruning import PruningMask
from tests.conftest import TiedLM


class AddOne(SlimParametrization):
    stage = "cluster"

    def forward(self, w):
        return w + 1.0


class Double(SlimParametrization):
    stage = "quant"

    def forward(self, w):
        return w * 2.0


def test_stack_order_is_mask_cluster_quant_whatever_the_call_order(seeded):
    model = nn.Sequential(nn.Linear(8, 8))
    raw = model[0].weight.detach().clone()
    register(model, [("0", "weight")], Double())
    register(model, [("0", "weight")], AddOne())
    sk.prune(model, sk.MagnitudePruningConfig(0.5))
    stack = model[0].parametrizations.weight
    assert [type(p) for p in stack] == [PruningMask, AddOne, Double]
    mask = stack[0].mask
    assert torch.equal(model[0].weight, (raw * mask + 1.0) * 2.0)
    with pytest.raises(ValueError, match=r"0.weight already has a mask parametrization"):
        sk.prune(model, sk.MagnitudePruningConfig(0.5))


def test_strip_innermost_bakes_only_the_mask(seeded):
    model = nn.Sequential(nn.Linear(8, 8))
    sk.prune(model, sk.MagnitudePruningConfig(0.5))
    register(model, [("0", "weight")], AddOne())
    expected = model[0].weight.detach().clone()
    strip_innermost(model, "0", "weight")
    assert [type(p) for p in model[0].parametrizations.weight] == [AddOne]
    assert torch.equal(model[0].weight, expected)
    assert float((model[0].parametrizations.weight.original == 0).float().mean()) == 0.5


def test_strip_gives_a_plain_module_with_the_same_outputs(seeded):
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    sk.prune(model, sk.MagnitudePruningConfig(0.75))
    x = torch.randn(5, 8)
    before = model(x)
    sk.strip(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert type(model[0]) is nn.Linear and sk.records(model) == []
    assert torch.equal(model(x), before)
    torch.save(model, io.BytesIO())  # refused while parametrized; fine after strip
    zeros = model[0].weight[model[0].weight == 0]
    assert zeros.numel() == 48 and not torch.signbit(zeros).any()  # +0.0 only


def test_tied_weights_stay_tied_and_share_one_mask(seeded):
    model = TiedLM()
    sk.prune(model, sk.MagnitudePruningConfig(0.5), targets=["embed"])
    emb, head = model.embed, model.head
    assert emb.parametrizations.weight[0] is head.parametrizations.weight[0]
    assert emb.parametrizations.weight.original is head.parametrizations.weight.original
    assert torch.equal(emb.weight, head.weight)
    ids = torch.randint(0, 50, (2, 7))
    before = model(ids)
    sk.strip(model)
    assert model.head.weight is model.embed.weight  # still one Parameter
    assert torch.equal(model(ids), before)
    assert float((model.embed.weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-9)


def test_stripping_a_deep_copy_leaves_the_original_prepared(seeded):
    # torch shares the generated parametrized class between a module and its deepcopy; slimkit
    # must not let stripping one edit the other.
    model = nn.Sequential(nn.Linear(4, 4), nn.LSTM(4, 4))
    sk.prune(model, sk.MagnitudePruningConfig(0.5))
    model[1](torch.randn(3, 2, 4))  # after a forward pass the LSTM caches its weights
    import copy

    twin = copy.deepcopy(model)
    sk.strip(twin)
    assert type(twin[0]) is nn.Linear and type(twin[1]) is nn.LSTM
    assert model[0].weight.shape == (4, 4) and model[1].weight_ih_l0.shape == (16, 4)
    assert parametrize.is_parametrized(model[0]) and parametrize.is_parametrized(model[1])
    x = torch.randn(3, 2, 4)
    assert torch.equal(model[1](x)[0], twin[1](x)[0])
