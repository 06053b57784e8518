"""Warnings spikeprune raises when a result is valid but probably not what was asked for.

All derive from :class:`SpikepruneWarning` (a ``UserWarning``), so one filter silences or escalates them:
``warnings.simplefilter("error", spikeprune.SpikepruneWarning)``.
"""

from __future__ import annotations

__all__ = ["LayerCollapseWarning", "SFFallbackWarning", "SpikepruneWarning"]


class SpikepruneWarning(UserWarning):
    """Base class of spikeprune's warnings."""


class SFFallbackWarning(SpikepruneWarning):
    """A firing-aware criterion (``sf`` ...) scored a hidden spiking layer by magnitude instead (no BatchNorm ->
    neuron pairing), so the run is partly (or wholly) magnitude pruning under the criterion's name."""


class LayerCollapseWarning(SpikepruneWarning):
    """Global ranking left a layer empty, or with fewer surviving weights than it has output units."""
