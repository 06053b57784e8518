"""spikeprune: compress spiking neural networks and explain what compression does to their spikes."""

__version__ = "0.1.0"

# foundation: neuron, models, data, warnings
from .diagnostics import SpikepruneWarning, UserError
from .neuron import LIF, lif_multistep, record_statistics
from .models import create_model, list_models, register_model
from .data import BatchLoader, ImageDataset, list_datasets, load_dataset
# lottery tickets (unstructured pruning)
from .calibration import calibrate
from .masks import Mask, enforce
from .pruning import prune, prune_step
from .lottery import LotteryConfig, run_lottery
from .edgepopup import EdgePopupConfig, export_subnetwork, subnet_mask, to_edgepopup
# theory as measurements
from .firing import crisis_probability, density_sup, flip_analysis
from .slth import construct, verify as verify_ticket
# QP-SNN compression and cost
from .quant import quantize_model
from .structured import prune_channels
from .cost import cost_report
# interop and export
from .interop import adapt
from .interop.nir_export import from_nir, to_nir
# scale-out and reproduction
from .sweep import edgepopup_sweep, lottery_sweep
from .protocols import protocol
from .reproduce import reproduce

__all__ = [
    # foundation
    "LIF", "lif_multistep", "record_statistics", "SpikepruneWarning", "UserError",
    "create_model", "list_models", "register_model",
    "BatchLoader", "ImageDataset", "list_datasets", "load_dataset",
    # lottery tickets
    "calibrate", "Mask", "enforce", "prune", "prune_step", "LotteryConfig", "run_lottery",
    "EdgePopupConfig", "export_subnetwork", "subnet_mask", "to_edgepopup",
    # theory
    "crisis_probability", "density_sup", "flip_analysis", "construct", "verify_ticket",
    # compression
    "quantize_model", "prune_channels", "cost_report",
    # interop and export
    "adapt", "to_nir", "from_nir",
    # scale-out and reproduction (torchrun data parallelism is automatic: spikeprune.distributed)
    "lottery_sweep", "edgepopup_sweep", "protocol", "reproduce",
]
