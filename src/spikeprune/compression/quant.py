"""Uniform b-bit weight quantization (SPEC §7; QP-SNN's ReScaW scales).

This module is the entry point: :func:`quantize_model` makes a whole model quantization-aware (weights,
optionally membranes), :data:`PRESETS` names QP-SNN's own combination, :func:`reestimate_batchnorm`
refits BatchNorm statistics after quantizing. The science lives in the modules it composes, and every
name of theirs stays importable from here:

* :mod:`spikeprune.compression.quant_weights`: the 2^b-level grid (``W_hat = gamma ((2/s) W_int - 1)``,
  ``s = 2^b - 1``), its straight-through gradient, the ReScaW scales and the quantized conv/linear layers.
* :mod:`spikeprune.compression.quant_membrane`: membrane-potential quantization (MINT) as a membrane hook
  of the ordinary LIF (:class:`QuantizedLIF`).
* :mod:`spikeprune.compression.quant_utilisation`: bit-width utilisation (QP-SNN §4.1).
* :mod:`spikeprune.compression.quant_state`: the quantization state a checkpoint stores, and its reload.

First and last layers: quantized to b bits like the others, kept at full precision (QP-SNN's
reference) or at 8 bits (``first_last=``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from spikeprune.core.diagnostics import UserError
from spikeprune.compression import quant_membrane, quant_state, quant_utilisation, quant_weights
from spikeprune.compression.quant_membrane import (
    QuantizedLIF,
    lif_multistep_quantized,
    membrane_register,
    membrane_scale,
    quantize_membranes,
)
from spikeprune.compression.quant_weights import _describe
from spikeprune.compression.quant_state import load_quantization_state, quantization_state
from spikeprune.compression.quant_utilisation import bit_utilisation, utilisation_report
from spikeprune.compression.quant_weights import (  # noqa: F401  (_surviving_scale: tests read it here)
    GRADIENTS,
    QUANT_TYPES,
    SCALE_METHODS,
    QuantConv1d,
    QuantConv2d,
    QuantConv3d,
    QuantLinear,
    QuantSpec,
    _surviving_scale,
    freeze,
    is_layout_wrapper,
    quantizable_layers,
    quantize_layer,
    quantize_weight,
    quantized_class,
    quantized_layers,
    unfreeze,
    weight_codes,
    weight_scale,
)
from spikeprune.topology import BATCHNORM

#: this module's names and every public name of the modules it composes (importable from here, as before)
__all__ = ["FIRST_LAST", "PRESETS", "quantize_model", "reestimate_batchnorm", *quant_weights.__all__,
           *quant_membrane.__all__, *quant_utilisation.__all__, *quant_state.__all__]


#: precision of the first and last quantized layers: "b" (the same b bits), "full" (not quantized) or "8"
FIRST_LAST = ("b", "full", "8")
#: named combinations of (scale method, per_channel, gradient, first_last). "qpsnn": QP-SNN's public
#: reference quantizer (gamma = mean|W| per output channel, straight-through gradient, first and last
#: layers at full precision); "spikeprune": this library's default (per-layer gamma, clipped gradient,
#: every layer at b bits).
PRESETS = {
    "spikeprune": {"method": "mean", "per_channel": False, "gradient": "clip", "first_last": "b"},
    "qpsnn": {"method": "mean", "per_channel": True, "gradient": "ste", "first_last": "full"},
}


def quantize_model(
    model: nn.Module,
    bits: int = 4,
    *,
    method: str = "mean",
    per_channel: bool = False,
    percentile: float = 99.0,
    layers: Iterable[str] | None = None,
    membrane_bits: int | None = None,
    example_input: torch.Tensor | None = None,
    gradient: str = "clip",
    first_last: str = "b",
) -> dict[str, str]:
    """Make ``model`` quantization-aware, in place; returns what it did: ``{layer name: its quantizer}``
    (e.g. ``"4-bit, gamma=mean|W| per channel"``; layers left in float are absent), plus, when
    ``membrane_bits`` is given, ``"<neuron> (membrane)"``: ``"<b>-bit, scale shared with <layer>"``.

    Args:
        model: any module; every conv (1-3 d) / linear layer (or those named in ``layers``) is swapped
            for its quantized twin, including subclasses that only fold leading dims (SpikingJelly's
            multi-step ``layer.Conv2d``/``layer.Linear``; see :func:`is_layout_wrapper`). First and last layers included by default: the model size the cost
            report gives is then the size of what is really stored.
        bits: weight bit-width b in [1, 16] (2^b levels).
        method: ReScaW scale gamma: ``"mean"`` (mean|W|, QP-SNN), ``"max"`` (vanilla) or ``"percentile"``.
        per_channel: one gamma per output channel instead of per layer.
        percentile: the percentile of |W| for ``method="percentile"``.
        layers: module names to quantize (default: all conv/linear layers).
        gradient: ``"clip"`` (SPEC §7: zero outside [-gamma, gamma]) or ``"ste"`` (QP-SNN's reference:
            straight through everywhere).
        first_last: the first and last of the chosen layers (in execution order on ``example_input``
            when given, else in module order) at ``"b"`` bits like the rest, ``"full"`` precision (not
            quantized; QP-SNN's reference) or ``"8"`` bits.
        membrane_bits: also quantize the membrane potential of every LIF driven by a quantized layer
            to this many bits, with the scale shared with that layer's weights (MINT; see
            :func:`membrane_scale`). Needs ``example_input`` to find which layer drives which neuron.
        example_input: one input batch ``[B, C, H, W]`` or ``[T, B, ...]`` (only for ``membrane_bits``).

    Call it before building the optimizer. Training then needs nothing special:
    ``quantize_model(model, 4); train.fit(cfg, out, model=model)``.
    """
    spec = QuantSpec(bits, method, bool(per_channel), percentile, gradient)
    if first_last not in FIRST_LAST:
        raise UserError(f"unknown first_last {first_last!r}; choose one of {', '.join(FIRST_LAST)}")
    candidates = quantizable_layers(model, layers)
    chosen = list(candidates)
    ends: set[str] = set()
    if first_last != "b":
        order = _execution_order(model, chosen, example_input)
        ends = {order[0], order[-1]}
    done: dict[str, str] = {}
    for name in chosen:
        if name in ends and first_last == "full":
            continue  # QP-SNN's reference keeps the encoding layer and the classifier in float
        layer_spec = QuantSpec(8, method, bool(per_channel), percentile, gradient) if name in ends else spec
        quantize_layer(candidates[name], layer_spec)
        done[name] = _describe(layer_spec)
    if membrane_bits is not None:
        for neuron, driver in quantize_membranes(model, membrane_bits, example_input).items():
            done[f"{neuron} (membrane)"] = f"{membrane_bits}-bit, scale shared with {driver}"
    return done


@torch.no_grad()
def _execution_order(model: nn.Module, names: list[str], example_input: torch.Tensor | None) -> list[str]:
    """``names`` in the order their modules first run on ``example_input`` (module order without one,
    or for layers the input does not reach): "first" is the layer reading the input, "last" the one
    producing the output, whatever order the modules were registered in."""
    if example_input is None:
        return list(names)
    from spikeprune.topology import trace  # the traced graph (stateful nets are reset by it)

    graph = trace(model, example_input)
    first_call = {n: min((node.id for node in graph.calls(n)), default=len(graph.nodes)) for n in names}
    return sorted(names, key=lambda n: first_call[n])  # stable: module order breaks ties


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Iterable[Any], num_batches: int | None = None) -> int:
    """Recompute every BatchNorm's running mean and variance from ``batches`` (no weight changes).

    Quantizing the weights (ReScaW clips every |W| above gamma = mean|W|) or removing channels changes
    the distribution each BatchNorm sees, and the running statistics from training no longer fit: on a
    trained Fashion-MNIST convnet, 4-bit mean|W| quantization alone drops accuracy from 90.7 % to 30 %,
    and re-estimating the statistics on 16 training batches brings it back to 81 % (no training).
    Runs the model in train mode without gradients; the statistics become the plain average over
    the batches (momentum None). Returns the number of batches used.
    """
    bns = [m for m in model.modules() if isinstance(m, BATCHNORM) and m.track_running_stats]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    was_training = model.training
    model.train()
    # Not topology.run_batches: this pass runs in train mode (BatchNorm updates) without an observer or trace.
    seen = 0
    try:
        for batch in batches:
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
            seen += 1
            if num_batches is not None and seen >= num_batches:
                break
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.train(was_training)
    if seen == 0:
        raise UserError("BatchNorm re-estimation needs at least one batch; the data was empty")
    return seen
