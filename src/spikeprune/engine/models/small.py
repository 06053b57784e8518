"""CPU-sized models: a spiking MLP and a small convnet.

``convnet``: conv3x3 -> BN -> LIF blocks with 2x2 max-pooling, the first block being the encoding
layer (direct encoding), then one linear classifier on the flattened spike map. Default channels
(32, 64, 128) with a pool after each block; ~0.1 M parameters at 28x28. Chosen to reach >= 92 % on
Fashion-MNIST at T = 4 within 10 epochs while training in a few minutes per epoch on 2 CPU cores
(benchmarks/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from spikeprune.core.diagnostics import UserError
from spikeprune.engine.models.layers import (
    ConvBNLIF,
    LinearBNLIF,
    MaxPool2x2,
    NeuronFactory,
    TimeFolded,
    fold,
    scaled,
)
from spikeprune.engine.models.registry import register_model


class SpikingMLP(nn.Module):
    """Flatten -> [Linear -> BN -> LIF] x depth -> Linear. Input ``[B, C, H, W]`` or ``[T, B, C, H, W]``."""

    def __init__(self, in_features: int, hidden: int | Sequence[int], depth: int, num_classes: int, T: int,
                 neuron: NeuronFactory):
        super().__init__()
        self.T = T
        sizes = [in_features] + ([hidden] * depth if isinstance(hidden, int) else [int(h) for h in hidden])
        self.features = nn.ModuleList(LinearBNLIF(a, b, neuron) for a, b in zip(sizes[:-1], sizes[1:]))
        self.classifier = nn.Linear(sizes[-1], num_classes)

    def channel_options(self) -> dict:
        """The :func:`mlp` options that rebuild this model's current widths (at width 1.0)."""
        return {"hidden_sizes": [m.fc.out_features for m in self.features]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        static = x.dim() == 4
        x = x.flatten(1) if static else x.flatten(2)
        for i, block in enumerate(self.features):
            x = block(x, self.T) if i == 0 else block(x)
        return fold(self.classifier, x)  # [T, B, classes]


class SpikingConvNet(nn.Module):
    """Small VGG-style SNN: ``cfg`` of channel counts and ``"M"`` (2x2 max-pool), then a linear head."""

    def __init__(self, cfg: Sequence[int | str], in_channels: int, image_size: tuple[int, int],
                 num_classes: int, T: int, neuron: NeuronFactory):
        super().__init__()
        self.T = T
        layers: list[nn.Module] = []
        channels, (h, w) = in_channels, image_size
        for item in cfg:
            if item == "M":
                if min(h, w) >= 2:  # tiny inputs (8x8 digits) simply skip the last pools
                    layers.append(TimeFolded(MaxPool2x2()))
                    h, w = h // 2, w // 2
            else:
                layers.append(ConvBNLIF(channels, int(item), neuron))
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * h * w, num_classes)

    def channel_options(self) -> dict:
        """The :func:`convnet` / :func:`vgg16` options that rebuild this model's current widths (at width 1.0)."""
        return {"channels": [m.conv.out_channels for m in self.features if hasattr(m, "lif")]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features[0](x, self.T)  # encoding layer: runs once on a static image
        for layer in self.features[1:]:
            x = layer(x)
        return fold(self.classifier, x.flatten(2))  # [T, B, classes]


@register_model
def mlp(num_classes, in_channels, T, width, image_size, neuron, hidden: int = 256, depth: int = 2,
        hidden_sizes: Sequence[int] | None = None) -> nn.Module:
    """Spiking MLP with ``depth`` hidden layers of ``hidden * width`` LIF neurons; ``hidden_sizes``
    (one int per layer, scaled by ``width``) overrides both (how a neuron-pruned MLP is rebuilt)."""
    if depth < 1:
        raise UserError(f"mlp depth must be >= 1; got {depth!r}")
    in_features = in_channels * image_size[0] * image_size[1]
    if hidden_sizes is not None:
        if len(hidden_sizes) < 1:
            raise UserError("mlp hidden_sizes needs at least one entry")
        return SpikingMLP(in_features, [scaled(int(h), width) for h in hidden_sizes], 0, num_classes, T, neuron)
    return SpikingMLP(in_features, scaled(hidden, width), depth, num_classes, T, neuron)


@register_model
def convnet(num_classes, in_channels, T, width, image_size, neuron,
            channels: Sequence[int] = (32, 64, 128)) -> nn.Module:
    """Small spiking convnet: one conv-BN-LIF block + 2x2 max-pool per entry of ``channels``."""
    if not channels:
        raise UserError("convnet needs at least one entry in channels")
    cfg: list[int | str] = []
    for c in channels:
        cfg += [scaled(int(c), width), "M"]
    return SpikingConvNet(cfg, in_channels, image_size, num_classes, T, neuron)
