"""spikeprune: compress spiking neural networks and explain what compression does to their spikes."""

__version__ = "0.1.0"

from .data import BatchLoader, ImageDataset, list_datasets, load_dataset
from .models import create_model, list_models, register_model
from .calibration import calibrate
from .masks import Mask, enforce
from .neuron import LIF, lif_multistep, record_statistics
from .pruning import prune
from .edgepopup import EdgePopupConfig, export_subnetwork, subnet_mask, to_edgepopup

__all__ = [
    "BatchLoader",
    "ImageDataset",
    "LIF",
    "Mask",
    "calibrate",
    "enforce",
    "prune",
    "create_model",
    "lif_multistep",
    "list_datasets",
    "list_models",
    "load_dataset",
    "record_statistics",
    "register_model",
    "EdgePopupConfig",
    "export_subnetwork",
    "subnet_mask",
    "to_edgepopup",
]
