"""Registered SNN architectures. Importing this package registers them all."""

from spikeprune.engine.models import resnet, small, vgg  # noqa: F401  (registration side effect)
from spikeprune.engine.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
