"""Strategies: (scores, current mask, fraction) -> new mask. Pure; nothing here touches a model.

``fraction`` is the fraction of the *surviving* weights to remove (iterative pruning, as in
``torch.nn.utils.prune`` and IMP): after k rounds with fraction p the density is (1 - p)^k, up to
rounding of one weight per layer (layerwise) or per model (global).

* ``global``: one ranking over all layers (Kim et al.'s IMP default).
* ``layerwise``: the same fraction removed from every layer.

Exactly ``round(fraction * surviving)`` weights go; ties at the threshold are broken by position
(the first tied weights in flattened layer order go first), so the result is deterministic.

Dynamic layers (SF-IMP-2, Dynamic Network Surgery): for the layers named in ``dynamic`` the mask is
applied in the forward pass only, the dense weights keep training, and *every* weight of the layer,
pruned or not, competes again for a place *in its own layer*. How many places each layer keeps is
decided exactly as without ``dynamic`` (ranking the survivors), so the density schedule and the
allocation across layers do not change; only which weights of a dynamic layer hold its places can
(pruned weights can come back).

Mixed criteria. Scores of different criteria are not on one scale (|w| vs. a firing probability),
and global ranking of raw scores is only meaningful within one criterion. ``normalize`` says how the
layers are made comparable (docs/lottery.md has the measurements behind the default):

* ``none``: raw scores (what global magnitude IMP does, and what the LTH-SNN code base would do if it
  swapped |w| for P in Kim et al.'s global ranking);
* ``budget``: each layer keeps as many weights as global *magnitude* ranking would keep (IMP's
  allocation across layers, from ``allocation`` scores), and the criterion decides *which* weights
  of the layer those are. No cross-layer comparison of incomparable numbers is made at all; with
  the magnitude criterion it is exactly global magnitude pruning;
* ``mean``, ``max``, ``l2``: divide each layer's scores by the mean / max / L2 norm of its candidate
  scores, then rank globally;
* ``auto``: ``none`` if every layer used the same criterion, else ``budget``.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping

import numpy as np
import torch

from spikeprune.core.config import check_fraction
from spikeprune.core.diagnostics import UserError
from spikeprune.core.diagnostics import LayerCollapseWarning
from spikeprune.tickets.masks import Mask

__all__ = ["NORMALIZATIONS", "STRATEGIES", "collapsed_layers", "global_prune", "layerwise_prune", "normalize_scores", "resolve_normalization",
           "kth_smallest", "select", "MIXED_DEFAULT"]

NORMALIZATIONS = ("auto", "none", "budget", "mean", "max", "l2")
#: what ``auto`` means when layers were scored by different criteria (docs/lottery.md: why)
MIXED_DEFAULT = "budget"


def _check_fraction(fraction: float) -> float:
    return check_fraction(fraction, "fraction", "[0, 1]", "of the surviving weights, to prune")


def resolve_normalization(method: str, kinds: Mapping[str, str] | None) -> str:
    """The normalisation ``method`` stands for (``auto`` -> ``none`` or ``budget``)."""
    if method not in NORMALIZATIONS:
        raise UserError(f"unknown normalization {method!r}; choose one of {', '.join(NORMALIZATIONS)}")
    if method == "auto":
        return "none" if kinds is None or len(set(kinds.values())) <= 1 else MIXED_DEFAULT
    return method


def normalize_scores(scores: Mapping[str, torch.Tensor], mask: Mask | Mapping[str, torch.Tensor], method: str,
                     kinds: Mapping[str, str] | None = None) -> dict[str, torch.Tensor]:
    """Per-layer rescaling of ``scores`` by a statistic of the candidate (``mask``) weights' scores.

    ``budget`` is not a rescaling (see :func:`global_prune`); here it leaves the scores unchanged.
    """
    method = resolve_normalization(method, kinds)
    if method in ("none", "budget"):
        return dict(scores)
    out = {}
    for name, s in scores.items():
        keep = mask[name]
        count = int(keep.sum())
        if count == 0:
            out[name] = s
            continue
        if method == "max":  # where() instead of a boolean gather: cheaper on large layers
            stat = torch.where(keep, s, torch.tensor(float("-inf"), dtype=s.dtype)).max().double()
        else:
            alive = torch.where(keep, s, torch.zeros((), dtype=s.dtype)).double()
            stat = alive.sum() / count if method == "mean" else alive.norm()
        out[name] = s / stat.float() if stat > 0 else s
    return out


#: below this size ``torch.kthvalue`` is used directly
_RADIX_SELECTION_MIN = 1 << 20


def kth_smallest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th smallest value of the 1-D float tensor ``flat`` (1-based), exactly.

    ``torch.kthvalue`` costs ~2 s on 15 M values on a shared CPU. Large CPU inputs use a two-level
    radix select instead: float32 bit patterns, made order-preserving as integers, are counted by
    their top 16 bits (one ``bincount``), the bucket holding the k-th value is found from the
    cumulative counts, and only that bucket (typically < 0.5 % of the values) is partitioned.
    Measured ~4x faster (benchmarks/lottery/RESULTS.md); NaN must not occur (criteria reject it).
    """
    n = flat.numel()
    if n < _RADIX_SELECTION_MIN or flat.device.type != "cpu":
        return torch.kthvalue(flat, k).values
    a = flat.detach().to(torch.float32).contiguous().numpy()
    bits = a.view(np.int32)
    if a.min() >= 0:  # non-negative floats (all built-in criteria): bit patterns already sort as ints
        top = bits >> 16
    else:  # negative floats: flip the 31 value bits so that signed-int order is float order
        top = ((bits ^ ((bits >> 31) & 0x7FFFFFFF)) >> 16) + 32768
    cumulative = np.cumsum(np.bincount(top, minlength=65536))
    bucket = int(np.searchsorted(cumulative, k))  # first bucket whose cumulative count reaches k
    before = int(cumulative[bucket - 1]) if bucket else 0
    inside = a[top == bucket]
    value = np.partition(inside, k - before - 1)[k - before - 1]
    return torch.tensor(float(value), dtype=torch.float32)


def select(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean ``[n]``: the ``k`` smallest entries of ``flat``; ties broken by position. O(n)."""
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    if k <= 0:
        return chosen
    if k >= flat.numel():
        return ~chosen
    threshold = kth_smallest(flat, k)
    chosen = flat < threshold
    short = k - int(chosen.sum())
    if short > 0:  # take the first `short` entries equal to the threshold
        ties = torch.nonzero(flat == threshold).flatten()[:short]
        chosen[ties] = True
    return chosen


def _candidates(mask: Mask, dynamic: Collection[str]) -> dict[str, torch.Tensor]:
    """Weights that may hold a place after this step: survivors, and every weight of a dynamic layer."""
    unknown = sorted(set(dynamic) - set(mask))
    if unknown:
        raise UserError(f"dynamic layer {unknown[0]!r} is not in the mask")
    return {n: torch.ones_like(mask[n]) if n in dynamic else mask[n] for n in mask}


def _keep_best(scores: torch.Tensor, candidates: torch.Tensor, keep: int) -> torch.Tensor:
    """The ``keep`` highest-scoring candidates of one tensor (pruned ones score +inf: never dropped twice)."""
    flat = torch.where(candidates, scores.float(), torch.tensor(float("inf"))).flatten()
    drop = int(candidates.sum()) - keep
    return candidates & ~select(flat, drop).view_as(candidates)


def collapsed_layers(before: Mask, after: Mask) -> dict[str, tuple[int, int, int]]:
    """``{name: (kept before, kept after, output units)}`` for the layers this step emptied or left with fewer
    surviving weights than output units (dim 0 of the weight), where they were not so before."""
    out = {}
    for n in after:
        units = after[n].shape[0]
        was, now = int(before[n].sum()), int(after[n].sum())
        if (now == 0 < was) or (now < units <= was):
            out[n] = (was, now, units)
    return out


def global_prune(scores: Mapping[str, torch.Tensor], mask: Mask, fraction: float, *,
                 normalize: str = "none", kinds: Mapping[str, str] | None = None,
                 dynamic: Collection[str] = (), allocation: Mapping[str, torch.Tensor] | None = None) -> Mask:
    """Keep the ``surviving - round(fraction * surviving)`` best candidates overall.

    Warns (:class:`~spikeprune.core.diagnostics.LayerCollapseWarning`) when the ranking empties a layer or leaves it
    fewer surviving weights than output units (some units then get no input at all): a valid mask, but
    one layer's scores were on another scale than the rest (e.g. conv weights shrunk by BatchNorm).

    Args:
        scores: ``{name: tensor}`` importance (higher = keep), shapes as the mask.
        mask: the current mask.
        fraction: fraction of the surviving weights to remove, in [0, 1].
        normalize: how layers scored by different criteria are compared (module docstring).
        kinds: the criterion of each layer (``Scores.kinds``), for ``normalize="auto"``.
        dynamic: layers whose pruned weights compete again (SF-IMP-2).
        allocation: scores that set the per-layer budgets for ``normalize="budget"`` (|w|).
    """
    new = _global_prune(scores, mask, fraction, normalize=normalize, kinds=kinds, dynamic=dynamic,
                        allocation=allocation)
    collapsed = collapsed_layers(mask, new)
    if collapsed:
        warnings.warn("global ranking " + "; ".join(
            f"{'emptied' if now == 0 else 'left'} {n}{'' if now == 0 else f' with {now} weights'} (of {was} before; "
            f"{units} output units)" for n, (was, now, units) in collapsed.items()), LayerCollapseWarning, stacklevel=2)
    return new


def _global_prune(scores: Mapping[str, torch.Tensor], mask: Mask, fraction: float, *,
                  normalize: str = "none", kinds: Mapping[str, str] | None = None,
                  dynamic: Collection[str] = (), allocation: Mapping[str, torch.Tensor] | None = None) -> Mask:
    _check_fraction(fraction)
    _check_keys(scores, mask)
    method = resolve_normalization(normalize, kinds)
    candidates = _candidates(mask, dynamic)
    if dynamic:
        # Each layer's count comes from ranking the *survivors* (as with static masks); a dynamic layer
        # then refills its count from all of its weights. Letting the pruned-but-trained weights of a
        # dynamic layer compete across layers hands it the other layers' places: under BN, conv weights
        # shrink with weight decay while the dense FC weights do not, and the study's SF-IMP-2 emptied
        # both spiking conv layers at 98 % sparsity (benchmarks/lottery/RESULTS.md, §1).
        counts = _global_prune(scores, mask, fraction, normalize=method, kinds=kinds, allocation=allocation)
        return Mask({n: _keep_best(scores[n], candidates[n], int(counts[n].sum())) if n in dynamic else counts[n]
                     for n in mask})
    alive = mask.num_kept
    target = alive - round(fraction * alive)
    if method == "budget":
        if allocation is None:
            raise UserError("normalize='budget' needs allocation scores (the weights' magnitudes)")
        _check_keys(allocation, mask)
        budget = _global_prune(allocation, mask, fraction, normalize="none")
        return Mask({n: _keep_best(scores[n], candidates[n], int(budget[n].sum())) for n in mask})
    scores = normalize_scores(scores, candidates, method, kinds)
    names = list(mask)
    # Non-candidates score +inf so they are never selected (again); this avoids boolean gathers,
    # which cost more than the selection itself on a 15 M-weight model.
    inf = torch.tensor(float("inf"))
    flat = torch.empty(sum(mask[n].numel() for n in names))
    offset = 0
    for n in names:
        size = mask[n].numel()
        torch.where(candidates[n], scores[n].float(), inf, out=flat[offset:offset + size].view_as(mask[n]))
        offset += size
    chosen = select(flat, alive - target)
    new, offset = {}, 0
    for n in names:
        size = mask[n].numel()
        new[n] = candidates[n] & ~chosen[offset:offset + size].view_as(mask[n])
        offset += size
    return Mask(new)


def layerwise_prune(scores: Mapping[str, torch.Tensor], mask: Mask, fraction: float, *,
                    dynamic: Collection[str] = (), **_: object) -> Mask:
    """Remove ``round(fraction * surviving_l)`` of each layer's surviving weights by score.

    Per-layer ranking needs no normalisation (``normalize`` is accepted and ignored).
    """
    _check_fraction(fraction)
    _check_keys(scores, mask)
    candidates = _candidates(mask, dynamic)
    new = {}
    for n in mask:
        alive = int(mask[n].sum())
        new[n] = _keep_best(scores[n], candidates[n], alive - round(fraction * alive))
    return Mask(new)


def _check_keys(scores: Mapping[str, torch.Tensor], mask: Mask) -> None:
    for n in mask:
        if n not in scores:
            raise ValueError(f"no scores for masked weight {n!r}")
        if scores[n].shape != mask[n].shape:
            raise ValueError(f"scores for {n!r} have shape {tuple(scores[n].shape)}, mask has {tuple(mask[n].shape)}")


STRATEGIES = {"global": global_prune, "layerwise": layerwise_prune}
