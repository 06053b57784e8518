"""spikeprune: compress spiking neural networks and explain what compression does to their spikes."""

__version__ = "0.1.0"

from .data import BatchLoader, ImageDataset, list_datasets, load_dataset
from .models import create_model, list_models, register_model
from .calibration import calibrate
from .masks import Mask, enforce
from .neuron import LIF, lif_multistep, record_statistics
from .pruning import prune
from .firing import crisis_probability, density_sup, flip_analysis
from .slth import construct, verify as verify_ticket
from .quant import quantize_model
from .structured import prune_channels
from .cost import cost_report
from .edgepopup import EdgePopupConfig, export_subnetwork, subnet_mask, to_edgepopup

__all__ = [
    "BatchLoader",
    "ImageDataset",
    "LIF",
    "Mask",
    "calibrate",
    "construct",
    "crisis_probability",
    "density_sup",
    "flip_analysis",
    "enforce",
    "prune",
    "prune_channels",
    "quantize_model",
    "cost_report",
    "create_model",
    "lif_multistep",
    "list_datasets",
    "list_models",
    "load_dataset",
    "record_statistics",
    "register_model",
    "verify_ticket",
    "EdgePopupConfig",
    "export_subnetwork",
    "subnet_mask",
    "to_edgepopup",
]
