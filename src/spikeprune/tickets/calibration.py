"""Calibration pass: the statistics that firing-aware criteria need (SPEC §4), for any model.

One forward pass over a few training batches (eval mode, no gradients) records, for every prunable
layer (conv/linear weight):

* ``input_rate[i]``: mean of its input per input channel i over (T, B, H, W): the firing rate r_i
  when the input is spikes (``input_is_spikes``); the encoding layer sees analog values instead;
* the BatchNorm that reads its output (``bn``) and the first spiking layer that BN's output reaches
  (``neuron``), from the traced graph (:mod:`spikeprune.topology`): data flow, not module order, so a
  residual block's second conv is paired with the block's output neuron that fires after the add;
* for every spiking layer, per output channel: mean and variance of the pre-spike membrane potential
  u_t and the firing rate (:class:`~spikeprune.engine.neuron.NeuronStatistics`), and the *empirical* density
  of u_t at the threshold, ``P(|u_t - u_th| <= crisis_eps) / (2 crisis_eps)`` (the crisis probability of
  LTH-SNN Eq. 6 per unit width), which the ``sf-empirical`` criterion uses instead of a Gaussian fit.

Works on any ``nn.Module`` whose spiking layers are :class:`~spikeprune.LIF` (adapted SpikingJelly /
snnTorch nets included); batches may be ``(inputs, labels)`` pairs or bare input tensors. The channel
axis of a layer's input is the one the layer itself reads (:func:`~spikeprune.topology.channel_axis`),
so the statistics are the same whether a conv sees ``[B, C, H, W]``, ``[T*B, C, H, W]`` or a
multi-step ``[T, B, C, H, W]``, and they do not depend on how the samples are split into batches.
Every module's train/eval flag is restored afterwards (the user's BatchNorm statistics are never
updated).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from spikeprune.core.diagnostics import UserError
from spikeprune.tickets.masks import PRUNABLE_TYPES, prunable_weights
from spikeprune.engine.neuron import LIF, NeuronStatistics, StatisticsRecorder
from spikeprune.topology import channel_axis, run_batches

__all__ = ["Calibration", "LayerRecord", "calibrate"]

@dataclass
class LayerRecord:
    """What calibration learned about one prunable layer."""

    weight: str  # parameter name, e.g. "features.1.conv.weight"
    module: str  # module name, e.g. "features.1.conv"
    kind: str  # "conv" or "linear"
    input_rate: torch.Tensor  # [C_in] mean input per input channel (firing rate when spiking)
    input_is_spikes: bool  # every input value seen was 0 or 1
    bn: str | None = None  # BatchNorm module executed right after the layer
    neuron: str | None = None  # first spiking layer executed after that BatchNorm


@dataclass
class Calibration:
    """Result of :func:`calibrate`: per-layer records and per-neuron-layer statistics."""

    layers: dict[str, LayerRecord]  # keyed by weight name
    neurons: StatisticsRecorder
    num_batches: int
    num_samples: int
    modules: dict[str, nn.Module] = field(default_factory=dict, repr=False)
    #: per LIF layer, per channel: empirical density of u_t at u_th (box kernel of half-width crisis_eps)
    threshold_density: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    crisis_eps: float = 0.05

    def neuron_of(self, weight: str) -> tuple[LIF, Any] | None:
        """(LIF module, its statistics) driven by the layer owning ``weight``, if any."""
        rec = self.layers[weight]
        if rec.neuron is None or rec.neuron not in self.neurons.layers:
            return None
        return self.modules[rec.neuron], self.neurons[rec.neuron]


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Any], num_batches: int | None = 8, *,
              crisis_eps: float = 0.05) -> Calibration:
    """Run up to ``num_batches`` batches through ``model`` (eval mode) and collect statistics.

    Args:
        model: any module whose spiking layers are :class:`~spikeprune.LIF`.
        batches: iterable of ``(x, y)`` or ``x``; ``x`` is what ``model(x)`` takes.
        num_batches: how many batches to use (``None``: all).
        crisis_eps: half-width of the window around u_th for the empirical threshold density.
    """
    if isinstance(crisis_eps, bool) or not isinstance(crisis_eps, (int, float)) or not crisis_eps > 0:
        raise UserError(f"crisis_eps must be a number > 0; got {crisis_eps!r}")
    if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, int)
                                    or num_batches < 1):
        raise UserError(f"calibration batches must be a positive integer; got {num_batches!r}")
    weights = prunable_weights(model)
    named = dict(model.named_modules())
    owner = {f"{n}.weight" if n else "weight": n for n, m in named.items() if isinstance(m, PRUNABLE_TYPES)}
    layer_modules = {owner[w]: w for w in weights}

    rate_sum: dict[str, torch.Tensor] = {}
    rate_count: dict[str, int] = {}
    binary: dict[str, bool] = {}

    def pre_hook(name: str):
        def hook(module: nn.Module, inputs: tuple[Any, ...]) -> None:
            x = inputs[0].detach()
            # The channel axis the layer reads, whatever the leading layout ([B], [T*B] or [T, B]).
            axis = channel_axis(module, x)
            flat = x.movedim(axis, -1).reshape(-1, x.shape[axis])
            rate_sum[name] = rate_sum.get(name, 0) + flat.double().sum(0)
            rate_count[name] = rate_count.get(name, 0) + flat.shape[0]
            binary[name] = binary.get(name, True) and bool(((x == 0) | (x == 1)).all())
        return hook

    lif_names = {id(m): n for n, m in named.items() if isinstance(m, LIF)}
    neurons = StatisticsRecorder({n: NeuronStatistics() for n in lif_names.values()})
    near: dict[str, torch.Tensor] = {}

    def observer(lif: LIF, u: torch.Tensor, spikes: torch.Tensor) -> None:
        name = lif_names[id(lif)]
        neurons.layers[name].update(u, spikes)
        # per channel (dim 2 of [T, B, C, ...]): how many u_t lie within crisis_eps of the threshold
        channels = u.shape[2] if u.dim() > 2 else 1
        hits = ((u.detach() - lif.u_th).abs() <= crisis_eps).reshape(u.shape[0], u.shape[1], channels, -1)
        near[name] = near.get(name, 0) + hits.sum(dim=(0, 1, 3)).double()

    # Which BN / neuron each layer drives: traced once on the first batch, before anything is observed.
    seen_batches, seen_samples, graph = run_batches(
        model, batches, num_batches, observer=observer,
        install=lambda _graph: [named[n].register_forward_pre_hook(pre_hook(n)) for n in layer_modules],
        empty="calibration needs at least one batch; the calibration data was empty")

    layers: dict[str, LayerRecord] = {}
    for module_name, weight_name in layer_modules.items():
        module = named[module_name]
        if module_name not in rate_count:  # never executed (e.g. an unused branch)
            continue
        rec = LayerRecord(
            weight=weight_name, module=module_name,
            kind="linear" if isinstance(module, nn.Linear) else "conv",
            input_rate=(rate_sum[module_name] / rate_count[module_name]).float(),
            input_is_spikes=binary[module_name],
        )
        rec.bn, rec.neuron = graph.driven(module_name)
        layers[weight_name] = rec
    lifs = {n: m for n, m in named.items() if isinstance(m, LIF)}
    density = {n: (near[n] / max(neurons[n].count, 1) / (2 * crisis_eps)).float() for n in near}
    return Calibration(layers, neurons, seen_batches, seen_samples, lifs, density, float(crisis_eps))
