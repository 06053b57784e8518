"""Registered SNN architectures. Importing this package registers them all."""

from . import resnet, small, vgg  # noqa: F401  (registration side effect)
from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
