"""Fixtures of the accurate-quantization tests: the AdaRound technique registered (the lead
adds its entry point), a small depthwise-separable net with BatchNorm and ReLU6."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from slimkit.core.registry import register
from slimkit.techniques.quantization.api import ADAROUND_TECHNIQUE

register(ADAROUND_TECHNIQUE)


class TinyMobile(nn.Module):
    """conv 3x3 -> BN -> act -> [pointwise -> BN -> act -> depthwise -> BN -> act ->
    pointwise -> BN] -> act -> pool -> flatten -> linear (``act``: ReLU or ReLU6)."""

    def __init__(self, act=nn.ReLU6, width: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(width)
        self.act0 = act()
        self.expand = nn.Conv2d(width, 2 * width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(2 * width)
        self.act1 = act()
        self.dw = nn.Conv2d(2 * width, 2 * width, 3, padding=1, groups=2 * width, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.act2 = act()
        self.project = nn.Conv2d(2 * width, width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.act3 = act()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        x = self.act0(self.bn0(self.stem(x)))
        x = self.act1(self.bn1(self.expand(x)))
        x = self.act2(self.bn2(self.dw(x)))
        x = self.act3(self.bn3(self.project(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def randomize_bn(model: nn.Module, seed: int = 0, spread: float = 2.0) -> nn.Module:
    """Eval-mode BatchNorms with widely different per-channel statistics (what makes
    per-tensor int8 of a depthwise layer fail), deterministic."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
            m.running_var.copy_(torch.exp(torch.randn(c, generator=gen) * spread))
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)
    return model.eval()


def data_bn(model: nn.Module, x: torch.Tensor, seed: int = 0, spread: float = 2.0) -> nn.Module:
    """BatchNorms whose scales spread as ``exp(spread * N(0, 1))`` per channel and whose running
    statistics are the true ones of ``x`` (what data-free bias correction relies on)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.momentum = None  # cumulative average: exact statistics of the batches seen
            m.reset_running_stats()
            with torch.no_grad():
                m.weight.copy_(torch.exp(torch.randn(c, generator=gen) * spread))
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


@pytest.fixture
def tiny_mobile():
    torch.manual_seed(0)
    return randomize_bn(TinyMobile())


@pytest.fixture
def tiny_mobile_relu():
    torch.manual_seed(0)
    return randomize_bn(TinyMobile(act=nn.ReLU))
