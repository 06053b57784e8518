"""Does a pruning criterion predict which weights flip spikes? (the premise of LTH-SNN Eq. 12).

LTH-SNN's SF criterion (Eq. 12-13) scores each weight by an estimate of how likely removing it is
to flip the spikes of the neuron it feeds. The tickets it picks only test that claim indirectly
(final accuracy). This module tests it directly, one layer at a time:

1. score every weight of layer ``L`` with the criterion (calibration statistics as in pruning);
2. sort the weights by score and cut them into ``groups`` equal-sized sets spanning the whole range
   of scores (quantile bins: the lowest-scored tenth, the next tenth, ...);
3. for each set, remove it (weights set to zero) from a copy of the network and measure the
   *layer-local* flip rate of the neurons ``L`` drives: the fraction of (neuron, timestep, sample)
   slots whose spike differs from the unpruned network's. Everything upstream of ``L`` is unchanged,
   so these neurons receive the reference input spikes, exactly the setting of Lemmas 3.3-3.4;
   nothing downstream is run (the forward pass stops at that neuron);
4. report the Spearman rank correlation between the set's predicted score (the sum of its weights'
   scores; with equal-sized sets the ranking equals the mean's) and its measured flip rate.

A criterion whose premise holds gives a correlation near +1; ``random`` gives about 0.

    rows = criterion_validity(model, ["sf", "sf-rms", "magnitude", "random"], calibration, batches)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from spikeprune.tickets.calibration import Calibration
from spikeprune.core.diagnostics import UserError
from spikeprune.tickets.criteria import Criterion, compute_scores
from spikeprune.tickets.masks import prunable_weights

__all__ = ["VALIDITY_FIELDS", "ValidityRow", "criterion_validity", "driven_neuron", "validity_csv_rows",
           "validity_summary"]


@dataclass
class ValidityRow:
    """One removed weight set: which layer and criterion, the set's rank (0 = lowest scores), its size,
    the sum / mean of its scores, and the measured layer-local flip rate of the driven neuron."""

    layer: str
    neuron: str
    criterion: str
    group: int
    weights: int
    score_sum: float
    score_mean: float
    flip_rate: float
    slots: int


class _Stop(Exception):
    """Raised by a hook once the neuron of interest has produced its spikes (nothing after it runs)."""


def driven_neuron(model: nn.Module, layer: str, example: torch.Tensor) -> str | None:
    """Name of the first spiking neuron (:class:`~spikeprune.LIF`) that weight layer ``layer`` drives,
    through BatchNorm, pooling, dropout, activations, reshapes and elementwise ops, or ``None`` (the
    classifier). Found on the traced graph (:mod:`spikeprune.topology`), so any network works."""
    from spikeprune.topology import trace

    graph = trace(model, example)
    calls = graph.calls(layer)
    if not calls:
        return None
    # BatchNorm and reshapes pass too: a layer without BN (or one flattened before its neuron) still drives it
    return graph.first_neuron_after(calls[0].id, through=("bn", "flatten", "reshape", "view"))


@torch.no_grad()
def _spikes(model: nn.Module, neuron: str, batches: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The spikes ``[T, B, ...]`` (bool) of ``neuron`` on each batch; the forward stops right after it."""
    module = model.get_submodule(neuron)
    out: list[torch.Tensor] = []

    def hook(m: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        out.append(output.detach() != 0)
        raise _Stop

    handle = module.register_forward_hook(hook)
    was = model.training
    model.eval()
    try:
        for x in batches:
            try:
                model(x)
            except _Stop:
                pass
            reset = getattr(model, "reset", None)
            if callable(reset):  # stateful (SpikingJelly-style) nets start every batch from rest
                reset()
    finally:
        handle.remove()
        model.train(was)
    if len(out) != len(batches):
        raise ValueError(f"spiking layer {neuron} did not run on every batch")
    return out


def _module_of(weight_name: str) -> str:
    return weight_name.rsplit(".", 1)[0]


@torch.no_grad()
def criterion_validity(
    model: nn.Module,
    criteria: Iterable[str | Criterion],
    calibration: Calibration | None,
    batches: Iterable[Any],
    *,
    layers: Iterable[str] | None = None,
    groups: int = 10,
    seed: int = 0,
) -> list[ValidityRow]:
    """Measured flip rate of each removed weight set, per (layer, criterion, set).

    Args:
        model: the trained network (left unchanged; each removal is done on a copy).
        criteria: names (``"sf"``, ``"sf-rms"``, ``"magnitude"``, ``"random"``, ...) or callables, as
            :func:`spikeprune.tickets.pruning.prune` takes.
        calibration: statistics for the firing-aware criteria (:func:`spikeprune.calibrate`), from
            *training* batches; ``None`` is enough for magnitude and random.
        batches: the inputs the flips are measured on (``x`` or ``(x, y)``; e.g. validation batches).
        layers: prunable weight names (``"features.0.conv.weight"``); default: every prunable layer
            that drives a spiking neuron (the classifier drives none and is skipped).
        groups: number of equal-sized weight sets per layer and criterion (quantile bins of the
            scores; each set has ``numel // groups`` weights, the remainder joins the top set).
        seed: seed of the ``random`` criterion and of score tie-breaking.

    Returns one :class:`ValidityRow` per (layer, criterion, set), sets in increasing score order.
    """
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 2:
        raise UserError(f"groups must be an integer >= 2; got {groups!r}")
    xs = [b[0] if isinstance(b, (tuple, list)) else b for b in batches]
    if not xs:
        raise UserError("the criterion-validity analysis got no batch")
    weights = prunable_weights(model)
    names = list(weights) if layers is None else list(layers)
    for n in names:
        if n not in weights:
            raise UserError(f"{n!r} is not a prunable weight of this model; choose from {', '.join(weights)}")
    neurons = {n: driven_neuron(model, _module_of(n), xs[0]) for n in names}
    if layers is None:
        names = [n for n in names if neurons[n] is not None]
    elif missing := [n for n in names if neurons[n] is None]:
        raise UserError(f"layer {missing[0]!r} drives no spiking neuron; its flips cannot be measured")
    if not names:
        raise UserError(f"{type(model).__name__} has no prunable layer that drives a spiking neuron")
    criteria = list(criteria)
    scores = {}
    for c in criteria:
        label = c if isinstance(c, str) else getattr(c, "__name__", "custom")
        scores[label] = compute_scores(c, model, calibration, seed=seed).values
    reference = {n: _spikes(model, neurons[n], xs) for n in names}
    rows: list[ValidityRow] = []
    g = torch.Generator().manual_seed(seed)
    for n in names:
        w = weights[n]
        numel = w.numel()
        if numel < groups:
            raise UserError(f"layer {n} has {numel} weights, fewer than groups={groups}")
        size = numel // groups
        tiebreak = torch.rand(numel, generator=g, dtype=torch.float64) * 1e-12  # random order among equal scores
        for label, values in scores.items():
            s = values[n].detach().reshape(-1).double()
            order = torch.argsort(s + tiebreak * s.abs().max().clamp_min(1e-300))
            for k in range(groups):
                idx = order[k * size:(k + 1) * size if k < groups - 1 else numel]
                pruned = copy.deepcopy(model)
                target = prunable_weights(pruned)[n]
                target.view(-1)[idx] = 0
                spikes = _spikes(pruned, neurons[n], xs)
                flips = sum(int((a != b).sum()) for a, b in zip(spikes, reference[n]))
                slots = sum(a.numel() for a in spikes)
                rows.append(ValidityRow(layer=n, neuron=neurons[n], criterion=label, group=k,
                                        weights=int(idx.numel()), score_sum=float(s[idx].sum()),
                                        score_mean=float(s[idx].mean()), flip_rate=flips / slots, slots=slots))
                del pruned
    return rows


def _spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(set(x)) < 2 or len(set(y)) < 2:
        return None  # undefined for a constant sequence (e.g. no set flips anything)
    rho = spearmanr(x, y).statistic
    return None if rho is None or math.isnan(float(rho)) else float(rho)


def validity_summary(rows: Sequence[ValidityRow]) -> list[dict[str, Any]]:
    """Per (layer, criterion): Spearman rank correlation between the sets' predicted score
    (``score_sum``) and measured flip rate, and the flip rates of the lowest- and highest-scored sets."""
    out = []
    keys = list(dict.fromkeys((r.layer, r.criterion) for r in rows))
    for layer, crit in keys:
        rs = sorted((r for r in rows if (r.layer, r.criterion) == (layer, crit)), key=lambda r: r.group)
        out.append({"layer": layer, "neuron": rs[0].neuron, "criterion": crit, "groups": len(rs),
                    "spearman": _spearman([r.score_sum for r in rs], [r.flip_rate for r in rs]),
                    "flip_rate_lowest": rs[0].flip_rate, "flip_rate_highest": rs[-1].flip_rate,
                    "flip_rate_mean": sum(r.flip_rate for r in rs) / len(rs)})
    return out


def rows_as_dicts(rows: Sequence[ValidityRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


#: the columns of ``validity.csv``: the fields of :class:`ValidityRow`, in order
VALIDITY_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ValidityRow))


def validity_csv_rows(rows: Sequence[ValidityRow]) -> list[dict[str, Any]]:
    """The rows as the cells of ``validity.csv`` (for :func:`spikeprune.core.io.write_csv`): the scores and
    the flip rate to 6 significant digits (``%.6g``), the rest as they are."""
    return [{**asdict(r), **{k: f"{getattr(r, k):.6g}" for k in ("score_sum", "score_mean", "flip_rate")}}
            for r in rows]
