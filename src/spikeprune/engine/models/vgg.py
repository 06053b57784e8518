"""SNN-VGG-16 (LTH-SNN Appendix E; Kim et al. ECCV 2022): 13 conv3x3 -> BN -> LIF, 5 max-pools, Linear.

cfg 64,64,M,128,128,M,256x3,M,512x3,M,512x3,M; the first conv + BN is the encoding layer. The
classifier is a single Linear(512 * width, classes) after global average pooling (identity on
32x32 CIFAR, where five pools leave 1x1). On small inputs a pool that would shrink the map below 1x1
is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from spikeprune.core.diagnostics import UserError
from spikeprune.engine.models.layers import scaled
from spikeprune.engine.models.registry import register_model
from spikeprune.engine.models.small import SpikingConvNet

VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class SpikingVGG(SpikingConvNet):
    """VGG features; the head averages the final map to 1x1 before the classifier."""

    def __init__(self, cfg, in_channels, image_size, num_classes, T, neuron):
        super().__init__(cfg, in_channels, image_size, num_classes, T, neuron)
        last = [c for c in cfg if c != "M"][-1]
        self.classifier = nn.Linear(int(last), num_classes)

    def forward(self, x):
        x = self.features[0](x, self.T)
        for layer in self.features[1:]:
            x = layer(x)
        return self._head(x.mean(dim=(3, 4)))  # global average pool: [T, B, C]

    def _head(self, x):
        return self.classifier(x)


@register_model
def vgg16(num_classes, in_channels, T, width, image_size, neuron,
          channels: Sequence[int] | None = None) -> nn.Module:
    """SNN-VGG-16 with a width multiplier; ``channels`` (13 ints, scaled by ``width``) replaces the
    conv widths of ``VGG16_CFG`` (how a channel-pruned VGG is rebuilt from its checkpoint)."""
    base = VGG16_CFG
    if channels is not None:
        convs = [c for c in VGG16_CFG if c != "M"]
        if len(channels) != len(convs):
            raise UserError(f"vgg16 channels needs {len(convs)} entries; got {len(channels)}")
        it = iter(channels)
        base = [c if c == "M" else int(next(it)) for c in VGG16_CFG]
    cfg = [c if c == "M" else scaled(c, width) for c in base]
    return SpikingVGG(cfg, in_channels, image_size, num_classes, T, neuron)
