"""``spikeprune.prune``: criterion -> strategy -> apply, on any model whose neurons are ``spikeprune.LIF``.

    mask = spikeprune.prune(model, criterion="sf", sparsity=0.8, calibration=train_loader)

The three steps stay separate (SPEC §3): a criterion scores weights, a strategy turns scores and the
current mask into a new mask, and only ``Mask.apply`` touches the model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from spikeprune.core.config import check_fraction
from spikeprune.core.diagnostics import UserError
from spikeprune.tickets.calibration import Calibration, calibrate
from spikeprune.tickets.criteria import FIRING_AWARE, Criterion, compute_scores, magnitude
from spikeprune.tickets.masks import Mask
from spikeprune.tickets.strategies import STRATEGIES, resolve_normalization

__all__ = ["prune", "prune_step"]


def _check_sparsity(sparsity: Any) -> float:
    return check_fraction(sparsity, "sparsity", "[0, 1)", "fraction of weights removed")


def _calibration(model: nn.Module, criterion: str | Criterion, calibration: Any, batches: int) -> Calibration | None:
    if isinstance(calibration, Calibration) or calibration is None:
        if calibration is None and isinstance(criterion, str) and criterion in FIRING_AWARE:
            raise UserError(f"criterion {criterion!r} needs calibration data: pass calibration=<loader or batches>")
        return calibration
    if isinstance(calibration, Iterable):
        return calibrate(model, calibration, batches)
    raise TypeError(f"calibration must be a Calibration or an iterable of batches; got {type(calibration).__name__}")


def prune_step(
    model: nn.Module,
    fraction: float,
    *,
    criterion: str | Criterion = "magnitude",
    scope: str = "global",
    mask: Mask | None = None,
    calibration: Calibration | Iterable[Any] | None = None,
    calibration_batches: int = 8,
    normalize: str = "auto",
    seed: int = 0,
    dynamic: Iterable[str] = (),
) -> Mask:
    """Remove ``fraction`` of the surviving weights (one IMP round); returns the new mask, unapplied.

    ``dynamic`` names layers with forward-only masks (SF-IMP-2) whose pruned weights compete again;
    the other arguments are those of :func:`prune`.
    """
    if scope not in STRATEGIES:
        raise UserError(f"unknown scope {scope!r}; choose one of {', '.join(STRATEGIES)}")
    current = mask if mask is not None else Mask.from_model(model)
    current.check_fits(model)
    calib = _calibration(model, criterion, calibration, calibration_batches)
    scores = compute_scores(criterion, model, calib, seed=seed)
    method = resolve_normalization(normalize, scores.kinds)
    # `budget` takes the per-layer counts from global magnitude ranking (IMP's allocation).
    allocation = magnitude(model).values if method == "budget" else None
    return STRATEGIES[scope](scores.values, current, fraction, normalize=method, kinds=scores.kinds,
                             dynamic=tuple(dynamic), allocation=allocation)


def prune(
    model: nn.Module,
    criterion: str | Criterion = "magnitude",
    sparsity: float = 0.5,
    *,
    scope: str = "global",
    calibration: Calibration | Iterable[Any] | None = None,
    calibration_batches: int = 8,
    mask: Mask | None = None,
    normalize: str = "auto",
    seed: int = 0,
) -> Mask:
    """Prune ``model`` to a *total* ``sparsity`` (fraction of prunable weights removed), apply and return the mask.

    Args:
        model: any ``nn.Module``; its conv and linear weights are prunable.
        criterion: ``"magnitude"``, ``"random"``, ``"sf"`` or a callable ``(model, calibration) -> scores``.
        sparsity: target fraction removed, counting weights already pruned (``mask``, or exact zeros).
        scope: ``"global"`` or ``"layerwise"``.
        calibration: batches (a loader, a list of ``(x, y)`` or of ``x``) or a :class:`Calibration`;
            required by ``"sf"``.
        calibration_batches: how many batches the calibration pass uses.
        mask: the current mask (default: the model's exact zeros are taken as already pruned).
        normalize: per-layer score normalisation for global ranking (see :mod:`spikeprune.tickets.strategies`).
        seed: seed of the ``random`` criterion.
    """
    _check_sparsity(sparsity)
    current = mask if mask is not None else Mask.from_model(model)
    current.check_fits(model)
    target_kept = round((1.0 - sparsity) * current.numel)
    if target_kept > current.num_kept:
        raise UserError(f"the model is already {current.sparsity:.4f} sparse; cannot prune it to {sparsity}")
    fraction = (current.num_kept - target_kept) / current.num_kept if current.num_kept else 0.0
    new = prune_step(model, fraction, criterion=criterion, scope=scope, mask=current, calibration=calibration,
                     calibration_batches=calibration_batches, normalize=normalize, seed=seed)
    new.apply(model)
    return new
