"""One traced graph of any SNN: which weight layer drives which BatchNorm and neuron, which layers read
which channels, and the ``[T, B, ...]`` / ``[T*B, ...]`` / ``[B, ...]`` layout of every tensor.

Calibration, the SF criteria, quantization, channel removal, the cost report and the NIR exporter all
need to know how a network is wired. Before this module each worked it out for itself from
execution order or attribute names, with its own guess at the tensor layout - which broke on every
network we did not write (a multi-step SpikingJelly net hands its convs ``[T, B, C, H, W]``, ours hand
them ``[T*B, C, H, W]``, the encoding layer sees ``[B, C, H, W]``). :func:`trace` works it out once.

The package, one layer above ``engine`` (every layer above may import it):

* :mod:`spikeprune.topology.graph`: what a trace produces - :class:`Node`, :class:`ChannelGroup`,
  :class:`Graph` and its queries (consumers, drivers, the BN and neuron a layer drives, tensor layouts,
  channel groups), leaf roles, :func:`channel_axis`, :func:`evaluation`, ``BATCHNORM``;
* :mod:`spikeprune.topology.tracing`: how it is produced - :func:`trace` (one hooked forward pass) and the
  reading of an input's layout (:func:`is_time_major`, :func:`sample_count`);
* :mod:`spikeprune.topology.batches`: :func:`run_batches`, the one loop that runs a few batches through a
  model under an observer and hooks, traced on the first batch (calibration, the cost report).
"""

from __future__ import annotations

from spikeprune.topology.graph import (BATCHNORM, ChannelGroup, Graph, Node, TopologyError, channel_axis, evaluation,
                                       role_of)
from spikeprune.topology.tracing import input_reading, is_time_major, sample_count, trace
from spikeprune.topology.batches import BatchRun, run_batches

__all__ = ["BATCHNORM", "BatchRun", "ChannelGroup", "Graph", "Node", "TopologyError", "channel_axis", "evaluation",
           "input_reading", "is_time_major", "role_of", "run_batches", "sample_count", "trace"]
