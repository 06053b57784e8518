"""Saving and restoring what a quantized model needs beyond its state dict (gamma, specs, membrane bits).

The quantized layers keep the plain layers' state-dict keys (so ordinary checkpoints load into ordinary
models); :func:`quantization_state` exports the rest as tensors + JSON metadata (safetensors-friendly,
nothing pickled) and :func:`load_quantization_state` re-applies it to a freshly built model.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import torch
from torch import nn

from spikeprune.core.diagnostics import UserError
from spikeprune.compression.quant_membrane import QuantizedLIF, quantize_membranes
from spikeprune.compression.quant_weights import QuantSpec, quantizable_layers, quantize_layer, quantized_layers

__all__ = ["load_quantization_state", "quantization_state"]


def quantization_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """What a checkpoint needs to rebuild the quantized model: ``(tensors, meta)``.

    ``tensors`` = ``{"<layer>.gamma": gamma}`` (the current gamma of every quantized layer); ``meta`` =
    ``{"layers": {name: QuantSpec fields}, "membrane_bits": {lif name: bits}}``.
    """
    tensors, layers = {}, {}
    for name, layer in quantized_layers(model).items():
        tensors[f"{name}.gamma"] = layer.gamma().detach().clone()
        layers[name] = asdict(layer.quant)
    membranes = {n: m.membrane_bits for n, m in model.named_modules() if isinstance(m, QuantizedLIF)}
    return tensors, {"layers": layers, "membrane_bits": membranes}


def load_quantization_state(model: nn.Module, tensors: dict[str, torch.Tensor], meta: dict[str, Any], *,
                            example_input: torch.Tensor | None = None, frozen: bool = True) -> nn.Module:
    """Re-apply :func:`quantization_state` to a freshly built model (in place; returns it)."""
    layers = meta.get("layers") or {}
    for name, fields in layers.items():
        spec = QuantSpec(**fields)
        spec = replace(spec, per_channel=bool(spec.per_channel))  # as quantize_model builds it
        layer = quantize_layer(quantizable_layers(model, [name])[name], spec)
        key = f"{name}.gamma"
        if frozen:
            if key not in tensors:
                raise UserError(f"quantization state has no gamma for layer {name!r}")
            layer.weight_gamma = tensors[key].to(layer.weight.dtype).clone()
            layer.frozen = True
    bits = set((meta.get("membrane_bits") or {}).values())
    if bits:
        if len(bits) != 1:
            raise UserError(f"mixed membrane bit-widths are not supported; got {sorted(bits)}")
        found = quantize_membranes(model, bits.pop(), example_input)
        expected = set(meta["membrane_bits"])
        if set(found) != expected:
            raise UserError("the membrane-quantized neurons of this checkpoint do not match the model")
    return model
