"""``sk.prune_channels`` never returns a wrong model or a silent no-op (issue 16: items 3, 5
and 8, and the permuted-classifier CNN found on a real pitch tracker)."""

from __future__ import annotations

import re
import time
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import slimkit as sk
from slimkit.techniques.channel_pruning.channels import count_macs


class PermutedHead(nn.Module):
    """A pitch-tracker-like CNN: the classifier reads the features frequency-major."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 6, 4)

    def forward(self, x):
        h = torch.relu(self.c2(torch.relu(self.bn(self.c1(x))))).mean(3)   # B, C, H
        return self.fc(h.permute(0, 2, 1).reshape(h.shape[0], -1))


class ConcatWidths(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 + 32, 10)

    def forward(self, x):
        x = F.relu(self.c2(F.relu(self.c1(x))))
        return self.fc(torch.cat([F.adaptive_avg_pool2d(x, 2).flatten(1), x.mean((2, 3))], 1))


class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.mid = nn.Embedding(50, 16), nn.Linear(16, 32)
        self.out, self.head = nn.Linear(32, 16), nn.Linear(16, 50, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(self.out(torch.relu(self.mid(self.emb(ids)))))


class KeywordOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 32), nn.Linear(32, 32), nn.Linear(32, 3)

    def forward(self, *, x, scale=None):
        h = torch.relu(self.b(torch.relu(self.a(x))))
        return self.c(h) * (1.0 if scale is None else scale)


class RawParams(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 4))

    def forward(self, x):
        return x @ self.w.t()


class RecurrentNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.fc = nn.LSTM(4, 8, batch_first=True), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.lstm(x)[0][:, -1])


def test_a_mis_mapped_classifier_is_refused_naming_the_layer():
    torch.manual_seed(0)
    model, x = PermutedHead(), torch.randn(4, 1, 6, 6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"first layer whose output differs is 'fc'"):
        sk.prune_channels(model, sk.ChannelPruningConfig(0.5), example_inputs=x)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())   # untouched


def test_a_correct_pruning_passes_the_function_check():
    # Same network without the permute: the mapping is right and the check stays quiet.
    class Plain(PermutedHead):
        def forward(self, x):
            h = torch.relu(self.c2(torch.relu(self.bn(self.c1(x))))).mean(3)
            return self.fc(h.reshape(h.shape[0], -1))

    torch.manual_seed(0)
    model = Plain()
    sk.prune_channels(model, sk.ChannelPruningConfig(0.5), example_inputs=torch.randn(4, 1, 6, 6))
    assert model.c1.out_channels == 4 and model.fc.in_features == 4 * 6


def test_diverging_trace_of_concatenated_widths_fails_in_seconds():
    torch.manual_seed(0)
    start = time.perf_counter()
    with pytest.raises(ValueError, match="channel mapping diverges where flattened features"):
        sk.prune_channels(ConcatWidths(), sk.ChannelPruningConfig(0.5),
                          example_inputs=torch.randn(2, 3, 16, 16))
    assert time.perf_counter() - start < 20   # before the guard: 17 GB, then killed
    # What the error suggests works: leave the layer feeding the concatenation whole.
    model = ConcatWidths()
    sk.prune_channels(model, sk.ChannelPruningConfig(0.5, ignore=["c2"]),
                      example_inputs=torch.randn(2, 3, 16, 16))
    assert model.c1.out_channels == 8 and model.c2.out_channels == 32


def test_tied_weights_are_refused_then_kept_tied_with_the_suggested_ignore():
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (2, 5))
    with pytest.raises(ValueError, match=r"untie emb\.weight and head\.weight.*ignore=\['out'\]"):
        sk.prune_channels(TiedLM(), sk.ChannelPruningConfig(0.5), example_inputs=ids)
    model = TiedLM()
    sk.prune_channels(model, sk.ChannelPruningConfig(0.5, ignore=["out"]), example_inputs=ids)
    assert model.mid.out_features == 16
    assert model.head.weight is model.emb.weight


def test_dict_and_keyword_only_inputs_are_traced():
    torch.manual_seed(0)
    model = KeywordOnly()
    inputs = {"x": torch.randn(4, 6)}
    sk.prune_channels(model, sk.ChannelPruningConfig(0.5), example_inputs=inputs)
    assert model.a.out_features == 16 and model.b.out_features == 16
    assert model(**inputs).shape == (4, 3)
    macs, params = count_macs(model, inputs)
    assert params == sum(p.numel() for p in model.parameters()) and macs > 0


@pytest.mark.parametrize("model,config,inputs,expected", [
    (RawParams(), sk.ChannelPruningConfig(0.5), torch.randn(2, 4),
     "removed nothing from RawParams.*bare parameters w"),
    (RecurrentNet(), sk.ChannelPruningConfig(0.5, ignore=["lstm"]), torch.randn(2, 5, 4),
     r"removed nothing from RecurrentNet.*lstm \(LSTM: in ignore\)"),
], ids=["raw-parameters", "lstm-ignored"])
def test_a_pruning_that_removes_nothing_says_so(model, config, inputs, expected):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sk.prune_channels(model, config, example_inputs=inputs)
    messages = [str(w.message) for w in caught if "prune_channels" in str(w.message)]
    assert len(messages) == 1 and re.search(expected, messages[0]), messages
