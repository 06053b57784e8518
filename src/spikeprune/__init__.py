"""spikeprune: compress spiking neural networks and explain what compression does to their spikes."""

__version__ = "0.1.0"

# foundation: neuron, models, data, warnings
from spikeprune.core.diagnostics import SpikepruneWarning, UserError
from spikeprune.engine.neuron import LIF, lif_multistep, record_statistics
from spikeprune.engine.models import create_model, list_models, register_model
from spikeprune.engine.data import BatchLoader, ImageDataset, list_datasets, load_dataset
# lottery tickets (unstructured pruning)
from spikeprune.tickets.calibration import calibrate
from spikeprune.tickets.masks import Mask, enforce
from spikeprune.tickets.pruning import prune, prune_step
from spikeprune.tickets.lottery import LotteryConfig, run_lottery
from spikeprune.tickets.edgepopup import EdgePopupConfig
from spikeprune.tickets.subnet import export_subnetwork, subnet_mask, to_edgepopup
# theory as measurements
from spikeprune.theory.firing import crisis_probability, density_sup
from spikeprune.theory.flips import flip_analysis
from spikeprune.theory.slth import construct, verify as verify_ticket
# QP-SNN compression and cost
from spikeprune.compression.quant import quantize_model
from spikeprune.compression.structured import prune_channels
from spikeprune.compression.cost import cost_report
# interop and export
from spikeprune.interop import adapt
from spikeprune.interop.nir_export import from_nir, to_nir
# scale-out and reproduction
from spikeprune.studies.sweep import edgepopup_sweep, lottery_sweep
from spikeprune.studies.protocols import protocol
from spikeprune.studies.reproduce import reproduce

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
    # scale-out and reproduction (torchrun data parallelism is automatic: spikeprune.core.distributed)
    "lottery_sweep", "edgepopup_sweep", "protocol", "reproduce",
]
