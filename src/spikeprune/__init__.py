"""spikeprune: compress spiking neural networks and explain what compression does to their spikes.

The public API is the workflow, one step per group: build or adapt a network, train it, prune it
(lottery tickets, edge-popup), compress it (quantization, channels), measure it (cost, spike flips),
export it (NIR), and run studies. Everything else lives in the subpackages (docs/architecture.md).

Three rules hold for every name below:

1. **Transforms change the model in place and return what they did, never the model.**
   ``prune`` returns the :class:`Mask` it applied, ``prune_channels`` the kept channel indices per
   group, ``quantize_model`` the quantized layers with their settings. Constructors that build a
   *new* network say so in their name or type and return it: ``create_model``, ``adapt``,
   ``export_subnetwork``, ``from_nir``.
2. **Every run returns a** :class:`RunResult` ``(out, metrics, rows, model)``: ``fit``,
   ``run_lottery``, ``compress``, the sweeps and ``reproduce``. Its numbers are the ones in the run
   folder's JSON files, under the same names (``test_accuracy``, ``val_accuracy``, ...), and so are
   ``evaluate(model, loader)``'s (``test_accuracy``, ``test_loss``, ``firing_rate``; ``split="val"``
   gives ``val_accuracy``, ``val_loss``). Each CLI command's Python call: docs/reference.md.
3. **Every loader returns** ``(model, meta)``: ``load_model``, ``load_ticket``, ``load_compressed``;
   ``meta`` is the checkpoint's JSON header (config, history, masks' provenance). Files are
   safetensors + JSON; nothing is ever unpickled.

Bad input raises :class:`UserError` (a ``ValueError``) with one line saying what to change.
"""

__version__ = "0.1.0"

# results and diagnostics
from spikeprune.core.diagnostics import SpikepruneWarning, UserError
from spikeprune.core.rundir import RunResult
# build: the neuron, registered models, datasets, third-party networks
from spikeprune.engine.neuron import LIF, record_statistics
from spikeprune.engine.models import create_model, list_models, register_model
from spikeprune.engine.data import list_datasets, load_dataset
from spikeprune.interop import adapt
# train and evaluate
from spikeprune.engine.config import TrainConfig
from spikeprune.engine.train import evaluate, fit, load_model
# lottery tickets (unstructured pruning)
from spikeprune.tickets.calibration import calibrate
from spikeprune.tickets.masks import Mask, enforce
from spikeprune.tickets.pruning import prune
from spikeprune.tickets.lottery import LotteryConfig, load_ticket, run_lottery
from spikeprune.tickets.edgepopup import EdgePopupConfig
from spikeprune.tickets.subnet import export_subnetwork
# compression (QP-SNN) and cost
from spikeprune.compression.quant import quantize_model
from spikeprune.compression.structured import prune_channels
from spikeprune.compression.compress import CompressConfig, compress, load_compressed
from spikeprune.compression.cost import cost_report
# what compression does to the spikes
from spikeprune.theory.flips import flip_analysis
# export
from spikeprune.interop.nir_export import from_nir, to_nir
# studies
from spikeprune.studies.sweep import edgepopup_sweep, lottery_sweep
from spikeprune.studies.reproduce import reproduce

__all__ = [
    "RunResult", "UserError", "SpikepruneWarning",
    # build
    "LIF", "record_statistics", "create_model", "list_models", "register_model", "list_datasets",
    "load_dataset", "adapt",
    # train and evaluate
    "TrainConfig", "fit", "evaluate", "load_model",
    # lottery tickets
    "calibrate", "Mask", "enforce", "prune", "LotteryConfig", "run_lottery", "load_ticket",
    "EdgePopupConfig", "export_subnetwork",
    # compression
    "quantize_model", "prune_channels", "CompressConfig", "compress", "load_compressed", "cost_report",
    # spikes
    "flip_analysis",
    # export
    "to_nir", "from_nir",
    # studies (torchrun data parallelism is automatic: spikeprune.core.distributed)
    "lottery_sweep", "edgepopup_sweep", "reproduce",
]
