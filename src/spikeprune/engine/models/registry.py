"""Model registry: ``@register_model`` + ``create_model(name, ...)`` (the timm pattern).

A model takes a static image ``[B, C, H, W]`` (direct encoding: the encoding layer runs once and its
output is repeated over ``T``) or a spike/current sequence ``[T, B, C, H, W]`` (e.g. Poisson), and
returns per-timestep logits ``[T, B, num_classes]``. Prediction = argmax of the sum over t.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from spikeprune.core.diagnostics import UserError
from spikeprune.engine.models.layers import make_neuron_factory

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_BASE_ARGS = frozenset({"num_classes", "in_channels", "T", "width", "image_size", "neuron"})


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model constructor under its function name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_REGISTRY)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name} must be a positive integer; got {value!r}")
    return value


def create_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    T: int = 4,
    width: float = 1.0,
    *,
    image_size: int | tuple[int, int] = 32,
    neuron: Any = None,
    **options: Any,
) -> nn.Module:
    """Build a registered SNN.

    Args:
        name: one of :func:`list_models` (``mlp``, ``convnet``, ``vgg16``, ``resnet19``).
        num_classes: classifier outputs.
        in_channels: channels of the input image.
        T: timesteps used for a static (direct-encoded) input.
        width: channel multiplier (0.25 runs VGG/ResNet on a CPU).
        image_size: input height/width (an int for square images).
        neuron: ``None`` (default LIF), a dict of :class:`~spikeprune.LIF` arguments, ``"relu"``
            (ANN x T reference) or a zero-argument factory returning a neuron module.
        options: model-specific options (e.g. ``tdbn=True`` for ``resnet19``).

    Returns:
        an ``nn.Module`` mapping ``[B, C, H, W]`` or ``[T, B, C, H, W]`` to ``[T, B, num_classes]``;
        ``model.spikeprune_config`` holds the arguments (JSON-serialisable) so checkpoints can rebuild it.
    """
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    _positive_int("num_classes", num_classes)
    _positive_int("in_channels", in_channels)
    _positive_int("T (timesteps)", T)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise UserError(f"width must be a number > 0; got {width!r}")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
        raise UserError(f"image_size must be a positive int or (H, W); got {image_size!r}")
    constructor = _REGISTRY[name]
    accepted = set(inspect.signature(constructor).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown:
        allowed = sorted(accepted - _BASE_ARGS)
        raise UserError(f"model {name!r} has no option {unknown[0]!r}; its options: {allowed or 'none'}")
    model = constructor(
        num_classes=num_classes, in_channels=in_channels, T=T, width=float(width),
        image_size=size, neuron=make_neuron_factory(neuron), **options,
    )
    # Record every option with its default resolved, so a checkpoint rebuilds the same architecture
    # even if a later release changes a default.
    resolved = {
        k: p.default for k, p in inspect.signature(constructor).parameters.items()
        if k not in _BASE_ARGS and p.default is not inspect.Parameter.empty
    }
    resolved.update(options)
    model.spikeprune_config = {
        "name": name, "num_classes": num_classes, "in_channels": in_channels, "T": T,
        "width": float(width), "image_size": list(size),
        "neuron": neuron if (neuron is None or isinstance(neuron, (dict, str))) else "custom",
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in resolved.items()},
    }
    return model
