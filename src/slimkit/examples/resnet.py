"""A bottleneck ResNet-style conv net for 3x64x64 inputs: the latency model of BENCHMARKS.md.

Random initialisation is enough for latency; BatchNorm statistics are randomised by
:func:`randomize_batchnorm` so that folding BN is not a no-op in tests and benchmarks.

Example:
    >>> model = BottleneckResNet().eval()
    >>> model(torch.randn(2, 3, 64, 64)).shape        # torch.Size([2, 10])
"""

from __future__ import annotations

import torch
import torch.nn as nn


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand, each with BN; ReLU after the residual sum."""

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        skip = x if self.down is None else self.down(x)
        return self.relu(out + skip)


class BottleneckResNet(nn.Module):
    """Stem (3x3/2, 32) -> bottleneck stages of widths 32, 64, 128 (2 blocks each) -> FC."""

    def __init__(self, num_classes: int = 10, blocks: tuple[int, ...] = (2, 2, 2)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(32), nn.ReLU())
        layers, cin = [], 32
        for i, (n, width) in enumerate(zip(blocks, (32, 64, 128))):
            for j in range(n):
                layers.append(Bottleneck(cin, width, stride=2 if (j == 0 and i > 0) else 1))
                cin = width * 4
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm plausible non-trivial statistics (as after training); returns it."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model
