"""Building blocks shared by the registered models.

Every block takes and returns time-major tensors ``[T, B, ...]``. Convolutions, BatchNorm and pooling
are stateless across time, so they run once on ``[T*B, ...]`` (time folded into the batch, as
SpikingJelly's ``SeqToANNContainer`` does); only the neuron sees the time axis. Folding also makes
BatchNorm statistics run over T·B, which is what tdBN prescribes (Zheng et al., AAAI 2021).

Module names are part of the public surface: masks, criteria and reports refer to parameters as
``features.3.conv.weight`` and expect the pattern conv -> bn -> neuron inside a block.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from spikeprune.core.diagnostics import UserError
from spikeprune.engine.neuron import DEFAULT_U_TH, LIF

NeuronFactory = Callable[[], nn.Module]


def fold(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a time-independent ``module`` to ``x`` of shape ``[T, B, ...]`` by folding T into B."""
    return module(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class ThresholdDependentBatchNorm2d(nn.BatchNorm2d):
    """tdBN (Zheng et al., AAAI 2021): ``y = gamma * alpha * u_th * x_hat + b``, statistics over T·B·H·W.

    ``alpha`` is 1 in plain layers and 1/sqrt(2) on the two branches that meet in a residual add, so
    that the sum keeps the pre-activation variance near u_th^2.
    """

    def __init__(self, num_features: int, alpha: float = 1.0, u_th: float = DEFAULT_U_TH, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.scale = float(alpha * u_th)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if self.scale == 1.0:
            return y
        if self.affine:  # gamma * scale * x_hat + b, computed as scale * (y - b) + b
            bias = self.bias.view(1, -1, *([1] * (x.dim() - 2)))
            return (y - bias) * self.scale + bias
        return y * self.scale

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scale={self.scale:.4g}"


class ConvBN(nn.Module):
    """conv (no bias) -> BatchNorm on ``[T, B, C, H, W]`` or, for the encoding layer, on ``[B, C, H, W]``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        bn: nn.Module | None = None,
    ) -> None:
        super().__init__()
        padding = kernel_size // 2 if padding is None else padding
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = bn if bn is not None else nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # static image: computed once (direct encoding)
            return self.bn(self.conv(x))
        return fold(lambda y: self.bn(self.conv(y)), x)


class ConvBNLIF(ConvBN):
    """conv -> BN -> neuron. ``[T, B, C, H, W]`` -> spikes ``[T, B, C', H', W']``.

    Given a static ``[B, C, H, W]`` image (direct encoding) the conv and BN run once and their output
    is repeated over ``T`` timesteps before the neuron: the layer is then the *encoding layer*.
    """

    def __init__(self, in_channels: int, out_channels: int, neuron: NeuronFactory, **kwargs) -> None:
        super().__init__(in_channels, out_channels, **kwargs)
        self.lif = neuron()

    def forward(self, x: torch.Tensor, T: int | None = None) -> torch.Tensor:
        y = super().forward(x)
        if y.dim() == 4:
            if T is None:
                raise UserError("a static [B, C, H, W] input needs the number of timesteps T")
            y = y.unsqueeze(0).expand(T, *y.shape)
        return self.lif(y)


class LinearBNLIF(nn.Module):
    """linear (no bias) -> BatchNorm1d -> neuron. ``[T, B, N]`` (or static ``[B, N]``) -> ``[T, B, M]``."""

    def __init__(self, in_features: int, out_features: int, neuron: NeuronFactory) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, out_features, bias=False)
        self.bn = nn.BatchNorm1d(out_features)
        self.lif = neuron()

    def forward(self, x: torch.Tensor, T: int | None = None) -> torch.Tensor:
        if x.dim() == 2:  # static input: the encoding layer, computed once
            if T is None:
                raise UserError("a static [B, N] input needs the number of timesteps T")
            y = self.bn(self.fc(x))
            y = y.unsqueeze(0).expand(T, *y.shape)
        else:
            y = fold(lambda z: self.bn(self.fc(z)), x)
        return self.lif(y)


class TimeFolded(nn.Module):
    """Wrap a time-independent module (pooling, flatten) so it accepts ``[T, B, ...]``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fold(self.module, x)


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)`` with a faster inference forward; ``[N, C, H, W]`` -> ``[N, C, H//2, W//2]``.

    Without gradients the max of each 2x2 window is taken from strided views (rows, then columns):
    the same values bit for bit, measured 5.8x faster than ATen's CPU ``max_pool2d`` kernel on a
    ``[1024, 32, 28, 28]`` spike map (benchmarks/RESULTS.md §2). Training keeps ``max_pool2d``: its
    backward sends a tied window's gradient to the first maximum, where ``torch.maximum`` would split
    it — and spike maps are full of ties. It is still an ``nn.MaxPool2d`` (NIR export, cost reports).
    """

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad or x.dim() != 4:
            return super().forward(x)
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2  # an odd last row/column is dropped, as in max_pool2d
        x = x[..., :h, :w]
        rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
        return torch.maximum(rows[..., 0::2], rows[..., 1::2])


class ReLUNeuron(nn.Module):
    """The "ANN x T" reference: ReLU in place of the spiking neuron, same shapes ``[T, B, ...]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


def make_neuron_factory(neuron: "NeuronFactory | dict | str | None") -> NeuronFactory:
    """Turn the ``neuron=`` argument of ``create_model`` into a zero-argument factory.

    ``None`` -> default :class:`LIF`; a ``dict`` -> ``LIF(**dict)``; ``"lif"``; ``"relu"`` -> the
    ANN x T reference; a callable is used as is (e.g. ``lambda: MyNeuron(...)``).
    """
    if neuron is None or neuron == "lif":
        return LIF
    if isinstance(neuron, dict):
        LIF(**neuron)  # validate once, here, so a bad value fails before any layer is built
        return lambda: LIF(**neuron)
    if neuron == "relu":
        return ReLUNeuron
    if callable(neuron):
        return neuron
    raise UserError(f"neuron must be None, a dict of LIF arguments, 'lif', 'relu' or a callable; got {neuron!r}")


def scaled(channels: int, width: float) -> int:
    """Channel count under a width multiplier (at least 1)."""
    return max(1, int(round(channels * width)))


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return math.floor((size + 2 * padding - kernel) / stride) + 1
