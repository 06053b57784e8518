"""Res-SNN-19 (Zheng et al., AAAI 2021, "Going deeper with directly-trained larger SNNs").

conv3x3 128 (encoding layer) -> stages of basic blocks 128x3 (stride 1), 256x3 (stride 2),
512x2 (stride 2) -> global average pool -> FC 256 -> LIF -> FC classes. In a block the residual is
added *before* the block's output neuron. With ``tdbn=True`` every BatchNorm is threshold-dependent
(scale alpha * u_th, alpha = 1/sqrt(2) on both branches of a residual add); otherwise plain BN
(still with statistics over T·B, since time is folded into the batch).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import ConvBN, ConvBNLIF, NeuronFactory, ThresholdDependentBatchNorm2d, fold, scaled
from .registry import register_model


def _bn_factory(tdbn: bool, u_th: float):
    def bn(channels: int, alpha: float = 1.0) -> nn.Module:
        if tdbn:
            return ThresholdDependentBatchNorm2d(channels, alpha=alpha, u_th=u_th)
        return nn.BatchNorm2d(channels)
    return bn


class SpikingBasicBlock(nn.Module):
    """conv-BN-LIF -> conv-BN, plus shortcut, then LIF. ``[T, B, C, H, W]`` -> ``[T, B, C', H', W']``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, neuron: NeuronFactory, bn) -> None:
        super().__init__()
        half = 1 / math.sqrt(2)  # tdBN: both branches meeting in the add get alpha = 1/sqrt(2)
        self.conv1 = ConvBNLIF(in_channels, out_channels, neuron, stride=stride, bn=bn(out_channels))
        self.conv2 = ConvBN(out_channels, out_channels, bn=bn(out_channels, half))
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.shortcut = ConvBN(in_channels, out_channels, kernel_size=1, stride=stride, padding=0,
                                   bn=bn(out_channels, half))
        else:
            self.shortcut = nn.Identity()
        self.lif = neuron()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lif(self.conv2(self.conv1(x)) + self.shortcut(x))


class SpikingResNet(nn.Module):
    def __init__(self, stages, in_channels, num_classes, T, width, neuron, tdbn: bool, u_th: float):
        super().__init__()
        self.T = T
        bn = _bn_factory(tdbn, u_th)
        stem = scaled(128, width)
        self.conv1 = ConvBNLIF(in_channels, stem, neuron, bn=bn(stem))
        blocks: list[nn.Module] = []
        channels = stem
        for base, count, stride in stages:
            out = scaled(base, width)
            for i in range(count):
                blocks.append(SpikingBasicBlock(channels, out, stride if i == 0 else 1, neuron, bn))
                channels = out
        self.layers = nn.Sequential(*blocks)
        hidden = scaled(256, width)
        self.fc1 = nn.Linear(channels, hidden)
        self.lif_fc = neuron()
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.conv1(x, self.T))
        x = x.mean(dim=(3, 4))  # global average pool: [T, B, C]
        x = self.lif_fc(fold(self.fc1, x))
        return fold(self.classifier, x)  # [T, B, classes]


@register_model
def resnet19(num_classes, in_channels, T, width, image_size, neuron, tdbn: bool = False) -> nn.Module:
    """Res-SNN-19; ``tdbn=True`` uses threshold-dependent BatchNorm (scale from the LIF threshold)."""
    u_th = getattr(neuron(), "u_th", 1.0)
    return SpikingResNet([(128, 3, 1), (256, 3, 2), (512, 2, 2)], in_channels, num_classes, T, width,
                         neuron, bool(tdbn), float(u_th))
