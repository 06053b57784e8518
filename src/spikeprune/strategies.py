"""Strategies: (scores, current mask, fraction) -> new mask. Pure; nothing here touches a model.

``fraction`` is the fraction of the *surviving* weights to remove (iterative pruning, as in
``torch.nn.utils.prune`` and IMP): after k rounds with fraction p the density is (1 - p)^k, up to
rounding of one weight per layer (layerwise) or per model (global).

* ``global``: one threshold over all layers (Kim et al.'s IMP default).
* ``layerwise``: the same fraction removed from every layer.

Exactly ``round(fraction * surviving)`` weights go; ties at the threshold are broken by position
(the first tied weights in flattened layer order go first), so the result is deterministic.

Scores of different criteria are not on one scale (|w| vs. a firing probability), and global ranking
of raw scores is only meaningful within one criterion. ``normalize`` rescales each layer's scores
by a statistic of its *surviving* scores before the global ranking:

* ``none``: raw scores (what global magnitude IMP does);
* ``mean``: divide by the layer's mean score; a weight is compared by "how important relative to
  its layer's typical weight" (the default whenever layers use different criteria, see ``auto``);
* ``max``, ``l2``: divide by the layer's max / L2 norm;
* ``auto``: ``none`` if every layer used the same criterion, else ``mean``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .masks import Mask

__all__ = ["NORMALIZATIONS", "STRATEGIES", "global_prune", "layerwise_prune", "normalize_scores", "select"]

NORMALIZATIONS = ("auto", "none", "mean", "max", "l2")


def _check_fraction(fraction: float) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, float) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the fraction of surviving weights to prune must be a float in [0, 1]; got {fraction!r}")
    return fraction


def normalize_scores(scores: Mapping[str, torch.Tensor], mask: Mask, method: str,
                     kinds: Mapping[str, str] | None = None) -> dict[str, torch.Tensor]:
    """Per-layer rescaling of ``scores`` by a statistic of the surviving weights' scores."""
    if method not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {method!r}; choose one of {', '.join(NORMALIZATIONS)}")
    if method == "auto":
        method = "none" if kinds is None or len(set(kinds.values())) <= 1 else "mean"
    if method == "none":
        return dict(scores)
    out = {}
    for name, s in scores.items():
        alive = s[mask[name]].double()
        if alive.numel() == 0:
            out[name] = s
            continue
        stat = {"mean": alive.mean(), "max": alive.max(), "l2": alive.norm()}[method]
        out[name] = s / stat.float() if stat > 0 else s
    return out


def select(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean ``[n]``: the ``k`` smallest entries of ``flat``; ties broken by position. O(n)."""
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    if k <= 0:
        return chosen
    if k >= flat.numel():
        return ~chosen
    threshold = torch.kthvalue(flat, k).values
    chosen = flat < threshold
    short = k - int(chosen.sum())
    if short > 0:  # take the first `short` entries equal to the threshold
        ties = torch.nonzero(flat == threshold).flatten()[:short]
        chosen[ties] = True
    return chosen


def global_prune(scores: Mapping[str, torch.Tensor], mask: Mask, fraction: float, *,
                 normalize: str = "none", kinds: Mapping[str, str] | None = None) -> Mask:
    """Remove ``round(fraction * surviving)`` surviving weights with the lowest (normalised) scores overall."""
    _check_fraction(fraction)
    _check_keys(scores, mask)
    scores = normalize_scores(scores, mask, normalize, kinds)
    names = list(mask)
    # Pruned weights score +inf so they are never selected again; this avoids boolean gathers,
    # which cost more than the selection itself on a 15 M-weight model.
    inf = torch.tensor(float("inf"))
    flat = torch.cat([torch.where(mask[n], scores[n].float(), inf).flatten() for n in names])
    alive = mask.num_kept
    k = round(fraction * alive)
    chosen = select(flat, k) if k < alive else torch.ones_like(flat, dtype=torch.bool)
    new, offset = {}, 0
    for n in names:
        size = mask[n].numel()
        new[n] = mask[n] & ~chosen[offset:offset + size].view_as(mask[n])
        offset += size
    return Mask(new)


def layerwise_prune(scores: Mapping[str, torch.Tensor], mask: Mask, fraction: float, **_: object) -> Mask:
    """Remove ``round(fraction * surviving_l)`` of each layer's surviving weights by score."""
    _check_fraction(fraction)
    _check_keys(scores, mask)
    new = {}
    for n in mask:
        alive = scores[n][mask[n]].float()
        keep = mask[n].clone()
        keep[mask[n]] = ~select(alive, round(fraction * alive.numel()))
        new[n] = keep
    return Mask(new)


def _check_keys(scores: Mapping[str, torch.Tensor], mask: Mask) -> None:
    for n in mask:
        if n not in scores:
            raise ValueError(f"no scores for masked weight {n!r}")
        if scores[n].shape != mask[n].shape:
            raise ValueError(f"scores for {n!r} have shape {tuple(scores[n].shape)}, mask has {tuple(mask[n].shape)}")


STRATEGIES = {"global": global_prune, "layerwise": layerwise_prune}
