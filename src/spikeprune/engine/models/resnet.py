"""Res-SNN-19 (Zheng et al., AAAI 2021, "Going deeper with directly-trained larger SNNs").

conv3x3 128 (encoding layer) -> stages of basic blocks 128x3 (stride 1), 256x3 (stride 2),
512x2 (stride 2) -> global average pool -> FC 256 -> LIF -> FC classes. In a block the residual is
added *before* the block's output neuron. With ``tdbn=True`` every BatchNorm is threshold-dependent
(scale alpha * u_th, alpha = 1/sqrt(2) on both branches of a residual add); otherwise plain BN
(still with statistics over T·B, since time is folded into the batch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from spikeprune.core.diagnostics import UserError
from spikeprune.engine.models.layers import (
    ConvBN,
    ConvBNLIF,
    NeuronFactory,
    ThresholdDependentBatchNorm2d,
    fold,
    scaled,
)
from spikeprune.engine.models.registry import register_model
from spikeprune.engine.neuron import DEFAULT_U_TH


def _bn_factory(tdbn: bool, u_th: float):
    def bn(channels: int, alpha: float = 1.0) -> nn.Module:
        if tdbn:
            return ThresholdDependentBatchNorm2d(channels, alpha=alpha, u_th=u_th)
        return nn.BatchNorm2d(channels)
    return bn


class SpikingBasicBlock(nn.Module):
    """conv-BN-LIF -> conv-BN, plus shortcut, then LIF. ``[T, B, C, H, W]`` -> ``[T, B, C', H', W']``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, neuron: NeuronFactory, bn,
                 mid_channels: int | None = None) -> None:
        super().__init__()
        half = 1 / math.sqrt(2)  # tdBN: both branches meeting in the add get alpha = 1/sqrt(2)
        mid = out_channels if mid_channels is None else mid_channels
        self.conv1 = ConvBNLIF(in_channels, mid, neuron, stride=stride, bn=bn(mid))
        self.conv2 = ConvBN(mid, out_channels, bn=bn(out_channels, half))
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
    def __init__(self, stages, in_channels, num_classes, T, width, neuron, tdbn: bool, u_th: float,
                 stem: int = 128, block_channels: Sequence[int] | None = None, hidden: int = 256):
        super().__init__()
        self.T = T
        bn = _bn_factory(tdbn, u_th)
        stem = scaled(stem, width)
        self.conv1 = ConvBNLIF(in_channels, stem, neuron, bn=bn(stem))
        blocks: list[nn.Module] = []
        channels = stem
        mids = iter(block_channels) if block_channels is not None else None
        for base, count, stride in stages:
            out = scaled(base, width)
            for i in range(count):
                mid = scaled(int(next(mids)), width) if mids is not None else None
                blocks.append(SpikingBasicBlock(channels, out, stride if i == 0 else 1, neuron, bn, mid))
                channels = out
        self.layers = nn.Sequential(*blocks)
        hidden = scaled(hidden, width)
        self.fc1 = nn.Linear(channels, hidden)
        self.lif_fc = neuron()
        self.classifier = nn.Linear(hidden, num_classes)

    def channel_options(self) -> dict:
        """The :func:`resnet19` options that rebuild this model's current channel widths (at width 1.0),
        e.g. after channel removal: stage widths, each block's inner width, the FC width."""
        stages: list[int] = []
        widths = []
        for block in self.layers:
            if not isinstance(block.shortcut, nn.Identity) or not stages:
                stages.append(0)
            stages[-1] = block.conv2.conv.out_channels
            widths.append(block.conv1.conv.out_channels)
        if self.conv1.conv.out_channels != stages[0]:
            raise UserError("this ResNet's stem and first stage have different widths; it cannot be rebuilt")
        return {"stage_channels": stages, "block_channels": widths, "hidden": self.fc1.out_features}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.conv1(x, self.T))
        x = x.mean(dim=(3, 4))  # global average pool: [T, B, C]
        x = self.lif_fc(fold(self.fc1, x))
        return fold(self.classifier, x)  # [T, B, classes]


@register_model
def resnet19(num_classes, in_channels, T, width, image_size, neuron, tdbn: bool = False,
             stage_channels: Sequence[int] | None = None, block_channels: Sequence[int] | None = None,
             hidden: int = 256) -> nn.Module:
    """Res-SNN-19; ``tdbn=True`` uses threshold-dependent BatchNorm (scale from the LIF threshold).

    Channel options (how a channel-pruned ResNet is rebuilt; all scaled by ``width``):
    ``stage_channels`` = the 3 stage widths (stage 1 shares its width with the stem through the
    identity shortcuts), ``block_channels`` = the inner width (conv1 output) of each of the 8 blocks,
    ``hidden`` = the width of the FC layer before the classifier.
    """
    u_th = getattr(neuron(), "u_th", DEFAULT_U_TH)
    stages = [(128, 3, 1), (256, 3, 2), (512, 2, 2)]
    if stage_channels is not None:
        if len(stage_channels) != len(stages):
            raise UserError(f"resnet19 stage_channels needs {len(stages)} entries; got {len(stage_channels)}")
        stages = [(int(c), n, s) for c, (_, n, s) in zip(stage_channels, stages)]
    if block_channels is not None and len(block_channels) != sum(n for _, n, _ in stages):
        raise UserError(f"resnet19 block_channels needs {sum(n for _, n, _ in stages)} entries; "
                         f"got {len(block_channels)}")
    return SpikingResNet(stages, in_channels, num_classes, T, width, neuron, bool(tdbn), float(u_th),
                         stem=stages[0][0], block_channels=block_channels, hidden=int(hidden))
