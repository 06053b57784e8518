"""Perturbations of a model, for the flip analysis (LTH-SNN §3): what a compressed model differs by.

``prune:<sparsity>[:<criterion>]`` (any criterion of :data:`spikeprune.tickets.criteria.CRITERIA`),
``prune:<mask file>``, ``quantize:<bits>[:<scale>]`` (any scale of :data:`spikeprune.compression.quant.SCALE_METHODS`),
``weight-noise:<sigma>`` and ``input-noise:<sigma>``: :func:`parse_perturbation` reads the mini-language,
:func:`apply_perturbation` builds the perturbed copy. The choices come from the registries that implement
them, so a new criterion or scale is accepted here without an edit.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikeprune.core.config import check_fraction
from spikeprune.core.diagnostics import UserError
from spikeprune.tickets.criteria import check_criterion
from spikeprune.tickets.masks import Mask, prunable_weights

__all__ = ["PERTURBATIONS", "Perturbation", "apply_perturbation", "parse_perturbation"]

#: perturbation kinds understood by :func:`parse_perturbation`
PERTURBATIONS = ("prune", "quantize", "weight-noise", "input-noise")


@dataclass(frozen=True)
class Perturbation:
    """One perturbation of a model, parsed from ``kind:arguments`` (see :func:`parse_perturbation`)."""

    kind: str  # one of PERTURBATIONS
    sparsity: float | None = None  # prune: fraction of prunable weights removed
    criterion: str | None = None  # prune: a name of tickets.criteria.CRITERIA (magnitude, sf, sf-rms, random, ...)
    mask: str | None = None  # prune: a mask file (Mask.save) instead of sparsity + criterion
    bits: int | None = None  # quantize
    scale: str | None = None  # quantize: ReScaW scale gamma (mean | max | percentile)
    sigma: float | None = None  # weight-noise (relative to each tensor's std) / input-noise (absolute)

    @property
    def label(self) -> str:
        """Short name for tables and file names, e.g. ``prune-0.8-sf``."""
        if self.kind == "prune":
            return f"prune-{Path(self.mask).stem}" if self.mask else f"prune-{self.sparsity:g}-{self.criterion}"
        if self.kind == "quantize":
            return f"quantize-{self.bits}b" + ("" if self.scale in (None, "mean") else f"-{self.scale}")
        return f"{self.kind}-{self.sigma:g}"


def parse_perturbation(text: str) -> Perturbation:
    """Parse ``prune:<mask file>``, ``prune:<sparsity>[:<criterion>]``, ``quantize:<bits>[:<scale>]``,
    ``weight-noise:<sigma>`` or ``input-noise:<sigma>``.

    ``quantize`` uses :func:`spikeprune.compression.quant.quantize_weight` per layer with the ReScaW scale
    ``mean`` (default, QP-SNN's choice), ``max`` or ``percentile`` (99th).

    ``weight-noise`` adds ``sigma * std(W) * N(0, 1)`` to every conv/linear weight W (relative, so one
    sigma means the same for every layer); ``input-noise`` adds ``sigma * N(0, 1)`` to the model input.
    """
    if not isinstance(text, str):
        raise TypeError(f"a perturbation is a string like 'prune:0.8:sf'; got {type(text).__name__}")
    kind, _, arg = text.partition(":")
    if kind not in PERTURBATIONS or not arg:
        raise UserError(f"bad perturbation {text!r}; use prune:<mask file>, prune:<sparsity>[:<criterion>], "
                         "quantize:<bits>[:mean|max|percentile], weight-noise:<sigma> or input-noise:<sigma>")
    if kind == "prune":
        head, _, criterion = arg.partition(":")
        try:
            sparsity = float(head)
        except ValueError:
            return Perturbation("prune", mask=arg)
        check_fraction(sparsity, "prune sparsity", "[0, 1)", f"fraction of weights removed; in {text!r}")
        criterion = criterion or "magnitude"
        check_criterion(criterion, text)
        return Perturbation("prune", sparsity=sparsity, criterion=criterion)
    if kind == "quantize":
        bits, _, scale = arg.partition(":")
        if not re.fullmatch(r"\d+", bits) or not 1 <= int(bits) <= 16:
            raise UserError(f"quantize bits must be an integer in [1, 16]; got {bits!r} in {text!r}")
        from spikeprune.compression.quant import SCALE_METHODS

        scale = scale or "mean"
        if scale not in SCALE_METHODS:
            raise UserError(f"unknown quantization scale {scale!r} in {text!r}; use {', '.join(SCALE_METHODS)}")
        return Perturbation("quantize", bits=int(bits), scale=scale)
    try:
        sigma = float(arg)
    except ValueError:
        raise UserError(f"{kind} sigma must be a number; got {arg!r} in {text!r}") from None
    if not (math.isfinite(sigma) and sigma >= 0):
        raise UserError(f"{kind} sigma must be a finite number >= 0; got {arg!r} in {text!r}")
    return Perturbation(kind, sigma=sigma)


InputFn = Callable[[torch.Tensor, int], torch.Tensor]


def apply_perturbation(model: nn.Module, perturbation: Perturbation | str, *, calibration: Any = None,
                       seed: int = 0) -> tuple[nn.Module, InputFn | None]:
    """A perturbed deep copy of ``model`` and, for input noise, the input transform.

    Returns ``(perturbed, input_fn)``; ``input_fn(x, batch_index)`` is ``None`` except for
    ``input-noise``, where it adds seeded Gaussian noise (the same for a given batch index).
    ``calibration`` (batches) is needed by ``prune:<s>:sf``. Pruning is one-shot, without retraining:
    the flip analysis looks at what the weight change itself does to the spikes.
    """
    from spikeprune.tickets.pruning import prune
    from spikeprune.compression.quant import quantize_weight, weight_scale

    p = parse_perturbation(perturbation) if isinstance(perturbation, str) else perturbation
    perturbed = copy.deepcopy(model).eval()
    input_fn: InputFn | None = None
    with torch.no_grad():
        if p.kind == "prune":
            if p.mask is not None:
                Mask.load(p.mask).apply(perturbed)
            else:
                already = Mask.from_model(perturbed).sparsity  # exact zeros of a ticket count as pruned
                if p.sparsity <= already:
                    raise UserError(f"prune:{p.sparsity:g} asks for a total sparsity the model already has "
                                     f"({already:.4f} of its weights are 0): nothing would change; ask for more")
                prune(perturbed, p.criterion, p.sparsity, calibration=calibration, seed=seed)
        elif p.kind == "quantize":
            for w in prunable_weights(perturbed).values():
                alive = w != 0
                if bool(alive.all()):
                    w.copy_(quantize_weight(w, p.bits, method=p.scale or "mean"))
                elif bool(alive.any()):
                    # A pruned model (lottery ticket, edge-popup export): zero is not one of the 2^b levels
                    # (SPEC §7), so quantize the surviving weights only, with their own ReScaW scale, and
                    # keep the pruned ones at 0 (the mask is structure, not a weight value).
                    gamma = weight_scale(w[alive], p.scale or "mean")
                    w.copy_(quantize_weight(w, p.bits, gamma) * alive)
        elif p.kind == "weight-noise":
            g = torch.Generator().manual_seed(seed)
            for w in prunable_weights(perturbed).values():
                noise = torch.randn(w.shape, generator=g, dtype=w.dtype)
                w.add_(noise * (p.sigma * float(w.std())))
        else:
            sigma = p.sigma

            def input_fn(x: torch.Tensor, batch_index: int) -> torch.Tensor:
                g = torch.Generator().manual_seed(seed * 1_000_003 + batch_index)
                return x + sigma * torch.randn(x.shape, generator=g, dtype=x.dtype)
    return perturbed, input_fn
