"""What spikeprune tells its users: the warnings it raises when a result is valid but probably not what was
asked for, and :class:`UserError`, the one exception type for requests it refuses.

All derive from :class:`SpikepruneWarning` (a ``UserWarning``), so one filter silences or escalates them:
``warnings.simplefilter("error", spikeprune.SpikepruneWarning)``.
"""

from __future__ import annotations

__all__ = ["LayerCollapseWarning", "SFFallbackWarning", "SpikepruneWarning", "UserError"]


class SpikepruneWarning(UserWarning):
    """Base class of spikeprune's warnings."""


class SFFallbackWarning(SpikepruneWarning):
    """A firing-aware criterion (``sf`` ...) scored a hidden spiking layer by magnitude instead (no BatchNorm ->
    neuron pairing), so the run is partly (or wholly) magnitude pruning under the criterion's name."""


class LayerCollapseWarning(SpikepruneWarning):
    """Global ranking left a layer empty, or with fewer surviving weights than it has output units."""


class UserError(ValueError):
    """A request spikeprune refuses because of what it was given (a flag, a file, a network), not a bug.

    The CLI prints its message as one line and exits with code 2; every other exception is reported as a
    bug (exit 1). It is a ``ValueError``, so ``except ValueError`` in user code keeps working.
    """
