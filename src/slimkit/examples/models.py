"""Latency models for structured pruning: a ResNet-style net, a MobileNetV2-style net and a
small Transformer-encoder classifier. Random init is enough to measure speed; all three
train like any classifier if you need accuracy.

Example:
    >>> model = ResNetStyle().eval()
    >>> model(torch.randn(2, 3, 64, 64)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and a residual add (a 1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride)
        self.conv2 = _conv_bn(cout, cout, 3)
        self.shortcut = (
            _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        return torch.relu(self.conv2(h) + self.shortcut(x))


class ResNetStyle(nn.Module):
    """A ResNet-style classifier for 3x64x64 images: stem, three stages of basic blocks
    (widths 32/64/128, strides 1/2/2 after a stride-2 stem), global pooling, ``fc``.

    About 0.7M parameters and 0.11 GMACs per image.
    """

    def __init__(self, num_classes: int = 10, widths=(32, 64, 128), blocks=(2, 2, 2)):
        super().__init__()
        self.stem = _conv_bn(3, widths[0], 3, 2)
        layers, cin = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(torch.relu(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand -> 3x3 depthwise -> 1x1 project, residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = []
        if expand != 1:
            layers += [_conv_bn(cin, hidden, 1), nn.ReLU6()]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(),
                   _conv_bn(hidden, cout, 1)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV2Style(nn.Module):
    """A MobileNetV2-style classifier for 3x96x96 images (a slimmed MobileNetV2 setting)."""

    # (expansion, channels, blocks, stride) as in the MobileNetV2 paper, shortened.
    SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 3, 2), (6, 96, 2, 1))

    def __init__(self, num_classes: int = 10, last: int = 320):
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, 32, 3, 2), nn.ReLU6())
        blocks, cin = [], 32
        for t, c, n, s in self.SETTING:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(_conv_bn(cin, last, 1), nn.ReLU6())
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class TransformerClassifier(nn.Module):
    """Token ids (batch, seq) -> embedding -> ``nn.TransformerEncoder`` -> mean -> ``head``.

    Channel pruning shrinks the FFN neurons (``linear1`` outputs) and the model width, which
    in ``nn.MultiheadAttention`` means narrower heads (``head_dim``), the same count of heads.
    """

    def __init__(self, vocab: int = 1000, dim: int = 64, heads: int = 4, ffn: int = 256,
                 layers: int = 2, num_classes: int = 4, max_len: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, ffn, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        h = self.encoder(self.embed(ids) + self.pos(positions))
        return self.head(h.mean(1))
