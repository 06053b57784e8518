"""Bit-width utilisation of quantized weights (QP-SNN §4.1): how much of the b-bit grid a layer uses.

:func:`bit_utilisation` measures one tensor (levels used, entropy of the level histogram);
:func:`utilisation_report` gives the rows of every quantized layer of a model (the ``utilisation.csv``
of ``spikeprune compress``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from spikeprune.compression.quant_weights import quantized_layers, weight_codes

__all__ = ["bit_utilisation", "utilisation_report"]


def bit_utilisation(w: torch.Tensor, bits: int, gamma: torch.Tensor | float, *,
                    ignore_zeros: bool = True) -> dict[str, float]:
    """How much of the b-bit grid a weight tensor uses.

    Returns ``levels_used`` (distinct levels holding at least one weight), ``utilisation`` =
    levels_used / 2^b (SPEC §7's definition), ``entropy_bits`` = Shannon entropy of the level
    histogram (at most b), and ``effective_utilisation`` = 2^entropy / 2^b (the share of levels a
    uniform code of the same entropy would use). Exact zeros (pruned weights) are ignored.
    """
    codes = weight_codes(w, bits, gamma).flatten()
    if ignore_zeros:
        codes = codes[w.detach().flatten() != 0]
    levels = 1 << bits
    if codes.numel() == 0:
        return {"levels": levels, "levels_used": 0, "utilisation": 0.0, "entropy_bits": 0.0,
                "effective_utilisation": 0.0}
    counts = torch.bincount(codes, minlength=levels).double()
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * torch.log2(p)).sum())
    used = int((counts > 0).sum())
    return {"levels": levels, "levels_used": used, "utilisation": used / levels, "entropy_bits": entropy,
            "effective_utilisation": 2.0 ** entropy / levels}


def utilisation_report(model: nn.Module) -> list[dict[str, Any]]:
    """One row per quantized layer (bit-width utilisation of its current weights), plus ``"total"``
    (levels used averaged over layers, weighted by their weight count)."""
    rows = []
    for name, layer in quantized_layers(model).items():
        row = {"layer": name, "bits": layer.quant.bits, "method": layer.quant.method,
               "per_channel": layer.quant.per_channel, "numel": layer.weight.numel(),
               **bit_utilisation(layer.weight, layer.quant.bits, layer.gamma())}
        rows.append(row)
    if rows:
        n = sum(r["numel"] for r in rows)
        rows.append({"layer": "total", "numel": n,
                     **{k: sum(r[k] * r["numel"] for r in rows) / n
                        for k in ("utilisation", "entropy_bits", "effective_utilisation")}})
    return rows
