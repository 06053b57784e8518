"""spikeprune: compress spiking neural networks and explain what compression does to their spikes."""

__version__ = "0.1.0"

from .data import BatchLoader, ImageDataset, list_datasets, load_dataset
from .models import create_model, list_models, register_model
from .calibration import calibrate
from .masks import Mask, enforce
from .neuron import LIF, lif_multistep, record_statistics
from .pruning import prune, prune_step
from .lottery import LotteryConfig, run_lottery

__all__ = [
    "BatchLoader",
    "ImageDataset",
    "LIF",
    "Mask",
    "calibrate",
    "enforce",
    "prune",
    "prune_step",
    "LotteryConfig",
    "run_lottery",
    "create_model",
    "lif_multistep",
    "list_datasets",
    "list_models",
    "load_dataset",
    "record_statistics",
    "register_model",
]
